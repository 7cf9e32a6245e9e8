"""The checkpoint format: one dict of tensors and plain data, written atomically and read with
``torch.load(..., weights_only=True)`` so that a checkpoint from a stranger cannot run code.

Three kinds share the format:

* ``training`` (``RUN/checkpoint.pt`` and ``RUN/checkpoints/epoch_NNN.pt``): G, D, both optimisers,
  the position in training, RNG states, the fixed sample noise and the whole config;
* ``discriminator`` (``RUN/discriminator.pt``, written when a run finishes): D's weights and the
  config only, the small file that ``evaluate`` needs and that results cite by sha256;
* ``generator`` (``RUN/generator.pt``, written beside it): G and the final D with the config, what the analyses
  (``dcgan-features analyse``) need without the optimisers' state.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .artifacts import atomic_path
from .config import Config
from .errors import UserError
from .models import Discriminator

FORMAT = "dcgan-features/checkpoint/v1"
TRAINING_FILE = "checkpoint.pt"
DISCRIMINATOR_FILE = "discriminator.pt"
GENERATOR_FILE = "generator.pt"
BEST_PROBE_FILE = "discriminator_best_probe.pt"  # the D with the best online probe (train.probe_every)
EMA_FILE = "discriminator_ema.pt"  # the moving average of D's weights (train.ema_decay)
# --select: the file of a run directory each choice other than "final" reads, and what must be on to write it
SELECTED_FILES = {"best-probe": (BEST_PROBE_FILE, "train.probe_every, or its first probe has not run yet"),
                  "ema": (EMA_FILE, "train.ema_decay, or it has not finished")}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (already holding ``kind``) atomically: readers see the old file or the new one.

    Serialised through a buffer because torch.save names the archive's records after the file it
    writes, and the temporary name is random. Equal weights still need not give equal bytes: torch
    writes a random serialization id, and payloads carry provenance timestamps. A sha256 names a file."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint file with ``weights_only=True``; refuse anything else clearly."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reasons = [line.strip() for line in str(exc).splitlines() if "Unsupported" in line]
        reason = reasons[0].split(". Please")[0][:200] if reasons else "an object weights_only loading does not allow"
        raise UserError(f"refusing checkpoint {path}: it holds more than tensors and plain data ({reason}); "
                        "nothing in it was run") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}); "
                        "use an earlier checkpoint of the run") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a dcgan-features checkpoint (no '{FORMAT}' format tag)")
    if "config" not in payload or "discriminator" not in payload:
        raise UserError(f"checkpoint {path} lacks its config or discriminator weights")
    return payload


def resolve_checkpoint(path: str | Path, select: str = "final") -> Path:
    """A run directory means its ``discriminator.pt`` if finished, else its latest ``checkpoint.pt``; with
    ``select="best-probe"``, the D its online probe scored best (``discriminator_best_probe.pt``); with
    ``select="ema"``, the moving average of its D (``discriminator_ema.pt``)."""
    path = Path(path)
    if select in SELECTED_FILES:
        name, needs = SELECTED_FILES[select]
        if not path.is_dir():
            raise UserError(f"--select {select} picks a file of a run directory; give the run directory, or the "
                            f"{name} file itself without --select")
        if not (path / name).is_file():
            raise UserError(f"run directory {path} holds no {name}: it was trained without {needs}; "
                            "evaluate its final D (--select final)")
        return path / name
    if path.is_dir():
        for name in (DISCRIMINATOR_FILE, TRAINING_FILE):
            if (path / name).is_file():
                return path / name
        raise UserError(f"run directory {path} holds no {DISCRIMINATOR_FILE} or {TRAINING_FILE}")
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist (give a run directory or a .pt file)")
    return path


def config_of(payload: dict[str, Any], source: str) -> Config:
    return Config.from_dict(payload["config"], f"config stored in {source}")


def load_discriminator(payload: dict[str, Any], source: str) -> tuple[Discriminator, Config]:
    """Rebuild D from the checkpoint's own config and load its weights strictly."""
    config = config_of(payload, source)
    model = Discriminator(config.model)
    load_state(model, payload["discriminator"], source, "discriminator")
    return model, config


def load_state(module: torch.nn.Module, state: dict, source: str, part: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error when the shapes or names disagree."""
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as exc:
        detail = str(exc).strip().splitlines()[-1].strip()[:200]
        raise UserError(f"checkpoint {source}: the {part} weights do not fit this architecture ({detail})") from None
