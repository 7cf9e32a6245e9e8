"""The style holds as the code grows: ruff, configured in pyproject.toml, finds nothing."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_ruff_finds_nothing():
    pytest.importorskip("ruff")  # installed with the test extra
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "dcgan_features", "tests",
                           "benchmarks"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
