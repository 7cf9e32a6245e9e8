"""What every analysis needs: a checkpoint's generator and discriminator, sample handles, and figure output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import atomic_path, provenance, read_json, sha256_file, write_json
from ..checkpoint import (
    DISCRIMINATOR_FILE,
    GENERATOR_FILE,
    TRAINING_FILE,
    load_checkpoint,
    load_discriminator,
    load_state,
    resolve_checkpoint,
)
from ..config import Config
from ..errors import UserError
from ..features import FrozenExtractor, PoolingSpec
from ..models import Discriminator, Generator

Z_FILE = "z.npy"  # the z vectors of a numbered sample grid, row i = sample number i
SAMPLES_FILE = "samples.json"


@dataclass(frozen=True)
class Models:
    """G (eval mode) and D (eval mode) of one checkpoint, its config, and the file they came from (no G for an
    analysis of D alone)."""

    generator: Generator | None
    discriminator: Discriminator
    config: Config
    path: Path
    sha256: str


def generator_checkpoint(path: str | Path) -> Path:
    """The file holding a generator: a run directory's ``generator.pt`` (written when it finished), else its
    ``checkpoint.pt`` (the training state), else an imported model's ``discriminator.pt``; a file as it is."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist (give a run directory or a .pt file)")
    if path.is_dir():
        for name in (GENERATOR_FILE, TRAINING_FILE, DISCRIMINATOR_FILE):
            if (path / name).is_file():
                return path / name
        raise UserError(f"run directory {path} holds no {GENERATOR_FILE}, {TRAINING_FILE} or {DISCRIMINATOR_FILE}")
    return path


def load_models(path: str | Path, device: torch.device) -> Models:
    """G and D of a checkpoint with a generator; a clear error for one without (a plain ``discriminator.pt``)."""
    path = generator_checkpoint(path)
    payload = load_checkpoint(path)
    if "generator" not in payload:
        raise UserError(f"{path} holds no generator (a discriminator.pt of a trained run holds D alone); "
                        f"give the run directory, its {GENERATOR_FILE} or its {TRAINING_FILE}")
    discriminator, config = load_discriminator(payload, str(path))
    generator = Generator(config.model)
    load_state(generator, payload["generator"], str(path), "generator")
    return Models(generator.to(device).eval(), discriminator.to(device).eval(), config, path, sha256_file(path))


def load_discriminator_only(path: str | Path, device: torch.device) -> Models:
    """D (eval mode) of a run directory (its final ``discriminator.pt``) or of any checkpoint file, for an
    analysis that needs no generator."""
    path = resolve_checkpoint(path)
    discriminator, config = load_discriminator(load_checkpoint(path), str(path))
    return Models(None, discriminator.to(device).eval(), config, path, sha256_file(path))


@torch.no_grad()
def generate(generator: Generator, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in [-1, 1] for the rows of ``z``, in batches, G in eval mode (its running batch-norm statistics)."""
    device = next(generator.parameters()).device
    return torch.cat([generator(z[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(z), batch_size)])


@torch.no_grad()
def pooled_features(models: Models, images: torch.Tensor) -> torch.Tensor:
    """D's pooled features (the evaluation's spec) of model-range images."""
    extractor = FrozenExtractor(models.discriminator, PoolingSpec.from_config(models.config.features,
                                                                              models.discriminator))
    device = next(models.discriminator.parameters()).device
    return torch.cat([extractor(images[i:i + 256].to(device)).float().cpu() for i in range(0, len(images), 256)])


def read_handles(samples_dir: str | Path, numbers: list[int], what: str = "sample") -> torch.Tensor:
    """The z vectors of the numbered samples in ``samples_dir`` (written by :func:`samples.write_samples`)."""
    path = Path(samples_dir) / Z_FILE
    if not path.is_file():
        raise UserError(f"{samples_dir} holds no {Z_FILE}; make numbered samples first with `analyse samples`")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise UserError(f"{path} is not a readable .npy array; it may be truncated: make the samples again") from None
    if z.ndim != 2 or not np.issubdtype(z.dtype, np.floating):
        raise UserError(f"{path} holds a {z.dtype} array of shape {z.shape}, not one z vector per row")
    if not numbers:
        raise UserError(f"the {what} group is empty: give at least one sample number")
    bad = [n for n in numbers if not 0 <= n < len(z)]
    if bad:
        raise UserError(f"sample number {bad[0]} is out of range: {samples_dir} holds samples 0 to {len(z) - 1}")
    return torch.from_numpy(z[numbers]).float()


def check_handles_match(samples_dir: str | Path, models: Models) -> None:
    """Refuse sample numbers made with another checkpoint: the same z gives other images there."""
    info = Path(samples_dir) / SAMPLES_FILE
    if info.is_file():
        record = read_json(info)
        made_with = record.get("checkpoint_sha256") if isinstance(record, dict) else None
        if not isinstance(record, dict):
            raise UserError(f"{info} is not a samples record (a JSON object)")
        if made_with and made_with != models.sha256:
            raise UserError(f"the samples in {samples_dir} were made with another checkpoint "
                            f"({made_with[:12]}, not {models.sha256[:12]}); make new ones for this checkpoint")


def write_record(path: Path, models: Models, **measured: Any) -> None:
    """An analysis's JSON: what it measured, the checkpoint it used, and its provenance (command, commit, time)."""
    write_json(path, {**measured, "checkpoint": str(models.path), "checkpoint_sha256": models.sha256,
                      **provenance()})


def save_figure(figure, path: Path) -> Path:
    """Write a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def pyplot():
    """matplotlib's pyplot with the file-only backend (no display needed), imported when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_display(images: torch.Tensor) -> np.ndarray:
    """Model-range images (N, C, H, W) -> (N, H, W, C) floats in [0, 1] for imshow (grey images keep 1 channel)."""
    return ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
