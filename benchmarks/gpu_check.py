"""The GPU check, in one command: on a machine with CUDA, run the digits quick start on the GPU, time a training
step of the default recipe and of the paper's ImageNet model (float32 and bfloat16), time ``evaluate --protocol
full`` at 28,672 features, run the CUDA tests, and write one table, results/benchmarks/gpu_check.{md,csv}.

    python benchmarks/gpu_check.py --data-root /path/holding/cifar-10-batches-py       # about 5 minutes on an H100

Without CUDA it stops at once with a one-line error. ``--device cpu`` with ``--tiny`` runs the same stages at toy
sizes on the CPU, which is how the test suite checks the script and its table (the numbers then mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from dcgan_features.config import apply_overrides, load_config
from dcgan_features.train import new_state, train_step

from common import write_table

ROOT = Path(__file__).parents[1]
STEP_MODELS = {"default recipe (configs/cifar10.toml)": "configs/cifar10.toml",
               "paper ImageNet D (configs/paper_imagenet32.toml)": "configs/paper_imagenet32.toml"}


def cli(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run the toolkit's command line as a user would; returns the process and its wall seconds."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dcgan_features", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    return done, time.perf_counter() - start


def checked(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        sys.exit(f"error: {what} failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")


def quick_start(work: Path, device: str, tiny: bool) -> dict:
    """The README's quick start (digits, no download) on ``device``: its accuracy and wall time."""
    shrink = ["--epochs", "1", "--set", "model.width=8"] if tiny else []
    done, train_s = cli("pretrain", "--config", "configs/digits.toml", "--out", str(work / "digits"), "--device",
                        device, *shrink)
    checked(done, "the quick start's pretrain")
    done, eval_s = cli("evaluate", "--checkpoint", str(work / "digits"), "--results-dir", str(work / "res"),
                       "--device", device, "--cache-dir", str(work / "cache"))
    checked(done, "the quick start's evaluate")
    (result,) = (json.loads(p.read_text()) for p in (work / "res").glob("*.json"))
    return {"check": "quick start (digits, configs/digits.toml)", "result": f"{100 * result['test_accuracy']:.2f}%",
            "seconds": round(train_s + eval_s, 1), "note": f"pretrain {train_s:.0f} s, evaluate {eval_s:.0f} s"}


def step_rate(config_path: str, bf16: bool, device: torch.device, batch: int, steps: int) -> float:
    """Training images per second of ``train_step`` on one synthetic batch, after 3 warm-up steps."""
    config = apply_overrides(load_config(config_path, {}), {"train.bf16": bf16, "train.batch_size": batch})
    state = new_state(config, device)
    real = (torch.rand(batch, 3, 32, 32, device=device) * 2 - 1).contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        train_step(state, real, config, device)
    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronise()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(state, real, config, device)
    synchronise()
    return batch * steps / (time.perf_counter() - start)


def step_rows(device: torch.device, tiny: bool) -> list[dict]:
    batch, steps = (4, 1) if tiny else (128, 50)
    rows = []
    for name, path in STEP_MODELS.items():
        for bf16 in (False, True):
            rate = step_rate(path, bf16, device, batch, steps)
            rows.append({"check": f"training step, {name}, {'bfloat16' if bf16 else 'float32'}",
                         "result": f"{rate:.0f} img/s", "seconds": round(batch * steps / rate, 2),
                         "note": f"batch {batch}, {steps} steps after 3 warm-up, synthetic batch"})
    return rows


def evaluate_row(work: Path, device: str, data_root: str, tiny: bool) -> dict:
    """``evaluate --protocol full`` of an untrained paper-architecture D (28,672 features) on CIFAR-10."""
    data = ["--dataset", "fake", "--set", "model.d_widths=[8,8,8,8,8,8]"] if tiny else \
        ["--dataset", "cifar10", "--data-root", data_root]
    done, wall = cli("evaluate", "--baseline", "untrained", "--config", "configs/paper_imagenet32.toml", *data,
                     "--device", device, "--results-dir", str(work / "eval"), "--cache-dir", str(work / "cache"))
    checked(done, "evaluate at 28,672 features")
    (result,) = (json.loads(p.read_text()) for p in (work / "eval").glob("*.json"))
    timings = result["timings"]
    return {"check": f"evaluate --protocol full, untrained paper D, {result['feature_dim']:,} features",
            "result": f"{100 * result['test_accuracy']:.2f}%", "seconds": round(wall, 1),
            "note": f"extract {timings['features_train_s'] + timings['features_test_s']:.0f} s, C sweep "
                    f"{timings['select_c_s']:.0f} s, refit {timings['refit_s']:.0f} s"}


def cuda_tests(tiny: bool) -> dict:
    """tests/test_cuda.py with the GPU visible to it (the rest of the suite hides GPUs)."""
    if tiny:
        return {"check": "tests/test_cuda.py", "result": "not run (--tiny)", "seconds": 0.0, "note": ""}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_cuda.py"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "DCGAN_FEATURES_TEST_CUDA": "1"})
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return {"check": "tests/test_cuda.py", "result": "passed" if done.returncode == 0 else "FAILED",
            "seconds": round(time.perf_counter() - start, 1), "note": summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data", help="folder holding cifar-10-batches-py")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, to check the script itself (with --device cpu)")
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: the GPU check needs a CUDA GPU, and torch.cuda.is_available() is False here "
                 f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    if args.device == "cpu" and not args.tiny:
        sys.exit("error: --device cpu is only for --tiny, the script's own test; the check itself needs CUDA")
    if not args.tiny and not (Path(args.data_root) / "cifar-10-batches-py").is_dir():
        sys.exit(f"error: {args.data_root} holds no cifar-10-batches-py, which the 28,672-feature evaluate reads")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as scratch:
        work = Path(scratch)
        rows = [quick_start(work, args.device, args.tiny), *step_rows(torch.device(args.device), args.tiny),
                evaluate_row(work, args.device, args.data_root, args.tiny), cuda_tests(args.tiny)]
    name = "gpu_check_tiny" if args.tiny else "gpu_check"
    write_table(args.out, name, f"The GPU check on {args.device} ({'toy sizes' if args.tiny else 'full sizes'}), "
                f"{time.perf_counter() - started:.0f} s in all", pd.DataFrame(rows))


if __name__ == "__main__":
    main()
