"""L2-SVM at scale: peak RSS and wall time of LinearSVC (liblinear) and the torch solver, fitting one C
on n x d float32 features that stream from an on-disk cache, at several sizes up to the paper's
50,000 x 28,672. Each fit runs in its own process, so its peak RSS is its own. LinearSVC is skipped
where its copies (float64 input plus liblinear's 16-byte sparse nodes per value) would not fit in memory
or would overflow its int32 indexing. Writes results/benchmarks/svm_scale.{md,csv}.

Features: CIFAR-10 training images through an untrained D of the matching architecture
(7,168-d: configs/cifar10_dcgan.toml; 28,672-d: configs/paper_imagenet32.toml), extracted once into
--cache-dir; or, with --synthetic, Gaussian class clusters (for a quick check of the script).

    python benchmarks/svm_scale.py --data-root /work/data --sizes 10000x7168 50000x7168 50000x28672
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dcgan_features.config import SvmConfig

from common import peak_rss_gb, write_table

ARCHITECTURES = {7168: "configs/cifar10_dcgan.toml", 28672: "configs/paper_imagenet32.toml"}
LIBLINEAR_BYTES_PER_VALUE = 8 + 16 + 4  # float64 copy, feature_node (int index + double value), our float32
SOLVERS = {  # name -> the svm settings of one fit (tol and max_iter: SvmConfig's defaults)
    "liblinear": SvmConfig(solver="liblinear"),
    "torch": SvmConfig(solver="torch"),  # float32 throughout, plain CG: configs/cifar10_dcgan.toml's solver
    "torch-bf16-nystrom": SvmConfig(solver="torch", hessian_precision="bfloat16", preconditioner_rank=256),
}


def memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def feature_file(n: int, d: int, args) -> tuple[Path, Path]:
    """A .npy of at least n rows of d features and the .npy of their labels, created once."""
    cache = Path(args.cache_dir)
    if args.synthetic:
        path, labels_path = cache / f"synthetic_{n}x{d}.npy", cache / f"synthetic_{n}x{d}.labels.npy"
        if not path.exists():
            cache.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(0)
            labels = rng.integers(0, 10, n)
            centres = rng.normal(size=(10, d)).astype(np.float32)
            features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
            for start in range(0, n, 1024):
                rows = labels[start:start + 1024]
                features[start:start + len(rows)] = centres[rows] + 3 * rng.normal(size=(len(rows), d))
            features.flush()
            np.save(labels_path, labels)
        return path, labels_path
    return extracted_features(d, args)


def extracted_features(d: int, args) -> tuple[Path, Path]:
    """The feature-cache entry of CIFAR-10's training images through an untrained D (extracted once)."""
    import torch

    from dcgan_features.config import load_config
    from dcgan_features.data import load_images
    from dcgan_features.features import FrozenExtractor, PoolingSpec, cache_key, cached_features
    from dcgan_features.models import build_models

    config = load_config(ARCHITECTURES[d])
    torch.manual_seed(0)
    discriminator = build_models(config.model)[1]
    spec = PoolingSpec.from_config(config.features, discriminator)
    images = load_images("cifar10", args.data_root, "train", image_size=32, channels=3)
    key = cache_key(f"untrained-{ARCHITECTURES[d]}-seed0", spec, images, bn_stats="running")
    features = cached_features(FrozenExtractor(discriminator, spec), images, key, args.cache_dir,
                               config.features.batch_size, torch.device("cpu")).features
    path = Path(features.filename)
    return path, path.parent / "labels.npy"  # the entry's own labels file


def fit_once(solver: str, path: str, labels_path: str, n: int, C: float) -> dict:
    """The child's work: read n rows from the cache, standardise in place, fit one C."""
    from dcgan_features.svm import l2svm_objective, make_classifier
    from dcgan_features.svm_rows import fitted_scaler, read_rows, scale_in_place

    start = time.perf_counter()
    features = np.load(path, mmap_mode="r")
    labels = np.load(labels_path)[:n]
    X = read_rows(features, np.arange(n))  # the one copy; scaled in place with its own statistics
    scale_in_place(X, fitted_scaler(X))
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    model = make_classifier(SOLVERS[solver], C).fit(X, labels)
    fit_s = time.perf_counter() - start
    return {"load_s": round(load_s, 1), "fit_s": round(fit_s, 1), "peak_rss_gb": round(peak_rss_gb(), 2),
            "objective": l2svm_objective(X, labels, model.coef_, model.intercept_, C, model.classes_),
            "train_accuracy": float(np.mean(model.predict(X) == labels)),
            "iterations": int(np.max(model.n_iter_))}


def measure(solver: str, paths: tuple[Path, Path], n: int, d: int, C: float, timeout: int) -> dict:
    row = {"n": n, "d": d, "solver": solver, "C": C}
    if solver == "liblinear":
        need = n * d * LIBLINEAR_BYTES_PER_VALUE / 1e9
        if n * d >= 2**31 or need > 0.8 * memory_gb():
            return {**row, "note": f"skipped: LinearSVC would need about {need:.0f} GB"
                                   + (" and overflows int32 indexing" if n * d >= 2**31 else "")}
    command = [sys.executable, __file__, "--child", solver, *map(str, paths), str(n), str(C)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**row, "note": f"stopped after {timeout} s"}
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode
        return {**row, "note": f"failed: {reason}"}
    return {**row, **json.loads(done.stdout.strip().splitlines()[-1]), "note": ""}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        solver, path, labels_path, n, C = sys.argv[2:7]
        print(json.dumps(fit_once(solver, path, labels_path, int(n), float(C))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "dcgan-features"))
    parser.add_argument("--sizes", nargs="+", default=["10000x7168", "50000x7168", "50000x28672"])
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS),
                        help="liblinear; torch (float32, plain CG); torch-bf16-nystrom (CG's products in "
                             "bfloat16, preconditioned by a rank-256 Nystrom sketch: the paper config's setting)")
    parser.add_argument("--C", type=float, default=1e-4, help="the C chosen on validation for the default model")
    parser.add_argument("--synthetic", action="store_true", help="Gaussian clusters instead of CIFAR-10 features")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per fit")
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        n, d = map(int, size.lower().split("x"))
        paths = feature_file(n, d, args)
        rows += [measure(solver, paths, n, d, args.C, args.timeout) for solver in args.solvers]
        print(pd.DataFrame(rows).to_string(), flush=True)
    table = pd.DataFrame(rows)
    if "liblinear" in set(table["solver"]) and "objective" in table:
        reference = table[table["solver"] == "liblinear"].set_index(["n", "d"])["objective"]
        table["objective vs liblinear"] = [
            f"{(o - reference.get((n, d), np.nan)) / reference.get((n, d), np.nan):+.1e}"
            if s != "liblinear" and (n, d) in reference.index and reference[(n, d)] == reference[(n, d)] else ""
            for n, d, s, o in zip(table["n"], table["d"], table["solver"], table["objective"])]
    source = "synthetic Gaussian clusters" if args.synthetic else "CIFAR-10 training images through an untrained D"
    write_table(args.out, "svm_scale",
                f"L2-SVM at scale: one fit at C = {args.C:g} on standardised float32 features ({source}), "
                f"each fit in its own process; machine memory {memory_gb():.0f} GB", table,
                "load_s: reading the rows from the on-disk cache and standardising them in place. peak_rss_gb: "
                "the fitting process's peak resident set (ru_maxrss), features included.")


if __name__ == "__main__":
    main()
