"""``dcgan-features extract``: one dataset split's frozen-D features written to disk for users' own classifiers.

OUT/features.npy   (N, dim) float32 or float16, written through a memory map as it is extracted, so a
                   50,000 x 28,672 export never holds the whole array in memory
OUT/labels.npy     (N,) int64, where the dataset has labels (an unlabelled image folder has none)
OUT/indices.npy    (N,) the row of each image in the split, in the order the dataset reads it
OUT/features.json  the checkpoint, its sha256 and which D it is (--select), the pooling spec, the dataset,
                   split and provenance

The folder is written whole under a temporary name and renamed into place, so it is complete or absent; an
existing one is replaced only with ``force``. The features are those ``evaluate`` uses (same loading, batch-norm
statistics and pooling), computed by the same :func:`features.extract`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .artifacts import current_umask, provenance, write_json
from .data import load_images
from .errors import UserError
from .evaluate import data_flags, describe, load_subject, make_extractor
from .features import PoolingSpec, extract
from .models import recompute_batchnorm_stats
from .runtime import resolve_device

DTYPES = {"float32": np.float32, "float16": np.float16}  # config.EXPORT_DTYPES, as numpy types


def export_features(checkpoint: str | Path, out: str | Path, *, split: str = "train", dataset: str = "",
                    data_root: str = "", dtype: str = "float32", device: str = "auto", select: str = "final",
                    config_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                    force: bool = False, echo: Callable[[str], None] = print) -> Path:
    """Write ``split``'s features (and labels, indices, a JSON sidecar) into the folder ``out``; returns it."""
    out = Path(out)
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not an export folder; choose another --out")
    started, origin = time.perf_counter(), provenance()
    subject = load_subject(checkpoint, config_path, {**(overrides or {}), **data_flags(dataset, data_root)},
                           select=select)
    config, torch_device = subject.config, resolve_device(device)
    images = load_images(config.data.dataset, config.data.root, split, image_size=config.model.image_size,
                         channels=config.model.channels, download=config.data.download)
    if config.features.bn_stats == "data":  # as evaluate does outside svhn-1000: every training image, in order
        train = images if split == "train" else load_images(
            config.data.dataset, config.data.root, "train", image_size=config.model.image_size,
            channels=config.model.channels)
        recompute_batchnorm_stats(subject.discriminator, train.images, 128, torch_device, keep_partial=False)
    spec = PoolingSpec.from_config(config.features, subject.discriminator)
    echo(f"features: {describe(spec, subject)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the export from other users
    try:
        shape = _write_arrays(staging, subject, spec, images, dtype, torch_device, config.features.batch_size)
        sidecar = {"checkpoint": str(subject.path), "checkpoint_sha256": subject.sha256,
                   "selected_by": subject.payload.get("selected_by", "final"), "spec": asdict(spec),
                   "feature_spec": describe(spec, subject), "bn_stats": config.features.bn_stats,
                   "dataset": config.data.dataset, "split": split, "num_images": shape[0], "feature_dim": shape[1],
                   "dtype": dtype, "labels": images.labels is not None, "data_sha256": images.fingerprint(),
                   "config": config.to_dict(), "seconds": round(time.perf_counter() - started, 2), **origin}
        write_json(staging / "features.json", sidecar)
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    echo(f"wrote {shape[0]:,} x {shape[1]:,} {dtype} features of {config.data.dataset} {split} to {out}")
    return out


def _write_arrays(folder: Path, subject, spec: PoolingSpec, images, dtype: str, device: torch.device,
                  batch_size: int) -> tuple[int, int]:
    """features.npy through a memory map, then labels.npy and indices.npy; returns the features' shape."""
    allocate = lambda shape: np.lib.format.open_memmap(folder / "features.npy", "w+", DTYPES[dtype], shape)  # noqa: E731
    extractor = make_extractor(subject, spec, device)[0]
    features = extract(extractor, images.images, batch_size, device,
                       label=f"features: {images.name} {images.split}", allocate=allocate)
    if isinstance(features, np.memmap):
        features.flush()
    if images.labels is not None:
        np.save(folder / "labels.npy", images.labels.numpy())
    np.save(folder / "indices.npy", np.arange(len(images)))
    return features.shape


def _replace(staging: Path, out: Path) -> None:
    """Move the finished folder into place; an earlier export there (only with --force) goes once it has."""
    if out.exists():
        aside = out.with_name(f".{out.name}.replaced")
        shutil.rmtree(aside, ignore_errors=True)
        out.rename(aside)
        staging.rename(out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        staging.rename(out)
