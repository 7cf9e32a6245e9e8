"""What every benchmark writes: a Markdown and a CSV table under results/benchmarks/, headed by the
machine, library versions, git commit and date, so a number is never separated from its context."""

from __future__ import annotations

import os
import platform
import resource
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from dcgan_features.artifacts import atomic_path, git_commit
from dcgan_features.runtime import cpu_description


def context() -> str:
    """One line describing where and with what a benchmark ran."""
    import numpy
    import sklearn

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs ({cpu_description()}), "
            f"{torch.get_num_threads()} torch threads ({host_speed()}), "
            f"{device}; python {platform.python_version()}, torch {torch.__version__}, numpy "
            f"{numpy.__version__}, scikit-learn {sklearn.__version__}; git {git_commit()}; "
            f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}")


def host_speed(size: int = 1024, seconds: float = 0.25) -> str:
    """The CPU's matrix-multiply rate on torch's threads, float32 and bfloat16, measured now: VMs that report the
    same CPU have run the same training at 218 and 415 images a second, so a table says what its host delivered."""
    rates = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        a @ b  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            done += 1
        rates.append(2 * size ** 3 * done / (time.perf_counter() - started) / 1e9)
    return f"{size}x{size} matmul now: float32 {rates[0]:.0f}, bfloat16 {rates[1]:.0f} GFLOP/s"


def write_table(out_dir: str | Path, name: str, title: str, table: pd.DataFrame, notes: str = "") -> Path:
    """``out_dir/name.md`` (title, context, table, notes) and ``out_dir/name.csv`` (the table)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = f"{title}\n\n{context()}.\n\n{table.to_markdown(index=False)}\n" + (f"\n{notes}\n" if notes else "")
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text(markdown)
    with atomic_path(out / f"{name}.csv") as tmp:
        table.to_csv(tmp, index=False)
    print(markdown)
    return out / f"{name}.md"


def peak_rss_gb(children: bool = False) -> float:
    """Peak resident set size so far, in GB (Linux reports KiB): this process's, or the largest of
    its finished children's."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss * 1024 / 1e9
