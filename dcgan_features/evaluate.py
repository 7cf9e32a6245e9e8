"""``dcgan-features evaluate``: frozen-D features -> L2-SVM with C chosen on validation -> one test score."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from .artifacts import provenance, sha256_file, write_json
from .augment import shifted_copy
from .checkpoint import load_checkpoint, load_discriminator, resolve_checkpoint
from .config import Config, SvmConfig, apply_overrides, read_config_file
from .data import ImageSet, load_images
from .distributed import init_world
from .errors import UserError
from .features import FeatureSet, FrozenExtractor, PixelExtractor, PoolingSpec, cache_key, cached_features
from .fisher import FisherExtractor, describe_fisher, generated_moments, load_run_generator
from .models import Discriminator, build_models, recompute_batchnorm_stats
from .protocols import PROTOCOLS, EvalConfig, Outcome, ProtocolInputs, svhn_shuffle
from .records import (
    SCHEMA,
    architecture_name,
    epochs_trained,
    format_result,
    known_pretrain_seed,
    read_result,
    recipe_of,
    result_path,
    unfinished,
)
from .runtime import peak_resident_gb, resolve_device, settled_hessian_precision
from .svm import make_classifier
from .svm_rows import FittingViews

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
            differ = [f"model.{k}: {v!r} in the file, {getattr(stored.model, k)!r} in the checkpoint"
                      for k, v in vars(from_file.model).items() if getattr(stored.model, k) != v]
            raise UserError(f"{config_path} describes another architecture than the checkpoint's "
                            f"({'; '.join(differ)}); leave out --config to use the checkpoint's own")
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


def load_subject(checkpoint: str | Path | None, config_path, overrides: Mapping[str, Any], baseline: str | None = None,
                 seed: int = 0, select: str = "final") -> Subject:
    """The checkpoint's D, or for a baseline a stand-in that keeps its architecture and data settings.
    A baseline needs no checkpoint when ``config_path`` gives the architecture."""
    if checkpoint is None:
        if baseline is None or config_path is None:
            raise UserError("--checkpoint is required, except for a --baseline whose architecture comes from --config")
        path = Path(config_path)
        stored = config = apply_overrides(Config.from_dict(read_config_file(config_path), str(config_path)), overrides)
    else:
        path = resolve_checkpoint(checkpoint, select)
        payload = load_checkpoint(path)
        discriminator, stored = load_discriminator(payload, str(path))
        config = evaluation_config(stored, config_path, overrides)
        if baseline is None:
            return Subject(path, sha256_file(path), payload, discriminator, stored, config)
    torch.manual_seed(seed)
    untrained = build_models(stored.model)[1]
    identity = hashlib.sha256(json.dumps([baseline, stored.model.__repr__(), seed]).encode()).hexdigest()
    return Subject(path, identity, {"kind": f"{baseline}-baseline", "epoch": 0}, untrained, stored, config, baseline)


@dataclass(frozen=True)
class Run:
    """One evaluation, resolved: what is evaluated, on which data, and where its result goes."""

    subject: Subject
    settings: EvalConfig
    seed: int
    out_path: Path

    @property
    def dataset(self) -> str:
        return self.subject.config.data.dataset


def data_flags(dataset: str, root: str) -> dict[str, str]:
    """``--dataset`` and ``--data-root`` as config overrides, the ones given only (they win over every config)."""
    return {key: value for key, value in {"data.dataset": dataset, "data.root": root}.items() if value}


def resolve(checkpoint, settings: EvalConfig, seed: int, config_path, overrides: Mapping[str, Any],
            results_dir, device: torch.device) -> Run:
    """Load what is evaluated and settle every setting: flags over ``--set`` over the config over the checkpoint,
    and what the config leaves to the machine (``svm.hessian_precision = "auto"``) as it runs on ``device``."""
    flags = data_flags(settings.dataset, settings.root)
    subject = load_subject(checkpoint, config_path, {**overrides, **flags}, settings.baseline or None, seed,
                           settings.select)
    svm = subject.config.svm
    settled = replace(svm, hessian_precision=settled_hessian_precision(svm.hessian_precision, device))
    subject = replace(subject, config=replace(subject.config, svm=settled))
    out_path = result_path(results_dir, eval_dataset=subject.config.data.dataset, protocol=settings.protocol_name,
                           pretrain_dataset=settings.baseline or subject.stored.data.dataset,
                           checkpoint_sha256=subject.sha256, config=subject.config, seed=seed)
    return Run(subject, settings, seed, out_path)


def evaluate(checkpoint: str | Path | None, settings: EvalConfig = EvalConfig(), *, seed: int = 0,
             config_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
             results_dir: str | Path = "results", cache_dir: str | Path | None = None, force: bool = False,
             echo: Callable[[str], None] = print, origin: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint's frozen discriminator as ``settings`` say; returns the result written to disk. Under
    torchrun the ranks share the feature extraction and rank 0 fits the SVM and writes (the others return {}).

    ``seed`` drives everything random in the evaluation (validation split, label draws, the untrained
    baseline's initialisation). ``origin`` is the provenance to record, read once when several seeds
    are evaluated by one command."""
    started, origin = time.perf_counter(), origin or provenance()  # the commit that runs is the one checked out now
    world, device = init_world(resolve_device(settings.device))
    echo = echo if world.is_main else (lambda _: None)
    run = resolve(checkpoint, settings, seed, config_path, overrides or {}, results_dir, device)
    if run.out_path.exists() and not force:
        echo(f"already evaluated: {run.out_path} (pass --force to recompute)")
        echo(format_result(result := read_result(run.out_path)))
        return result
    record = subject_record(run.subject)
    if where := unfinished(record["checkpoint"]):
        echo(f"warning: {run.subject.path} is the checkpoint of an unfinished run ({where}): there is no "
             "discriminator.pt yet, so this evaluates D as it was mid-training")
    features, spec, timings = extract_splits(run, cache_dir, device, echo)
    if not world.is_main:
        return {}  # under torchrun: this rank's share of the features went to rank 0, which fits the SVM
    outcome = run_protocol(run, features, device)
    warn_about(outcome, echo)
    # peak_rss_gb: the whole process's, so with several --seeds it covers the seeds evaluated before this one too
    timings.update(outcome.timings, total_s=round(time.perf_counter() - started, 2), peak_rss_gb=peak_resident_gb())
    record["recipe"] = recipe_of(run.subject.payload, config_path, run.subject.baseline)
    result = build_result(run, outcome, features["train"], features.get("test"), spec, record, timings, device,
                          origin)
    write_result(run.out_path, result, force)
    echo(format_result(result))
    echo(f"result: {run.out_path}")
    return result


def write_result(path: Path, result: dict[str, Any], force: bool) -> None:
    """Write a result whole (atomically); an existing one is kept unless ``force``."""
    if path.exists() and not force:
        raise UserError(f"result {path} exists; pass --force to replace it")
    write_json(path, result)


def run_protocol(run: Run, features: dict[str, FeatureSet], device: torch.device) -> Outcome:
    """The protocol the settings name (from the registry), on the (memory-mapped) train and test features; the
    training images' other views join the SVM's fitting rows (:func:`fitting_view_names`), and each split's
    scoring views (:func:`scoring_view_names`) are scored beside its images."""
    svm, train, test = run.subject.config.svm, features["train"], features.get("test")

    def views(names: list[str]) -> FittingViews | None:
        arrays = tuple(features[name].features for name in names if name in features)
        return FittingViews(arrays) if arrays else None

    inputs = ProtocolInputs(train.features, train.labels, None if test is None else test.features,
                            None if test is None else test.labels, svm, run.seed,
                            partial(make_classifier, svm, device=str(device)), views(fitting_view_names(svm)),
                            views(scoring_view_names(svm, "train")), views(scoring_view_names(svm, "test")))
    return PROTOCOLS[run.settings.protocol].run(inputs, run.settings)


def warn_about(outcome: Outcome, echo: Callable[[str], None]) -> None:
    """Say so when C (or kNN's k) sits at the edge of its grid, or when a fit stopped before converging."""
    if outcome.c_at_grid_edge and "chosen_k" in outcome.details:
        echo(f"warning: the best k on validation ({outcome.details['chosen_k']}) is at the edge of --knn-k; "
             "a wider grid may do better")
    elif outcome.c_at_grid_edge:
        echo(f"warning: the best C on validation ({outcome.chosen_C:g}) is at the edge of svm.c_grid; "
             "a wider grid may do better")
    stopped_early = [f for f in outcome.fits if not f["converged"]]
    if stopped_early:
        at = ", ".join(f"{c:g}" for c in sorted({f["C"] for f in stopped_early}))
        echo(f"warning: {len(stopped_early)} of {len(outcome.fits)} SVM fits stopped before converging "
             f"(at C = {at}); their accuracy may be off: raise svm.max_iter (the result lists every fit under 'fits')")


def build_result(run: Run, outcome: Outcome, train, test, spec: PoolingSpec, record: dict, timings: dict,
                 device: torch.device, origin: dict[str, Any]) -> dict[str, Any]:
    """The result file's contents (schema :data:`records.SCHEMA`), built in this one place."""
    subject = run.subject
    measured = {k: v for k, v in asdict(outcome).items() if k not in ("timings", "details")}
    return {
        "schema": SCHEMA, "eval_dataset": run.dataset, "protocol": run.settings.protocol_name,
        "protocol_kind": run.settings.protocol, "seed": run.seed,
        **measured, **outcome.details, "n_test": 0 if test is None else int(len(test.labels)),
        "test_error": None if outcome.test_accuracy is None else 1 - outcome.test_accuracy,
        "feature_dim": int(train.features.shape[1]), "feature_spec": describe(spec, subject),
        "bn_stats": subject.config.features.bn_stats, "svm_solver": subject.config.svm.solver,
        **record, "cache_hit": {"train": train.cache_hit, "test": None if test is None else test.cache_hit},
        "timings": timings, "device": str(device), "config": subject.config.to_dict(), **origin,
    }


def evaluate_seeds(checkpoint: str | Path | None, settings: EvalConfig = EvalConfig(), *,
                   echo: Callable[[str], None] = print, **options: Any) -> list[dict[str, Any]]:
    """:func:`evaluate` once per seed of ``settings.seeds`` (one result file each), then the mean ± std.

    Features are computed once: the later seeds read them from the feature cache."""
    origin = provenance()
    results = [evaluate(checkpoint, settings, seed=seed, echo=echo, origin=origin, **options)
               for seed in settings.seeds]
    if len(results) > 1 and all(results):  # (under torchrun, only rank 0 holds results)
        accuracies = 100 * np.array([r["test_accuracy"] for r in results])
        echo(f"seeds {', '.join(map(str, settings.seeds))}: test accuracy {accuracies.mean():.2f} ± "
             f"{accuracies.std(ddof=1):.2f} (mean ± sample std, n={len(results)})")
    return results


def extract_splits(run: Run, cache_dir, device, echo) -> tuple[dict[str, FeatureSet], PoolingSpec, dict]:
    """Train and test features of the run's dataset (cached), with batch-norm statistics as configured, and with
    the other views :func:`other_views` names. The validation protocol never loads the test split."""
    subject, config = run.subject, run.subject.config
    spec = PoolingSpec.from_config(config.features, subject.discriminator)
    if subject.baseline == "pixels":
        spec = PoolingSpec(("pixels",), config.model.image_size, "none")
    echo(f"features: {describe(spec, subject)}")
    start = time.perf_counter()
    data = {split: load_images(run.dataset, config.data.root, split, image_size=config.model.image_size,
                               channels=config.model.channels, download=config.data.download)
            for split in (("train", "test") if PROTOCOLS[run.settings.protocol].reads_test else ("train",))}
    if PROTOCOLS[run.settings.protocol].uses_views:
        data |= other_views(data, config.svm)
    timings = {"load_data_s": round(time.perf_counter() - start, 2)}
    bn_key = "running"
    if config.features.bn_stats == "data" and subject.baseline != "pixels":
        bn_key = recompute_data_statistics(run, data["train"], device)
    start = time.perf_counter()
    extractor, fisher_key = make_extractor(subject, spec, device)
    timings["fisher_moments_s"] = round(time.perf_counter() - start, 2) if fisher_key else None
    features = {}
    for split, images in data.items():
        start = time.perf_counter()
        key = cache_key(subject.sha256, spec, images, bn_stats=bn_key, fisher=fisher_key)
        features[split] = cached_features(extractor, images, key, cache_dir, config.features.batch_size, device)
        timings[f"features_{split}_s"] = round(time.perf_counter() - start, 2)
    return features, spec, timings


def other_views(data: dict[str, ImageSet], svm: SvmConfig) -> dict[str, ImageSet]:
    """The other views the SVM settings ask for: with ``svm.train_hflip`` or ``svm.score_hflip`` the images flipped
    left-right ("train_mirrored", and with ``score_hflip`` "test_mirrored"); with ``svm.train_translate`` the
    training images' shifted copies ("train_shifted0", ...; the copy's index seeds its shifts), and with
    ``svm.score_translate`` the test images' too ("test_shifted0", ...)."""
    views = {}
    mirrored = (("train",) if svm.train_hflip else ()) + (tuple(data) if svm.score_hflip else ())
    for split in sorted(set(mirrored), key=("train", "test").index):
        images = data[split]
        views[f"{split}_mirrored"] = replace(images, images=images.images.flip(-1).contiguous(),
                                             split=f"{images.split}-hflip")
    shifted = ("train",) + (("test",) if svm.score_translate and "test" in data else ())
    for split in shifted if svm.train_translate else ():
        images = data[split]
        for index in range(svm.train_translate_views):
            views[shifted_view_name(index, split)] = replace(
                images, images=shifted_copy(images.images, svm.train_translate, seed=index),
                split=f"{images.split}-shift{svm.train_translate}-{index}")
    return views


def shifted_view_name(index: int, split: str = "train") -> str:
    """The features of the ``split``'s ``index``-th shifted copy (``svm.train_translate``)."""
    return f"{split}_shifted{index}"


def fitting_view_names(svm: SvmConfig) -> list[str]:
    """The features whose rows join the SVM's fitting rows, after the images' own: the mirror, the shifted copies."""
    shifted = [shifted_view_name(i) for i in range(svm.train_translate_views)] if svm.train_translate else []
    return ["train_mirrored"] * svm.train_hflip + shifted


def scoring_view_names(svm: SvmConfig, split: str) -> list[str]:
    """The features scored beside each of the ``split``'s images, the mean decision over all of them: the mirror
    (``svm.score_hflip``), the shifted copies (``svm.score_translate``)."""
    shifted = [shifted_view_name(i, split) for i in range(svm.train_translate_views)] if svm.score_translate else []
    return [f"{split}_mirrored"] * svm.score_hflip + shifted


def make_extractor(subject: Subject, spec: PoolingSpec, device: torch.device) -> tuple[nn.Module, dict | None]:
    """The extractor of ``features.kind``, and what the feature cache must know of it beyond the pooling spec (None
    for pooled features). Fisher vectors take their mean and scale from the run's G, so its file is in the key."""
    if subject.baseline == "pixels":
        return PixelExtractor(), None
    cfg, pooled = subject.config.features, FrozenExtractor(subject.discriminator, spec)
    if cfg.kind == "pooled":
        return pooled, None
    if subject.baseline:
        raise UserError(f"features.kind {cfg.kind!r} needs a trained run's G; the {subject.baseline} baseline has none")
    generator, generator_path = load_run_generator(subject.path, subject.stored.model)
    mean, std = generated_moments(subject.discriminator, generator, cfg, subject.stored.model, device)
    extractor = FisherExtractor(subject.discriminator, mean, std, cfg, pooled if cfg.kind == "pooled+fisher" else None)
    keys = ("kind", "fisher_output", "fisher_reduce", "fisher_dim", "fisher_samples")
    return extractor, {**{k: getattr(cfg, k) for k in keys}, "generator_sha256": sha256_file(generator_path)}


def recompute_data_statistics(run: Run, train: ImageSet, device) -> str:
    """D's batch-norm statistics recomputed from training images, the authors' way; returns what the feature
    cache must know of them (every split's features now depend on those images).

    Under ``svhn-1000`` this follows the authors' SVHN script exactly: the images outside the validation split,
    in the order of their seed-42 shuffle, in batches of 128 with the last partial batch counted."""
    images, key = train.images, f"data:{train.fingerprint()}"
    if run.settings.protocol == "svhn-1000":
        rows = svhn_shuffle(len(train), run.settings.val_size)[run.settings.val_size:]
        images, key = images[torch.from_numpy(rows)], f"{key}:svhn-pool-val{run.settings.val_size}:partial"
    recompute_batchnorm_stats(run.subject.discriminator, images, 128, device,
                              keep_partial=run.settings.protocol == "svhn-1000")
    return key


def describe(spec: PoolingSpec, subject: Subject) -> str:
    if subject.baseline == "pixels":
        c, n = subject.config.model.channels, subject.config.model.image_size
        return f"raw pixels {c}x{n}x{n} = {c * n * n:,} features (pixels baseline)"
    cfg = subject.config.features
    pooled = spec.describe(subject.discriminator) + (" (untrained D baseline)" if subject.baseline else "")
    if cfg.kind == "pooled":
        return pooled
    fisher = describe_fisher(subject.discriminator, cfg)
    return fisher if cfg.kind == "fisher" else f"{pooled} + {fisher}"


def subject_record(subject: Subject) -> dict[str, Any]:
    """Where the features came from: the pretraining and the checkpoint file (or the baseline)."""
    if subject.baseline:
        architecture = "raw pixels" if subject.baseline == "pixels" else architecture_name(subject.stored.model)
        return {"baseline": subject.baseline,
                "pretrain": {"dataset": f"none ({subject.baseline} baseline)", "architecture": architecture,
                             "seed": None, "epochs": 0},
                "checkpoint": {"path": str(subject.path), "sha256": subject.sha256, "kind": subject.payload["kind"],
                               "architecture_from": sha256_file(subject.path)}}
    return {"pretrain": {"dataset": subject.stored.data.dataset,
                         "architecture": architecture_name(subject.stored.model),
                         "seed": known_pretrain_seed(subject.payload.get("kind"), subject.stored.train.seed),
                         "epochs": epochs_trained(subject.payload),
                         "train_seconds": subject.payload.get("train_seconds"),
                         "provenance": subject.payload.get("provenance")},
            "checkpoint": {"path": str(subject.path), "sha256": subject.sha256, "kind": subject.payload.get("kind"),
                           "finished": subject.payload.get("finished", subject.payload.get("kind") != "training"),
                           "selected_by": subject.payload.get("selected_by", "final"),
                           "probe_accuracy": subject.payload.get("probe_accuracy"),
                           **{k: subject.payload.get(k) for k in ("epoch", "step", "global_step")}}}
