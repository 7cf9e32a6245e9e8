"""`dcgan-features evaluate --protocol full` at the paper's scale: wall time and peak RSS of the whole
command (extraction of 60,000 CIFAR-10 images, the C sweep, the refit and the test) with an untrained D
of the paper's ImageNet architecture (28,672 features), measured as a child process.
Writes results/benchmarks/evaluate_scale.{md,csv}.

    python benchmarks/evaluate_scale.py --data-root /work/data
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from common import peak_rss_gb, write_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--config", default="configs/paper_imagenet32.toml")
    parser.add_argument("--set", dest="set_pairs", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="evaluate_scale."))
    exe = shutil.which("dcgan-features") or str(Path(sys.executable).parent / "dcgan-features")
    command = [exe, "evaluate", "--baseline", "untrained", "--config", args.config, "--dataset", args.dataset,
               "--data-root", args.data_root, "--results-dir", str(work / "results"),
               "--cache-dir", str(work / "cache"), *[x for pair in args.set_pairs for x in ("--set", pair)]]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak_gb = peak_rss_gb(children=True)
    if done.returncode != 0:
        sys.exit(f"evaluate failed: {done.stderr.strip()}")
    (result_file,) = (work / "results").glob("*.json")
    result = json.loads(result_file.read_text())
    shutil.rmtree(work)
    timings, svm = result["timings"], result["config"]["svm"]
    table = pd.DataFrame([{
        "feature_dim": result["feature_dim"], "n_train": result["n_train"], "n_test": result["n_test"],
        "C grid": " ".join(f"{row['C']:g}" for row in result["validation"]),
        "fit_s per C": " ".join(f"{row['fit_seconds']:.0f}" for row in result["validation"]),
        "extract_s": round(timings["features_train_s"] + timings["features_test_s"], 1),
        "select_c_s": timings["select_c_s"], "refit_s": timings["refit_s"], "wall_s": round(wall, 1),
        "peak_rss_gb": round(peak_gb, 2), "chosen_C": result["chosen_C"],
        "test_accuracy": round(100 * result["test_accuracy"], 2)}])
    write_table(args.out, "evaluate_scale",
                f"`dcgan-features evaluate --protocol full` on {args.dataset} with an untrained D of "
                f"{args.config} (svm {svm['solver']}, tol {svm['tol']:g}, Hessian products in "
                f"{svm.get('hessian_precision', 'float32')}, "
                f"CG preconditioner rank {svm.get('preconditioner_rank', 0)}), "
                "one process, cold feature cache",
                table, f"Command: `{' '.join(command[1:])}` (the temporary folders are removed afterwards). "
                       "peak_rss_gb is the evaluate process's ru_maxrss.")


if __name__ == "__main__":
    main()
