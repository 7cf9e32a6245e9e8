"""``dcgan-features evaluate``: frozen-D features -> L2-SVM with C chosen on validation -> one test score."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .artifacts import provenance, sha256_file
from .checkpoint import load_checkpoint, load_discriminator, resolve_checkpoint
from .config import Config, apply_overrides, read_config_file
from .models import Discriminator, build_models, recompute_batchnorm_stats
from .data import load_images
from .errors import UserError
from .features import FrozenExtractor, PixelExtractor, PoolingSpec, cache_key, cached_features
from .results import (architecture_name, format_result, known_pretrain_seed, read_result, result_path,
                      unfinished, write_result)
from .protocols import run_full, run_per_class, run_svhn_1000
from .svm import make_classifier
from .runtime import resolve_device

PROTOCOLS = ("full", "per-class", "svhn-1000")
DEFAULT_LABELS_PER_CLASS = {"per-class": 400, "svhn-1000": 100}


EVALUATION_SECTIONS = ("data", "features", "svm")


def evaluation_config(stored: Config, config_path: str | Path | None, overrides: Mapping[str, Any]) -> Config:
    """The checkpoint's own config, with the [data], [features] and [svm] keys that ``config_path`` sets and
    then the overrides on top: a flag or ``--set`` wins over the config file, which wins over the checkpoint.

    The architecture always comes from the checkpoint: a config or override that describes another
    architecture is refused rather than silently ignored."""
    merged = stored.to_dict()
    if config_path is not None:
        raw = read_config_file(config_path)
        from_file = Config.from_dict(raw, str(config_path))  # refuses unknown keys and wrong types
        if from_file.model != stored.model:
            raise UserError(f"{config_path} describes the architecture {architecture_name(from_file.model)}, but the "
                            f"checkpoint holds {architecture_name(stored.model)}; use the checkpoint's own config")
        for section in EVALUATION_SECTIONS:
            merged[section].update({k: v for k, v in from_file.to_dict()[section].items() if k in raw.get(section, {})})
    if any(key.startswith("model.") for key in overrides):
        raise UserError("the architecture of a trained checkpoint cannot be overridden (model.* keys)")
    return apply_overrides(Config.from_dict(merged, "evaluation config"), overrides)


@dataclass(frozen=True)
class Subject:
    """What is being evaluated: a checkpoint's frozen D, its stored config and the evaluation config."""

    path: Path
    sha256: str
    payload: dict
    discriminator: Discriminator
    stored: Config
    config: Config
    baseline: str | None = None  # None, "untrained" (fresh D, same architecture) or "pixels"


BASELINES = ("pixels", "untrained")


def load_subject(checkpoint: str | Path | None, config_path, overrides: Mapping[str, Any], baseline: str | None = None,
                 seed: int = 0) -> Subject:
    """The checkpoint's D, or for a baseline a stand-in that keeps its architecture and data settings.
    A baseline needs no checkpoint when ``config_path`` gives the architecture."""
    if baseline is not None and baseline not in BASELINES:
        raise UserError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if checkpoint is None:
        if baseline is None or config_path is None:
            raise UserError("--checkpoint is required, except for a --baseline whose architecture comes from --config")
        path = Path(config_path)
        stored = config = apply_overrides(Config.from_dict(read_config_file(config_path), str(config_path)), overrides)
    else:
        path = resolve_checkpoint(checkpoint)
        payload = load_checkpoint(path)
        discriminator, stored = load_discriminator(payload, str(path))
        config = evaluation_config(stored, config_path, overrides)
        if baseline is None:
            return Subject(path, sha256_file(path), payload, discriminator, stored, config)
    torch.manual_seed(seed)
    untrained = build_models(stored.model)[1]
    identity = hashlib.sha256(json.dumps([baseline, stored.model.__repr__(), seed]).encode()).hexdigest()
    return Subject(path, identity, {"kind": f"{baseline}-baseline", "epoch": 0}, untrained, stored, config, baseline)


def evaluate(checkpoint: str | Path | None, *, dataset: str | None = None, data_root: str | None = None,
             config_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
             seed: int = 0, protocol: str = "full", device: str = "auto", results_dir: str | Path = "results",
             cache_dir: str | Path | None = None, force: bool = False, labels_per_class: int | None = None,
             draws: int = 10, test_draws: int = 100, val_size: int = 10_000, baseline: str | None = None,
             echo: Callable[[str], None] = print, origin: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint's frozen discriminator on ``dataset``; returns the result dict written to disk.

    ``seed`` drives everything random in the evaluation (validation split, label draws, the untrained
    baseline's initialisation). ``origin`` is the provenance to record, read once when several seeds
    are evaluated by one command."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    labels_per_class = labels_per_class or DEFAULT_LABELS_PER_CLASS.get(protocol, 0)
    protocol_name = {"full": "full", "per-class": f"per-class-{labels_per_class}x{draws}",
                     "svhn-1000": f"svhn-{labels_per_class}pc-{draws}x{test_draws}-val{val_size}"}[protocol]
    started, origin = time.perf_counter(), origin or provenance()  # the commit that runs is the one checked out now
    flags = {key: value for key, value in {"data.dataset": dataset, "data.root": data_root}.items() if value}
    subject = load_subject(checkpoint, config_path, {**(overrides or {}), **flags}, baseline, seed)
    eval_dataset = subject.config.data.dataset
    out_path = result_path(results_dir, eval_dataset=eval_dataset, protocol=protocol_name,
                           pretrain_dataset=baseline or subject.stored.data.dataset, checkpoint_sha256=subject.sha256,
                           config=subject.config, seed=seed)
    if out_path.exists() and not force:
        echo(f"already evaluated: {out_path} (pass --force to recompute)")
        echo(format_result(result := read_result(out_path)))
        return result
    record = subject_record(subject)
    if unfinished(record["checkpoint"]):
        echo(f"warning: {subject.path} is the checkpoint of an unfinished run ({unfinished(record['checkpoint'])}): "
             "there is no discriminator.pt yet, so this evaluates D as it was mid-training")
    torch_device = resolve_device(device)
    train, test, spec, timings = extract_splits(subject, eval_dataset, subject.config.data.root, cache_dir,
                                                torch_device, echo)
    factory = partial(make_classifier, subject.config.svm, device=str(torch_device))
    arrays = (train.features, train.labels, test.features, test.labels,  # memory-mapped when cached
              subject.config.svm, seed, factory)
    if protocol == "full":
        outcome = run_full(*arrays)
    elif protocol == "per-class":
        outcome = run_per_class(*arrays, labels_per_class, draws)
    else:
        outcome = run_svhn_1000(*arrays, labels_per_class, draws, test_draws, val_size)
    if outcome["c_at_grid_edge"]:
        echo(f"warning: the best C on validation ({outcome['chosen_C']:g}) is at the edge of svm.c_grid; "
             "a wider grid may do better")
    stopped_early = [f for f in outcome["fits"] if not f["converged"]]
    if stopped_early:
        at = ", ".join(f"{c:g}" for c in sorted({f["C"] for f in stopped_early}))
        echo(f"warning: {len(stopped_early)} of {len(outcome['fits'])} SVM fits stopped before converging "
             f"(at C = {at}); their accuracy may be off: raise svm.max_iter (the result lists every fit under 'fits')")
    timings.update(outcome.pop("timings"), total_s=round(time.perf_counter() - started, 2))
    result = {
        "schema": "dcgan-features/result/v1", "eval_dataset": eval_dataset, "protocol": protocol_name, "seed": seed,
        **outcome, "test_error": 1 - outcome["test_accuracy"], "n_test": int(len(test.labels)),
        "feature_dim": int(train.features.shape[1]), "feature_spec": describe(spec, subject),
        "bn_stats": subject.config.features.bn_stats, "svm_solver": subject.config.svm.solver,
        **record, "cache_hit": {"train": train.cache_hit, "test": test.cache_hit},
        "timings": timings, "device": str(torch_device), "config": subject.config.to_dict(), **origin,
    }
    write_result(out_path, result, force)
    echo(format_result(result))
    echo(f"result: {out_path}")
    return result


def evaluate_seeds(checkpoint: str | Path | None, seeds: Sequence[int], *, echo: Callable[[str], None] = print,
                   **options: Any) -> list[dict[str, Any]]:
    """:func:`evaluate` once per seed (one result file each), then the mean ± std over seeds.

    Features are computed once: the later seeds read them from the feature cache."""
    if len(set(seeds)) != len(seeds):
        raise UserError(f"a seed is given twice in --seeds {' '.join(map(str, seeds))}")
    origin = provenance()
    results = [evaluate(checkpoint, seed=seed, echo=echo, origin=origin, **options) for seed in seeds]
    if len(results) > 1:
        accuracies = 100 * np.array([r["test_accuracy"] for r in results])
        echo(f"seeds {', '.join(map(str, seeds))}: test accuracy {accuracies.mean():.2f} ± "
             f"{accuracies.std(ddof=1):.2f} (mean ± sample std, n={len(results)})")
    return results


def extract_splits(subject: Subject, dataset: str, root: str, cache_dir, device, echo):
    """Train and test features of ``dataset`` (cached), with batch-norm statistics as configured."""
    config = subject.config
    spec = PoolingSpec.from_config(config.features, subject.discriminator)
    if subject.baseline == "pixels":
        spec = PoolingSpec(("pixels",), config.model.image_size, "none")
    echo(f"features: {describe(spec, subject)}")
    start = time.perf_counter()
    data = {split: load_images(dataset, root, split, image_size=config.model.image_size,
                               channels=config.model.channels, download=config.data.download)
            for split in ("train", "test")}
    timings = {"load_data_s": round(time.perf_counter() - start, 2)}
    if config.features.bn_stats == "data" and subject.baseline != "pixels":  # the authors' recipe
        recompute_batchnorm_stats(subject.discriminator, data["train"].images, 128, device)
    extractor = PixelExtractor() if subject.baseline == "pixels" else FrozenExtractor(subject.discriminator, spec)
    # Recomputed statistics make every split's features depend on the training images too.
    bn_key = f"data:{data['train'].fingerprint()}" if config.features.bn_stats == "data" else "running"
    features = {}
    for split, images in data.items():
        start = time.perf_counter()
        key = cache_key(subject.sha256, spec, images, bn_stats=bn_key)
        features[split] = cached_features(extractor, images, key, cache_dir, config.features.batch_size, device)
        timings[f"features_{split}_s"] = round(time.perf_counter() - start, 2)
    return features["train"], features["test"], spec, timings


def describe(spec: PoolingSpec, subject: Subject) -> str:
    if subject.baseline == "pixels":
        c, n = subject.config.model.channels, subject.config.model.image_size
        return f"raw pixels {c}x{n}x{n} = {c * n * n:,} features (pixels baseline)"
    return spec.describe(subject.discriminator) + (" (untrained D baseline)" if subject.baseline else "")


def subject_record(subject: Subject) -> dict[str, Any]:
    """Where the features came from: the pretraining and the checkpoint file (or the baseline)."""
    if subject.baseline:
        architecture = "raw pixels" if subject.baseline == "pixels" else architecture_name(subject.stored.model)
        return {"baseline": subject.baseline,
                "pretrain": {"dataset": f"none ({subject.baseline} baseline)", "architecture": architecture,
                             "seed": None, "epochs": 0},
                "checkpoint": {"path": str(subject.path), "sha256": subject.sha256, "kind": subject.payload["kind"],
                               "architecture_from": sha256_file(subject.path)}}
    return {"pretrain": {"dataset": subject.stored.data.dataset, "architecture": architecture_name(subject.stored.model),
                         "seed": known_pretrain_seed(subject.payload.get("kind"), subject.stored.train.seed),
                         "epochs": subject.payload.get("epoch"),
                         "train_seconds": subject.payload.get("train_seconds"),
                         "provenance": subject.payload.get("provenance")},
            "checkpoint": {"path": str(subject.path), "sha256": subject.sha256, "kind": subject.payload.get("kind"),
                           "finished": subject.payload.get("finished", subject.payload.get("kind") != "training"),
                           **{k: subject.payload.get(k) for k in ("epoch", "step", "global_step")}}}
