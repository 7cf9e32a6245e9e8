"""The benchmark scripts still run (tiny sizes, fake data); their numbers are not checked here."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("script,args", [
    ("pretrain_throughput.py", ["--dataset", "fake", "--steps", "1", "--repeats", "1"]),
    ("step_breakdown.py", ["--steps", "1", "--repeats", "1", "--batch-size", "4"]),
    ("extract_throughput.py", ["--dataset", "fake", "--images", "8", "--repeats", "1"]),
    ("fisher_throughput.py", ["--dataset", "fake", "--images", "8", "--repeats", "1", "--set-width", "8",
                              "--dim", "64"]),
    ("svm_scale.py", ["--synthetic", "--sizes", "300x40", "--solvers", "liblinear", "torch", "torch-bf16-nystrom"]),
    ("evaluate_scale.py", ["--dataset", "fake", "--config", "configs/digits.toml", "--set", "model.width=8",
                           "--set", "svm.c_grid=[1e-3]"]),
    ("probe_overhead.py", ["--dataset", "fake", "--config", "configs/digits.toml", "--probe-images", "100",
                           "--steps", "1", "--repeats", "1", "--every", "10", "390"]),
])
def test_benchmark_writes_its_tables(script, args, tmp_path):
    done = subprocess.run([sys.executable, ROOT / "benchmarks" / script, *args, "--out", tmp_path / "out",
                           *(["--cache-dir", tmp_path / "cache"] if script == "svm_scale.py" else [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    name = script.removesuffix(".py")
    table = pd.read_csv(tmp_path / "out" / f"{name}.csv")
    markdown = (tmp_path / "out" / f"{name}.md").read_text()
    assert len(table) > 0 and "git " in markdown and "torch " in markdown
    if name == "step_breakdown":  # the FLOP counter saw the convolutions of all three steps
        assert len(table) == 3 and (table["convolution backward GFLOP"] > 0).all()
    if name == "svm_scale":  # both solvers ran and agree on the objective
        assert set(table["solver"]) == {"liblinear", "torch", "torch-bf16-nystrom"} and table["note"].isna().all()
        objectives = table.set_index("solver")["objective"]
        for solver in ("torch", "torch-bf16-nystrom"):
            assert abs(objectives[solver] - objectives["liblinear"]) <= 1e-3 * objectives["liblinear"]


def test_bfloat16_counts_as_native_only_where_the_cpu_reports_bfloat16_instructions(monkeypatch):
    """The throughput benchmark times train.bf16 only where it is native: emulated it runs ~50x slower."""
    import torch

    from dcgan_features import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: ("avx2",))
    assert not runtime.native_bfloat16(cpu)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: ("avx2", "avx512f", "avx512_bf16"))
    assert runtime.native_bfloat16(cpu)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: ("asimd", "bf16"))
    assert runtime.native_bfloat16(cpu)


def test_the_gpu_check_runs_its_stages_at_toy_size_and_refuses_a_machine_without_cuda(tmp_path):
    """On CPU only the script itself is checked: every stage at toy sizes, and the table it writes."""
    run = lambda *args: subprocess.run([sys.executable, ROOT / "benchmarks" / "gpu_check.py", *args,  # noqa: E731
                                        "--out", tmp_path / "out"], cwd=ROOT, capture_output=True, text=True,
                                       timeout=300)
    done = run("--device", "cpu", "--tiny")
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "out" / "gpu_check_tiny.csv")
    assert len(table) == 7 and table["check"].str.startswith("training step").sum() == 4
    assert table["check"].iloc[0].startswith("quick start") and table["result"].iloc[0].endswith("%")
    assert "evaluate --protocol full" in table["check"].iloc[5]
    refused = run()  # the suite hides GPUs, so this is a machine without CUDA
    assert refused.returncode != 0 and "needs a CUDA GPU" in refused.stderr and "Traceback" not in refused.stderr
    assert "only for --tiny" in run("--device", "cpu").stderr
    assert not (tmp_path / "out" / "gpu_check.csv").exists()
