"""Walking in the latent space and vector arithmetic on z (Radford et al. 2015, sections 6.1 and 6.3).

A walk interpolates between two z in ``steps`` steps: spherically for Gaussian z (a straight line between two
Gaussian draws passes through norms the prior almost never produces), linearly for uniform z. Its smoothness is
measured per step, in pixels and in D's pooled features: a memorising generator jumps from one training image to
the next, which shows as a step much larger than the others (a large max / mean ratio).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..models import sample_noise
from ..runtime import seeded_generator
from .common import Models, generate, pooled_features, pyplot, save_figure, to_display, write_record


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two vectors at fractions ``t`` (M,) -> (M, dim); linear when they are
    (nearly) parallel, where the spherical formula divides by ~0."""
    cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    if omega.abs() < 1e-4:
        return lerp(z0, z1, t)
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return z0 + t[:, None] * (z1 - z0)


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int, distribution: str) -> torch.Tensor:
    """``steps`` points from z0 to z1, both included: spherical for "normal" z, linear for "uniform"."""
    t = torch.linspace(0, 1, steps)
    return slerp(z0, z1, t) if distribution == "normal" else lerp(z0, z1, t)


def smoothness(sequence: torch.Tensor) -> tuple[list[float], float]:
    """Per step, the mean absolute change between neighbours of a (steps, ...) sequence; and the largest step over
    the mean step (1 for perfectly even steps; large for one sharp transition)."""
    change = (sequence[1:] - sequence[:-1]).flatten(1).abs().mean(1)
    return change.tolist(), float(change.max() / change.mean().clamp_min(1e-12))


def walk(models: Models, endpoints: torch.Tensor, steps: int, out_dir: str | Path, origin: str = "given") -> dict:
    """One row per pair of endpoints (pairs, 2, dim): the grid ``walk.png`` and ``walk.json`` with the smoothness
    per step in pixels and in D's features, per row, and the rows' mean; ``origin`` says where the endpoints came
    from (sample numbers, or the seed they were drawn with)."""
    out_dir = Path(out_dir)
    z = torch.cat([interpolate(a, b, steps, models.config.model.z_distribution) for a, b in endpoints])
    images = generate(models.generator, z)
    features = pooled_features(models, images)
    rows = []
    for r in range(len(endpoints)):
        part = slice(r * steps, (r + 1) * steps)
        pixels, pixel_ratio = smoothness(images[part])
        feats, feature_ratio = smoothness(features[part] / features[part].abs().mean().clamp_min(1e-12))
        rows.append({"pixel_change": pixels, "pixel_max_over_mean": pixel_ratio,
                     "feature_change": feats, "feature_max_over_mean": feature_ratio})
    kind = "spherical" if models.config.model.z_distribution == "normal" else "linear"
    figure_path = _grid(images, len(endpoints), steps, out_dir / "walk.png", f"latent walks, {steps} steps ({kind})")
    summary = {"steps": steps, "rows": len(endpoints), "endpoints": origin, "interpolation": kind,
               "mean_pixel_max_over_mean": float(np.mean([r["pixel_max_over_mean"] for r in rows])),
               "mean_feature_max_over_mean": float(np.mean([r["feature_max_over_mean"] for r in rows])),
               "per_row": rows, "grid": figure_path.name,
               "note": "feature change is measured on features divided by the row's mean absolute feature"}
    write_record(out_dir / "walk.json", models, **summary)
    return summary


def random_endpoints(models: Models, pairs: int, seed: int) -> torch.Tensor:
    """``pairs`` pairs of z drawn with ``seed``: (pairs, 2, dim)."""
    return sample_noise(2 * pairs, models.config.model, seeded_generator(seed, 4)).view(pairs, 2, -1)


def _grid(images: torch.Tensor, rows: int, columns: int, path: Path, title: str) -> Path:
    plt = pyplot()
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 0.8, rows * 0.8), squeeze=False)
    for ax, picture in zip(axes.flat, to_display(images)):
        ax.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(wspace=0.05, hspace=0.05)
    return save_figure(figure, path)


def arithmetic(models: Models, groups: dict[str, torch.Tensor], out_dir: str | Path, seed: int = 0,
               variations: int = 8, noise: float = 0.25) -> dict:
    """Vector arithmetic: mean z of groups A, B and C, then Y = A - B + C, shown as G(Y) and ``variations`` images of
    G(Y + u) with u uniform in [-noise, noise] per coordinate (the paper's figure 7); beside it the same arithmetic
    on the groups' mean images in pixel space. Writes ``arithmetic.png`` and ``arithmetic.json``."""
    out_dir = Path(out_dir)
    means = {name: z.mean(0) for name, z in groups.items()}
    y = means["A"] - means["B"] + means["C"]
    rng = seeded_generator(seed, 5)
    perturbed = y + (torch.rand(variations, y.numel(), generator=rng) * 2 - 1) * noise
    result = generate(models.generator, torch.cat([y[None], perturbed]))
    members = {name: generate(models.generator, z) for name, z in groups.items()}
    centres = generate(models.generator, torch.stack([means[n] for n in "ABC"]))
    mean_images = {name: images.mean(0) for name, images in members.items()}
    pixel_result = (mean_images["A"] - mean_images["B"] + mean_images["C"]).clamp(-1, 1)
    path = _arithmetic_figure(members, centres, result, pixel_result, out_dir / "arithmetic.png")
    summary = {"groups": {name: len(z) for name, z in groups.items()}, "variations": variations,
               "noise": noise, "seed": seed, "figure": path.name}
    write_record(out_dir / "arithmetic.json", models, **summary)
    return {**summary, "result": result}


def _arithmetic_figure(members, centres, result, pixel_result, path: Path) -> Path:
    plt = pyplot()
    width = max(max(len(m) for m in members.values()) + 1, len(result))
    figure, axes = plt.subplots(5, width, figsize=(width * 1.0, 5 * 1.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")

    def show(ax, image, title=""):
        picture = to_display(image[None])[0]
        ax.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=7, pad=1)

    for row, name in enumerate("ABC"):
        for col, image in enumerate(members[name]):
            show(axes[row, col], image, name if col == 0 else "")
        show(axes[row, len(members[name])], centres[row], f"G(mean z {name})")
    show(axes[3, 0], result[0], "G(A - B + C)")
    for col, image in enumerate(result[1:width]):
        show(axes[3, col + 1], image, "+ noise" if col == 0 else "")
    show(axes[4, 0], pixel_result, "pixels: A - B + C")
    figure.suptitle("vector arithmetic on z (rows 1-4) and on mean images (row 5)", fontsize=9)
    return save_figure(figure, path)
