"""``dcgan-features evaluate``: frozen-D features -> L2-SVM with C chosen on validation -> one test score."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .artifacts import sha256_file
from .checkpoint import load_checkpoint, load_discriminator, resolve_checkpoint
from .config import Config, apply_overrides, read_config_file
from .data import load_images
from .errors import UserError
from .features import FrozenExtractor, PoolingSpec, cache_key, cached_features
from .results import architecture_name, format_result, provenance, read_result, result_path, write_result
from .svm import fit_and_score, make_classifier, select_c
from .train import resolve_device

PROTOCOLS = ("full",)


def evaluation_config(stored: Config, config_path: str | Path | None, overrides: Mapping[str, Any]) -> Config:
    """The checkpoint's own config, with [data], [features] and [svm] from ``config_path`` and overrides.

    The architecture always comes from the checkpoint: a config or override that describes another
    architecture is refused rather than silently ignored."""
    config = stored
    if config_path is not None:
        from_file = Config.from_dict(read_config_file(config_path), str(config_path))
        if from_file.model != stored.model:
            raise UserError(f"{config_path} describes the architecture {architecture_name(from_file.model)}, but the "
                            f"checkpoint holds {architecture_name(stored.model)}; use the checkpoint's own config")
        config = Config(data=from_file.data, model=stored.model, train=stored.train,
                        features=from_file.features, svm=from_file.svm)
    if any(key.startswith("model.") for key in overrides):
        raise UserError("the architecture of a trained checkpoint cannot be overridden (model.* keys)")
    return apply_overrides(config, overrides)


def evaluate(checkpoint: str | Path, *, dataset: str | None = None, data_root: str | None = None,
             config_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
             seed: int = 0, protocol: str = "full", device: str = "auto", results_dir: str | Path = "results",
             cache_dir: str | Path | None = None, force: bool = False,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate a checkpoint's frozen discriminator on ``dataset``; returns the result dict written to disk."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    started = time.perf_counter()
    ckpt_path = resolve_checkpoint(checkpoint)
    payload = load_checkpoint(ckpt_path)
    discriminator, stored = load_discriminator(payload, str(ckpt_path))
    config = evaluation_config(stored, config_path, overrides or {})
    eval_dataset, root = dataset or stored.data.dataset, data_root or stored.data.root
    checkpoint_sha = sha256_file(ckpt_path)
    out_path = result_path(results_dir, eval_dataset=eval_dataset, protocol=protocol,
                           pretrain_dataset=stored.data.dataset, checkpoint_sha256=checkpoint_sha, config=config, seed=seed)
    if out_path.exists() and not force:
        result = read_result(out_path)
        echo(f"already evaluated: {out_path} (pass --force to recompute)")
        echo(format_result(result))
        return result
    torch_device = resolve_device(device)
    spec = PoolingSpec.from_config(config.features, discriminator)
    echo(f"features: {spec.describe(discriminator)}")
    extractor = FrozenExtractor(discriminator, spec)
    splits, timings = {}, {}
    for split in ("train", "test"):
        start = time.perf_counter()
        data = load_images(eval_dataset, root, split, image_size=config.model.image_size,
                           channels=config.model.channels, download=config.data.download)
        key = cache_key(checkpoint_sha, spec, data, bn_stats="running")
        splits[split] = cached_features(extractor, data, key, cache_dir, config.features.batch_size, torch_device)
        timings[f"features_{split}_s"] = round(time.perf_counter() - start, 2)
    train, test = splits["train"], splits["test"]
    factory = partial(make_classifier, config.svm, device=str(torch_device))
    start = time.perf_counter()
    selection = select_c(np.asarray(train.features), train.labels, config.svm, seed, factory)
    timings["select_c_s"] = round(time.perf_counter() - start, 2)
    scored = fit_and_score(np.asarray(train.features), train.labels, np.asarray(test.features), test.labels,
                           selection.best_c, factory)
    timings["refit_s"] = scored["fit_seconds"]
    timings["total_s"] = round(time.perf_counter() - started, 2)
    result = {
        "schema": "dcgan-features/result/v1", "eval_dataset": eval_dataset, "protocol": protocol, "seed": seed,
        "test_accuracy": scored["test_accuracy"], "test_error": 1 - scored["test_accuracy"],
        "chosen_C": selection.best_c, "validation": selection.table,
        "n_train": int(len(train.labels)), "n_fit": selection.n_fit, "n_val": selection.n_val,
        "n_test": int(len(test.labels)), "feature_dim": int(train.features.shape[1]),
        "feature_spec": spec.describe(discriminator), "bn_stats": "running", "svm_solver": config.svm.solver,
        "pretrain": {"dataset": stored.data.dataset, "architecture": architecture_name(stored.model),
                     "seed": stored.train.seed, "epochs": payload.get("epoch")},
        "checkpoint": {"path": str(ckpt_path), "sha256": checkpoint_sha, "kind": payload.get("kind")},
        "cache_hit": {"train": train.cache_hit, "test": test.cache_hit},
        "timings": timings, "device": str(torch_device), "config": config.to_dict(), **provenance(),
    }
    write_result(out_path, result, force)
    echo(format_result(result))
    echo(f"result: {out_path}")
    return result
