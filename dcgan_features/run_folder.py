"""The run folder of ``pretrain``: made, or checked against the config it was started with before a run resumes
in it (see ``train`` for what it holds). Nothing here trains; every check runs before a file is written, so a
refused command leaves the folder as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

from .artifacts import read_json, write_json
from .checkpoint import (
    BEST_PROBE_FILE,
    DISCRIMINATOR_FILE,
    EMA_FILE,
    GENERATOR_FILE,
    TRAINING_FILE,
    config_of,
    load_checkpoint,
)
from .config import Config, TrainConfig
from .errors import UserError
from .runlock import LOCK_FILE
from .training_state import SPEED_KEYS


def check_run_folder(run_dir: Path) -> None:
    """Refuse, before the lock file is put there, a folder that holds something other than a run."""
    if (run_dir / "config.json").exists() or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run folder; choose a new --out")
    if any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise UserError(f"{run_dir} exists and is not a dcgan-features run; choose a new --out")


def prepare_run(run_dir: Path, config: Config, force: bool) -> dict | None:
    """Create the run directory or check that ``config`` matches the run already in it.

    Returns the checkpoint payload to resume from, or None for a fresh run."""
    config_path = run_dir / "config.json"
    if force and config_path.exists():
        for name in (TRAINING_FILE, DISCRIMINATOR_FILE, GENERATOR_FILE, BEST_PROBE_FILE, EMA_FILE, "metrics.jsonl",
                     "config.json"):
            (run_dir / name).unlink(missing_ok=True)
        for name in ("checkpoints", "samples"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    if config_path.exists():
        stored = config_of({"config": read_json(config_path)}, str(config_path))
        # The epoch count and its decay may change: check_schedule_so_far refuses any change to the learning rate
        # of an epoch already begun, so an extended run (even one given a decay) equals a run started that way.
        changed = _changed_keys(stored, config, ignore={"train.epochs", "train.lr_decay_epochs", "train.device",
                                                        "data.root", *SPEED_KEYS},
                                ignore_sections={"features", "svm"})  # evaluation settings, not training
        if changed:
            raise UserError(f"run {run_dir} was started with a different config ({', '.join(changed)}); "
                            "resume it unchanged, choose a new --out, or pass --force to start over")
    check_run_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*run_dir.glob(".*.tmp"), *run_dir.glob("checkpoints/.*.tmp")]:
        stale.unlink()  # left by a process killed mid-write; the file it was replacing is intact
    payload = load_checkpoint(run_dir / TRAINING_FILE) if (run_dir / TRAINING_FILE).exists() else None
    if payload is not None:
        check_training_payload(payload, run_dir / TRAINING_FILE)
        check_schedule_so_far(config_of(payload, str(run_dir / TRAINING_FILE)).train, config.train,
                              payload["epoch"] + (payload["step"] > 0), run_dir)
    write_json(config_path, config.to_dict())  # only now: a refused resume leaves the run as it was
    return payload


def check_training_payload(payload: dict, path: Path) -> None:
    """Refuse to resume from a file that is not a whole training state (a D or G file copied over it, say)."""
    missing = [k for k in ("generator", "opt_g", "opt_d", "epoch", "step", "global_step", "rng", "fixed_noise")
               if k not in payload]
    if payload.get("kind") != "training" or missing:
        raise UserError(f"{path} is not a training checkpoint (kind {payload.get('kind')!r}"
                        f"{', lacking ' + ', '.join(missing) if missing else ''}); it cannot be resumed: move it "
                        f"away, or restore the run's checkpoints/epoch_NNN.pt as {TRAINING_FILE}")


def check_schedule_so_far(trained: TrainConfig, wanted: TrainConfig, epochs_begun: int, run_dir: Path) -> None:
    """The learning rate is a function of (epoch, final epoch count, decay length). A run whose epoch count or decay
    changes (``--epochs``, ``train.lr_decay_epochs``) continues exactly as a run started with the new values would,
    provided the epochs it has begun had the same learning rate under both; otherwise (the new schedule would change
    an epoch already begun) it is refused, never restarted silently."""
    changed = [e for e in range(min(epochs_begun, wanted.epochs)) if trained.lr_at(e) != wanted.lr_at(e)]
    if changed:
        raise UserError(
            f"run {run_dir} has begun {epochs_begun} of {trained.epochs} epochs, whose learning rate decays over the "
            f"last {trained.lr_decay_epochs} (from epoch {trained.epochs - trained.lr_decay_epochs + 1}); "
            f"{wanted.epochs} epochs would give epoch {changed[0] + 1}, already begun, another learning rate. "
            "Start a new run (--out) or --force this one")


def _changed_keys(old: Config, new: Config, ignore: set[str], ignore_sections: set[str]) -> list[str]:
    a, b = old.to_dict(), new.to_dict()
    keys = [f"{s}.{k}" for s in a if s not in ignore_sections for k in a[s] if a[s][k] != b[s][k]]
    return [f"{k}: {_get(a, k)!r} -> {_get(b, k)!r}" for k in keys if k not in ignore]


def _get(d: dict, dotted: str):
    section, key = dotted.split(".")
    return d[section][key]
