"""The result record: its schema, its file name, the experiment it belongs to and its recipe's name.

A result is one JSON file per (checkpoint, evaluation dataset, protocol, feature/SVM settings, seed), named from
that identity, so the same evaluation is never counted twice and never overwritten without ``--force``. Each is
written whole by ``evaluate``, the only writer (this module defines and reads records, it writes none): the
command and argv that ran (whatever the launcher), the git commit, the resolved config, the checkpoint's sha256,
the seed, versions, wall time and the recipe's name with the config file it came from. Readers (``report``,
``ablations``, the run page) take it as written and never re-derive it.

Result files written before the recipe was stored keep loading: :func:`upgrade` reads their old fields once, here.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any, Callable

from .artifacts import read_json
from .config import Config, ModelConfig, load_config
from .errors import UserError
from .protocols import PROTOCOLS, protocol_of

SCHEMA = "dcgan-features/result/v1"
SCHEMA_PREFIX = "dcgan-features/result/"
CHECKS_DIR = "checks"  # reruns that check a committed result: they repeat its seeds, so the report leaves them out
# Config keys that cannot change what was learnt or measured: where the data lives, the device, logging and
# checkpoint cadence, the memory layout and compilation (equal to float rounding, tested), the extraction
# batch size, and the online probe (it leaves training as it was, tested; its keys count where a result
# evaluates the D it chose). Every other key, present or future, separates two results into two report rows.
PROBE_KEYS = frozenset({"train.probe_every", "train.probe_images", "train.probe_c", "train.probe_tol",
                        "train.probe_preconditioner_rank"})
# keys that change only what a run writes beside its final D, so they belong to the experiment of that D alone
SELECTION_KEYS = {"probe": PROBE_KEYS, "ema": frozenset({"train.ema_decay"})}
NOT_EXPERIMENT_KEYS = frozenset({
    "data.root", "data.download", "train.seed", "train.device", "train.log_every", "train.checkpoint_every",
    "train.num_samples", "train.collapse_loss", "train.collapse_steps", "train.channels_last", "train.compile",
    "features.batch_size", *(key for keys in SELECTION_KEYS.values() for key in keys)})
TRAINING_SECTIONS = ("data", "model", "train")  # the config sections that shape a D; features and svm read it out
REQUIRED = ("eval_dataset", "protocol", "seed", "feature_dim", "chosen_C", "validation", "pretrain", "checkpoint")


def architecture_name(model: ModelConfig) -> str:
    """A short, stable label such as ``D64-128-256 k4 32px rgb``."""
    widths = "-".join(str(w) for w in model.discriminator_widths)
    strides = "" if set(model.discriminator_strides) == {2} else " s" + "".join(map(str, model.discriminator_strides))
    return f"D{widths} k{model.kernel_size}{strides} {model.image_size}px {'rgb' if model.channels == 3 else 'gray'}"


def settings_hash(config: Config) -> str:
    """Hash of the settings that change an evaluation's outcome besides checkpoint, data and seed."""
    relevant = {k: config.to_dict()[k] for k in ("features", "svm")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:8]


def result_path(results_dir: str | Path, *, eval_dataset: str, protocol: str, pretrain_dataset: str,
                checkpoint_sha256: str, config: Config, seed: int) -> Path:
    """Where the result of this evaluation lives: one file name per identity."""
    name = (f"{eval_dataset}_{protocol}_{pretrain_dataset}-{checkpoint_sha256[:10]}"
            f"_{settings_hash(config)}_seed{seed}.json")
    return Path(results_dir) / name


def read_result(path: str | Path) -> dict[str, Any]:
    """One result file, checked and upgraded; anything else is an error that names the file."""
    result = read_json(path)
    if not is_result(result):
        raise UserError(f"{path} is not a dcgan-features result file")
    return upgrade(result, path)


def is_result(payload: Any) -> bool:
    """Whether a parsed JSON file claims to be a result (any version of the schema)."""
    return isinstance(payload, dict) and str(payload.get("schema", "")).startswith(SCHEMA_PREFIX)


def upgrade(result: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """A result as this version reads it: the schema checked, the required fields present, and the fields added
    since it was written (``protocol_kind``, ``recipe``) filled in from its old fields, in this one place."""
    if result.get("schema") != SCHEMA:
        raise UserError(f"{path} has result schema {result.get('schema')!r}, which this version cannot read "
                        f"(it reads {SCHEMA})")
    missing = [key for key in REQUIRED if key not in result]
    if missing:
        raise UserError(f"{path} is not a complete result: it lacks {', '.join(missing)}")
    try:
        kind = result.get("protocol_kind") or protocol_of(result["protocol"])
    except UserError:
        kind = None
    if kind not in PROTOCOLS:
        raise UserError(f"{path} is a result of protocol {result['protocol']!r}, which this version does not know")
    if result.get("test_accuracy") is None and PROTOCOLS[kind].reads_test:
        raise UserError(f"{path} is a {kind} result without its test_accuracy")
    return {**result, "protocol_kind": kind, "recipe": result.get("recipe") or _legacy_recipe(result)}


def _legacy_recipe(result: dict[str, Any]) -> dict[str, Any]:
    """The recipe of a result written before it was stored: the ``--config`` of its recorded command line (the
    pretraining's first for a D, the evaluation's for a baseline)."""
    if result.get("checkpoint", {}).get("kind") == "imported":
        return recipe_record(None, imported=True)
    command = result.get("command") or ""
    if not result.get("baseline"):
        history = result["pretrain"].get("provenance") or [{}]
        command = (history[0] if isinstance(history, list) else history).get("command") or ""
    words = shlex.split(command)
    named = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--config"]
    return recipe_record(named[-1] if named else None) | {"named_by": "the recorded command line"}


def recipe_record(config_file: str | Path | None, imported: bool = False) -> dict[str, Any]:
    """The recipe a result stores: the config file's name (``defaults`` without one, ``imported`` for a converted
    release) and the path it was given as."""
    name = "imported" if imported else Path(config_file).name if config_file else "defaults"
    return {"name": name, "config_file": None if config_file is None else str(config_file)}


def recipe_of(subject_payload: dict[str, Any], eval_config_file: str | Path | None, baseline: str | None) -> dict:
    """The recipe to store in a new result: for a trained D, the config file its run started from (the first
    training process's); for a baseline, the config file the evaluation was given. Where the D's file is gone or
    no longer holds its recipe (:func:`recipe_holder`: a new default recipe under the old name), the name says
    both: the sibling file that holds it now, ``cifar10_deep.toml (was cifar10.toml)`` (of several, one that gives
    the keys the run's commands set too: the file the run's ``--set`` flags became); else, for a file gone,
    the evaluation's config of the same architecture (``evaluate`` refuses any other); else, for a file still
    there, ``cifar10.toml (changed since)``. The name is as it is when written."""
    if baseline:
        return recipe_record(eval_config_file)
    if subject_payload.get("kind") == "imported":
        return recipe_record(None, imported=True)
    history = subject_payload.get("provenance") or [{}]
    first = history[0] if isinstance(history, list) and history else history or {}
    trained = recipe_record(first["config_file"]) if "config_file" in first else \
        _legacy_recipe({"pretrain": {"provenance": [first]}, "checkpoint": subject_payload})
    named, stored = trained.get("config_file"), subject_payload.get("config")
    holds = None if stored is None else recipe_holder(stored, history)
    if not named or holds is not None and holds(named):
        return trained
    holders = [] if holds is None else \
        [path for path in sorted(Path(named).parent.glob("*.toml")) if path != Path(named) and holds(path)]
    if len(holders) > 1:  # first a file that also gives what the commands set, so that it needs no --set
        gives_all = recipe_holder(stored, None)
        holders.sort(key=lambda path: not gives_all(path))
    renamed_for_evaluation = eval_config_file and Path(named).name != Path(eval_config_file).name
    if not holders and renamed_for_evaluation and not Path(named).exists():
        holders = [Path(eval_config_file)]
    if holders:
        return {**trained, "name": f"{holders[0].name} (was {Path(named).name})", "renamed_to": str(holders[0])}
    changed = stored is not None and Path(named).exists()
    return {**trained, "name": f"{Path(named).name} (changed since)"} if changed else trained


def recipe_holder(trained_config: dict[str, Any], history: Any) -> Callable[[str | Path], bool]:
    """A test of whether a config file, as it reads now, still gives a run's stored config on every key of the
    experiment that the run's recorded commands left to the file. Only the sections that shape the D count (the
    ``[features]`` and ``[svm]`` a run stores are the evaluation's business); keys set by ``--set KEY=VALUE`` or by
    an option named after the key (``--epochs``, ``--seed``) are the command's; a file's ``"auto"`` matches what it
    resolved to. A file changed since the run trained (a new default recipe under the old name) does not hold it.
    The run's side is read once, so one test can be put to every candidate file."""
    stored, commanded = flat_config(trained_config), _commanded_keys(history)

    def compared(key: str) -> bool:
        return key.partition(".")[0] in TRAINING_SECTIONS and key not in NOT_EXPERIMENT_KEYS \
            and key not in commanded and key.rpartition(".")[2] not in commanded

    def holds(config_file: str | Path) -> bool:
        try:
            now = flat_config(load_config(config_file).to_dict())
        except UserError:
            return False
        return all(file_gives(now.get(key), stored.get(key)) for key in stored.keys() | now.keys() if compared(key))

    return holds


def file_gives(file_value: Any, run_value: Any) -> bool:
    """Whether a config file's value gives a run's stored one: equal, or ``"auto"`` (which the run resolved on its
    machine, so any value it stored matches)."""
    return file_value in (run_value, "auto")


def _commanded_keys(history: Any) -> set[str]:
    """Dotted keys given with ``--set`` and the bare names of the other options, over every recorded process."""
    keys: set[str] = set()
    for process in history if isinstance(history, list) else [history or {}]:
        words = process.get("argv") or shlex.split(process.get("command") or "")
        for before, word in zip(words, words[1:]):
            if before == "--set":
                keys.add(word.partition("=")[0])
        keys |= {word[2:].partition("=")[0].replace("-", "_") for word in words if word.startswith("--")}
    return keys


def flat_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored config as ``{"section.key": value}``, with keys added since it was written filled in by their
    defaults (which keep the old behaviour), so that an older file and a newer one compare equal."""
    try:
        raw = Config.from_dict(raw, "stored config").to_dict()
    except UserError:
        pass  # a config this version cannot read is compared as it was stored
    return {f"{section}.{key}": value for section, values in raw.items() for key, value in values.items()}


def epochs_trained(payload: dict[str, Any]) -> int | None:
    """Whole epochs of training behind a checkpoint. ``epoch`` counts the epochs finished before the one under way
    and ``step`` the steps taken in it, so a D saved at an epoch's last step (where the online probe runs) has
    finished ``epoch + 1``. Newer D files record the count as ``epochs_done``; older ones are read off their step
    counters (``global_step`` is ``epoch`` whole epochs plus ``step``), which cannot tell within the first epoch."""
    if "epochs_done" in payload:
        return payload["epochs_done"]
    epoch, step, global_step = payload.get("epoch"), payload.get("step") or 0, payload.get("global_step")
    if epoch and step and global_step == (epoch + 1) * step:  # the steps under way make a whole epoch
        return epoch + 1
    return epoch


def result_epochs(result: dict[str, Any]) -> int | None:
    """The whole epochs behind a result's D. Results written before D files recorded ``epochs_done`` stored
    ``epoch``, one short for a D saved at an epoch's last step; their checkpoint record still tells."""
    known = [e for e in (result["pretrain"].get("epochs"), epochs_trained(result.get("checkpoint") or {}))
             if e is not None]
    return max(known, default=None)


def known_pretrain_seed(checkpoint_kind: str | None, seed: int | None) -> int | None:
    """The pretraining seed a result may claim: an imported model's is unknown, whatever its config says
    (the config is ours, rebuilt around weights someone else trained)."""
    return None if checkpoint_kind == "imported" else seed


def unfinished(checkpoint: dict[str, Any]) -> str | None:
    """``"epoch E, step S"`` when the evaluated file is a training checkpoint of a run that had not finished."""
    if checkpoint.get("kind") == "training" and not checkpoint.get("finished", False):
        return f"epoch {checkpoint.get('epoch')}, step {checkpoint.get('step')}"
    return None


def experiment_identity(result: dict[str, Any]) -> dict[str, Any]:
    """Everything that defines the experiment a result belongs to, except its seeds: what D was trained on,
    how and for how long (or which baseline), and how it was evaluated. Two results share a report row only
    when these are equal."""
    config = flat_config(result.get("config", {}))
    checkpoint, baseline = result.get("checkpoint", {}), result.get("baseline")
    identity: dict[str, Any] = {"eval.dataset": result["eval_dataset"], "eval.protocol": result["protocol"],
                                "eval.feature_dim": result["feature_dim"], "baseline": baseline}
    identity.update({k: v for k, v in config.items() if k.split(".")[0] in ("features", "svm")
                     and k not in NOT_EXPERIMENT_KEYS})
    if baseline == "pixels":
        return identity | {k: config.get(k) for k in ("model.image_size", "model.channels")}
    identity.update({k: v for k, v in config.items() if k.startswith("model.")})
    if baseline:
        return identity
    selected_by = checkpoint.get("selected_by", "final")
    identity.update({k: v for k, v in config.items() if k.startswith("train.")
                     and (k not in NOT_EXPERIMENT_KEYS or k in SELECTION_KEYS.get(selected_by, ()))})
    return identity | {"pretrain.dataset": result["pretrain"]["dataset"],
                       "pretrain.epochs_done": result_epochs(result),
                       "pretrain.unfinished": unfinished(checkpoint),
                       "pretrain.selected_by": selected_by}


def read_out(result: dict[str, Any]) -> str:
    """How a result read D's features and scored an image: ``paper`` for the paper's read-out (every block
    max-pooled to one 4x4 grid, one view of each test image), else what differs: the grids, and ``N views`` where
    each image was scored by the mean decision over it and its mirror (``svm.score_hflip``) and shifted copies
    (``svm.score_translate``), and the Fisher vector where ``features.kind`` reads one."""
    if result.get("baseline") == "pixels":
        return "-"
    config = flat_config(result.get("config", {}))
    grids = [config.get("features.grid", 4), *config.get("features.pyramid", ())]
    views = 1 + bool(config.get("svm.score_hflip")) + (
        config.get("svm.train_translate_views", 1) if config.get("svm.score_translate") else 0)
    kind = config.get("features.kind", "pooled")
    if grids == [4] and views == 1 and kind == "pooled":
        return "paper"
    pooled = f"{'+'.join(f'{g}x{g}' for g in grids)} pool"
    features = {"pooled": pooled, "fisher": "Fisher vector"}.get(kind, f"{pooled} + Fisher vector")
    return f"{features}, {views} view{'s' if views > 1 else ''}"


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]


def format_result(result: dict[str, Any]) -> str:
    """The sweep that chose C (or k, for kNN) and the protocol's score, as a small readable table for the console."""
    knn = "chosen_k" in result  # a kNN result chose k where the SVM protocols choose C
    name, chosen = ("k", result["chosen_k"]) if knn else ("C", result["chosen_C"])
    lines = [f"{result['eval_dataset']} ({result['protocol']}), checkpoint {result['checkpoint']['sha256'][:12]}, "
             f"{result['feature_dim']:,} features, seed {result['seed']}",
             f"  {name:>10}  {'val acc':>8}"]
    for row in result["validation"]:
        mark = "  <- chosen on validation" if row[name] == chosen else ""
        value = f"{row[name]:>10d}" if knn else f"{row[name]:>10.0e}"
        lines.append(f"  {value}  {100 * row['val_accuracy']:>7.2f}%{mark}")
    kind = result.get("protocol_kind") or protocol_of(result["protocol"])
    return "\n".join(lines + [f"  {PROTOCOLS[kind].summary(result)}"])
