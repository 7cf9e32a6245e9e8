"""A contrastive term on D's real images: SimCLR's NT-Xent loss on two strongly augmented views of each real image,
as ContraD's real-image term (Jeong & Shin 2021, "Training GANs with Stronger Augmentations via Contrastive
Discriminator"; Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Each real image of D's batch is augmented twice with SimCLR's recipe (a random resized crop, a flip, colour jitter
with probability 0.8, grey with probability 0.2); both views pass through D's trunk and a projection head of their
own, and D learns to pick each view's partner among the batch's other 2N - 1 views. Unlike ContraD, whose real/fake
head reads a stop-gradient of the contrastive representation, the term is added to D's GAN loss
(``train.contrastive_weight``), as the rotation task is, so both shape D's features. The head is trained with D and
is not part of the extracted features. Every draw comes from the run's checkpointed noise generator, so a resumed
run replays the same views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .augment import coin, color, flip

PROJECTION_DIM = 128  # SimCLR's and ContraD's


class ProjectionHead(nn.Module):
    """D's last feature map (N, C, S, S) -> unit-length projections (N, 128): global average pool, then SimCLR's
    two-layer MLP."""

    def __init__(self, channels: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True),
                                     nn.Linear(channels, PROJECTION_DIM))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(feature_map.float().mean(dim=(2, 3))), dim=1)


def _uniform(n: int, rng: torch.Generator, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=rng)


def resized_crop(x: torch.Tensor, rng: torch.Generator, min_area: float = 0.2) -> torch.Tensor:
    """Each image's random crop (``min_area`` to all of its area, aspect ratio 3/4 to 4/3, anywhere inside it)
    resized back to the image's size, bilinearly (SimCLR's CIFAR-10 crop, scale (0.2, 1))."""
    n = x.shape[0]
    area = _uniform(n, rng, min_area, 1.0)
    log_ratio = _uniform(n, rng, math.log(3 / 4), math.log(4 / 3))
    # Half-widths of the crop in grid units ([-1, 1] spans the image), clipped to the image.
    width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    centre_x = (1 - width) * _uniform(n, rng, -1.0, 1.0)
    centre_y = (1 - height) * _uniform(n, rng, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width, centre_x, height, centre_y
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def strong_view(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """One SimCLR view of each image (N, C, H, W) in [-1, 1]: crop, flip, colour jitter (p 0.8), grey (p 0.2)."""
    x = flip(resized_crop(x, rng), rng)
    x = torch.where(coin(x, rng, 0.8), color(x, rng), x)
    return torch.where(coin(x, rng, 0.2), x.mean(dim=1, keepdim=True).expand_as(x), x)


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for N pairs of unit-length projections (N, d): each of the 2N views classifies its partner
    among the other 2N - 1 by cosine similarity over ``temperature`` (float32)."""
    z = torch.cat([first, second]).float()
    similarity = (z @ z.T) / temperature
    similarity.fill_diagonal_(float("-inf"))  # a view is never its own partner
    n = first.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


def contrastive_loss(discriminator: nn.Module, head: ProjectionHead, real: torch.Tensor, rng: torch.Generator,
                     temperature: float) -> torch.Tensor:
    """NT-Xent of D's projections of two strong views of each real image, both views in one batch (so batch norm
    normalises over both, as SimCLR's does)."""
    views = torch.cat([strong_view(real, rng), strong_view(real, rng)])
    first, second = head(discriminator.trunk(views)).chunk(2)
    return nt_xent(first, second, temperature)
