"""Does G copy its training images? (Radford et al. 2015, section 6.1 argue it does not.)

Generated samples are compared with their nearest training image, in pixels and in D's pooled features
(standardised with the training images' statistics), and so are held-out real images (the test split's images; its
labels are never read). Held-out images are what "new images from the same distribution" look like: the number
reported is the fraction of generated samples nearer to a training image than the ``percentile``-th percentile of
the held-out images' nearest distances. A generator that reproduces training images scores near 1; one that
produces new images scores near or below ``percentile`` / 100, as the held-out images do by construction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import ImageSet, to_model_range
from ..features import FrozenExtractor, PoolingSpec, extract
from ..models import sample_noise
from ..runtime import seeded_generator
from .common import Models, generate, pooled_features, pyplot, save_figure, to_display, write_record

FLAG_FRACTION = 0.25  # a generator with more of its samples that close to training images is flagged


def nearest(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each query row to its nearest row of ``bank``, and that row's index."""
    best = torch.full((len(queries),), float("inf"))
    index = torch.zeros(len(queries), dtype=torch.long)
    for start in range(0, len(bank), chunk):
        distances = torch.cdist(queries, bank[start:start + chunk])
        value, where = distances.min(dim=1)
        better = value < best
        best[better], index[better] = value[better], where[better] + start
    return best, index


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 or model-range images -> (N, C*H*W) float32 in [-1, 1]."""
    x = to_model_range(images) if images.dtype == torch.uint8 else images
    return x.flatten(1).float()


def memorisation_check(models: Models, train: ImageSet, held_out: ImageSet, n: int, seed: int,
                       out_dir: str | Path, percentile: float = 5.0, device: torch.device | None = None,
                       generated: torch.Tensor | None = None) -> dict:
    """Measure and draw the check for ``n`` samples (or the model-range images ``generated``, for tests) and the
    first ``n`` held-out images; writes ``memorisation.png`` and ``memorisation.json``."""
    out_dir = Path(out_dir)
    device = device or torch.device("cpu")
    if generated is None:
        generated = generate(models.generator, sample_noise(n, models.config.model, seeded_generator(seed, 6)))
    held = held_out.images[:n]
    spaces = {"pixels": (_pixels(train.images), _pixels(generated), _pixels(held))}
    extractor = FrozenExtractor(models.discriminator, PoolingSpec.from_config(models.config.features,
                                                                              models.discriminator))
    bank = torch.from_numpy(extract(extractor, train.images, 256, device))
    mean, std = bank.mean(0), bank.std(0).clamp_min(1e-6)
    fake = pooled_features(models, generated)
    spaces["features"] = ((bank - mean) / std, (fake - mean) / std,
                          (torch.from_numpy(extract(extractor, held, 256, device)) - mean) / std)
    measured, neighbours = {}, {}
    for space, (bank_x, fake_x, held_x) in spaces.items():
        d_fake, neighbours[space] = nearest(fake_x, bank_x)
        d_held, _ = nearest(held_x, bank_x)
        threshold = float(np.percentile(d_held.numpy(), percentile))
        measured[space] = {"fraction_nearer_than_held_out": float((d_fake < threshold).float().mean()),
                           "threshold": threshold, "median_generated": float(d_fake.median()),
                           "median_held_out": float(d_held.median())}
    flagged = any(m["fraction_nearer_than_held_out"] > FLAG_FRACTION for m in measured.values())
    figure = _figure(generated, train.images, neighbours, out_dir / "memorisation.png")
    summary = {"n_generated": len(generated), "seed": seed, "n_held_out": len(held), "n_train": len(train),
               "percentile": percentile, "flag_fraction": FLAG_FRACTION, "flagged": flagged, **measured,
               "held_out": f"{held_out.name} {held_out.split} images (labels not read)", "figure": figure.name}
    write_record(out_dir / "memorisation.json", models, **summary)
    return summary


def _figure(generated: torch.Tensor, train_images: torch.Tensor, neighbours: dict, path: Path, shown: int = 12) -> Path:
    plt = pyplot()
    shown = min(shown, len(generated))
    figure, axes = plt.subplots(3, shown, figsize=(shown * 0.9, 3 * 1.0), squeeze=False)
    rows = [("generated", generated[:shown])]
    for space, index in neighbours.items():
        rows.append((f"nearest train ({space})", to_model_range(train_images[index[:shown]])))
    for r, (label, images) in enumerate(rows):
        for c, picture in enumerate(to_display(images)):
            ax = axes[r, c]
            ax.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    figure.suptitle("generated samples and their nearest training images", fontsize=9)
    return save_figure(figure, path)
