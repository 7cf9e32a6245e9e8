"""Numbered samples with handles: a grid of generated images, each labelled with its number, and their z vectors
saved beside it (``z.npy``, row i = sample i), so that later commands can name samples by number."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..artifacts import atomic_path
from ..errors import UserError
from ..models import sample_noise
from ..runtime import seeded_generator
from .common import SAMPLES_FILE, Z_FILE, Models, generate, pyplot, save_figure, to_display, write_record


def numbered_grid(images: torch.Tensor, numbers: list[int], path: Path, columns: int | None = None,
                  title: str = "") -> Path:
    """A grid of images, each titled with its number."""
    plt = pyplot()
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 0.9, rows * 1.0), squeeze=False)
    pictures = to_display(images)
    for ax in axes.flat:
        ax.axis("off")
    for ax, picture, number in zip(axes.flat, pictures, numbers):
        ax.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
        ax.set_title(str(number), fontsize=7, pad=1)
    if title:
        figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def write_samples(models: Models, n: int, seed: int, out_dir: str | Path) -> dict:
    """``n`` samples from z drawn with ``seed``: ``samples.png`` (numbered), ``z.npy`` and ``samples.json``."""
    if n < 1:
        raise UserError("--n must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    z = sample_noise(n, models.config.model, seeded_generator(seed, 3))
    images = generate(models.generator, z)
    grid = numbered_grid(images, list(range(n)), out_dir / "samples.png",
                         title=f"{n} samples, seed {seed} (numbers are handles for walk / arithmetic)")
    with atomic_path(out_dir / Z_FILE) as tmp, open(tmp, "wb") as stream:
        np.save(stream, z.numpy(), allow_pickle=False)
    record = {"n": n, "seed": seed, "z_distribution": models.config.model.z_distribution, "grid": grid.name,
              "z": Z_FILE}
    write_record(out_dir / SAMPLES_FILE, models, **record)
    return record
