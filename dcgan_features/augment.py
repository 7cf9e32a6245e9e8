"""Differentiable augmentation of D's inputs (DiffAugment; Zhao et al. 2020, "Differentiable Augmentation for
Data-Efficient GAN Training").

The same random transformations are applied to real and generated images every time D sees them, in D's update
and in G's, and they are differentiable in the image, so G is trained through them. D then learns from mirrored,
translated, cut-out and recoloured images without G learning to produce them. Every draw comes from the
``torch.Generator`` passed in (the run's checkpointed noise generator), so a resumed run replays the same
augmentations.

A policy is a tuple of names from :data:`AUGMENTATIONS`, applied in that order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import UserError


def _uniform(n: int, rng: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    """n draws from U[0, 1) shaped (n, 1, 1, 1), drawn on the generator's device and moved to x's."""
    return torch.rand(n, 1, 1, 1, generator=rng).to(device=x.device, dtype=x.dtype)


def coin(x: torch.Tensor, rng: torch.Generator, p: float) -> torch.Tensor:
    """One biased coin per image of x: a bool mask (n, 1, 1, 1) on x's device, True with probability p.
    Drawn and compared in float32 whatever x's dtype, so a bfloat16 batch gets the same probability."""
    return (torch.rand(x.shape[0], 1, 1, 1, generator=rng) < p).to(x.device)


def color(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0 to x2) and contrast (x0.5 to x1.5) per image, in [-1, 1] units."""
    n = x.shape[0]
    x = x + (_uniform(n, rng, x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(n, rng, x) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(n, rng, x) + 0.5) + mean


def flip(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Mirror each image left to right with probability 1/2 (AFV's flips of real and generated images alike;
    ``train.mirror_real`` flips real images only, and before D's update rather than inside it)."""
    return torch.where(coin(x, rng, 0.5), x.flip(3), x)


def translation(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size in each direction, filling with zeros."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (n, 1, 1), generator=rng).to(x.device)
    dx = torch.randint(-sx, sx + 1, (n, 1, 1), generator=rng).to(x.device)
    # Row/column of the zero-padded image that lands at each output pixel: (n, h, w) index grids.
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy + sy).expand(n, h, w)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx + sx).expand(n, h, w)
    padded = F.pad(x, [sx, sx, sy, sy]).permute(0, 2, 3, 1)  # (n, h + 2sy, w + 2sx, c)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2)  # (n, c, h, w)


def cutout(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of ``ratio`` of the image's size per image, centred anywhere (it may be clipped)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=rng).to(x.device) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=rng).to(x.device) - cw // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)  # (n, h, w)
    return x * (~inside).unsqueeze(1).to(x.dtype)


SHIFT_CHUNK = 4096  # part of what a shifted copy is: the draws are made chunk by chunk


def shifted_copy(images: torch.Tensor, max_shift: int, seed: int) -> torch.Tensor:
    """``images`` (N, C, H, W) each shifted by up to ``max_shift`` pixels in each direction (zero-filled), drawn
    from a generator seeded with ``seed``, in fixed chunks of :data:`SHIFT_CHUNK` images (to bound the index
    grids' memory): the SVM's shifted fitting views (``svm.train_translate``), the same for the same images and
    seed, so their features are cached."""
    if not 0 <= max_shift < min(images.shape[-2:]):
        raise UserError(f"svm.train_translate must be below the image size ({min(images.shape[-2:])}), got {max_shift}")
    rng = torch.Generator().manual_seed(seed)
    ratio = max_shift / images.shape[-1]  # translation() turns it back into max_shift pixels (square images)
    return torch.cat([translation(part, rng, ratio) for part in images.split(SHIFT_CHUNK)]).contiguous()


AUGMENTATIONS = {"color": color, "flip": flip, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], rng: torch.Generator) -> torch.Tensor:
    """``x`` (N, C, H, W) in [-1, 1] with every augmentation of ``policy`` applied, in order (identity if empty)."""
    for name in policy:
        x = AUGMENTATIONS[name](x, rng)
    return x
