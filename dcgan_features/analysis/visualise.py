"""What D's features respond to (Radford et al. 2015, section 6.2, figure 5): its first layer's filters, and guided
backpropagation (Springenberg et al. 2015) of the most active features of each conv block for real images, for the
trained D beside an untrained D of the same architecture.

Guided backpropagation passes a gradient back through a rectifier only where the forward input was positive and
the gradient itself is positive; D's LeakyReLU is treated as a rectifier for this (its negative slope is what the
method discards).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import to_model_range
from ..models import Discriminator, build_models
from .common import Models, pyplot, save_figure, to_display, write_record


class _GuidedRectifier(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.leaky_relu(x, slope)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0).to(grad.dtype), None


class GuidedLeakyReLU(nn.Module):
    """LeakyReLU forward; guided-backpropagation backward (zero where the input or the gradient is negative)."""

    def __init__(self, slope: float):
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GuidedRectifier.apply(x, self.slope)


def guided_copy(discriminator: Discriminator) -> Discriminator:
    """A copy of D in eval mode whose LeakyReLUs backpropagate the guided way; D itself is left alone."""
    guided = copy.deepcopy(discriminator).eval()
    for module in guided.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.LeakyReLU):
                setattr(module, name, GuidedLeakyReLU(child.negative_slope))
    return guided


def guided_backprop(discriminator: Discriminator, images: torch.Tensor, features_per_block: int = 6) -> dict:
    """For each conv block: its ``features_per_block`` channels with the largest activation over ``images``
    (model range), each with the guided gradient of its largest activation w.r.t. the image that produced it.
    Returns {block: [(channel, image index, gradient (C, H, W)), ...]}."""
    guided = guided_copy(discriminator)
    images = images.to(next(guided.parameters()).device)  # on D's device; the gradients come back to the CPU
    out = {}
    for block in guided.block_shapes:
        with torch.no_grad():
            acts = guided.block_outputs(images, (block,))[block]  # (N, C, H, W)
        peak = acts.flatten(2).amax(2)  # (N, C): each channel's largest response per image
        channels = peak.amax(0).topk(min(features_per_block, peak.shape[1])).indices
        found = []
        for channel in channels.tolist():
            index = int(peak[:, channel].argmax())
            x = images[index:index + 1].clone().requires_grad_(True)
            guided.block_outputs(x, (block,))[block][0, channel].max().backward()
            found.append((channel, index, x.grad[0].detach().cpu()))
        out[block] = found
    return out


def _gradient_picture(gradient: torch.Tensor):
    g = gradient - gradient.mean()
    g = g / g.std().clamp_min(1e-12) * 0.15 + 0.5
    picture = g.clamp(0, 1).permute(1, 2, 0).numpy()
    return picture.squeeze(-1) if picture.shape[-1] == 1 else picture


def first_layer_filters(discriminator: Discriminator, path: Path) -> Path:
    """conv1's filters as a grid of small images, each scaled to [0, 1] on its own."""
    plt = pyplot()
    weight = next(m for m in discriminator.blocks["conv1"].modules() if isinstance(m, nn.Conv2d)).weight.detach().cpu()
    columns = 16
    rows = -(-len(weight) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 0.45, rows * 0.45), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, w in zip(axes.flat, weight):
        w = (w - w.min()) / (w.max() - w.min()).clamp_min(1e-12)
        picture = w.permute(1, 2, 0).numpy()
        ax.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", interpolation="nearest")
    figure.suptitle(f"conv1 filters ({weight.shape[1]}x{weight.shape[2]}x{weight.shape[3]})", fontsize=9)
    return save_figure(figure, path)


def visualise(models: Models, real_images: torch.Tensor, out_dir: str | Path, seed: int = 0,
              features_per_block: int = 6) -> dict:
    """``filters.png`` (trained D's first layer; ``filters_untrained.png`` beside it) and ``guided_backprop.png``:
    per block, the guided gradients of its most active features for ``real_images`` (uint8), trained D on the
    left, an untrained D of the same architecture (seeded with ``seed``) on the right."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    device = next(models.discriminator.parameters()).device  # the analysis runs where --device put the models
    untrained = build_models(models.config.model)[1].eval().to(device)
    images = to_model_range(real_images)
    maps = {"trained": guided_backprop(models.discriminator, images, features_per_block),
            "untrained": guided_backprop(untrained, images, features_per_block)}
    filters = first_layer_filters(models.discriminator, out_dir / "filters.png")
    first_layer_filters(untrained, out_dir / "filters_untrained.png")
    figure = _guided_figure(maps, images, out_dir / "guided_backprop.png")
    summary = {"images": len(real_images), "features_per_block": features_per_block, "seed": seed,
               "features": {kind: {block: [{"channel": c, "image": i} for c, i, _ in found]
                                   for block, found in per_block.items()} for kind, per_block in maps.items()},
               "figures": [filters.name, "filters_untrained.png", figure.name]}
    write_record(out_dir / "visualise.json", models, **summary)
    return summary


def _guided_figure(maps: dict, images: torch.Tensor, path: Path) -> Path:
    """One row per (block, D): each most active feature's guided gradient beside the real image it explains."""
    plt = pyplot()
    blocks = list(maps["trained"])
    per_block = max(len(found) for found in maps["trained"].values())
    rows = [(block, kind) for block in blocks for kind in ("trained", "untrained")]
    figure, axes = plt.subplots(len(rows), 2 * per_block, figsize=(2 * per_block * 1.25, len(rows) * 1.45),
                                squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    shown = to_display(images.cpu())
    for r, (block, kind) in enumerate(rows):
        for c, (channel, index, gradient) in enumerate(maps[kind][block]):
            real, explained = axes[r, 2 * c], axes[r, 2 * c + 1]
            real.imshow(shown[index].squeeze(-1) if shown.shape[-1] == 1 else shown[index], cmap="gray",
                        interpolation="nearest")
            real.set_title(f"image {index}", fontsize=8, pad=2)
            explained.imshow(_gradient_picture(gradient), cmap="gray", interpolation="nearest")
            explained.set_title(f"{block}:{channel}", fontsize=8, pad=2)
        axes[r, 0].text(-0.12, 0.5, f"{kind} D\n{block}", transform=axes[r, 0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=9, fontweight="bold" if kind == "trained" else "normal")
    figure.suptitle("guided backpropagation of each block's most active features: the real image, then what the "
                    "feature responds to in it (trained D and an untrained D of the same architecture)", fontsize=11)
    figure.tight_layout(rect=(0.02, 0, 1, 0.97))
    return save_figure(figure, path)
