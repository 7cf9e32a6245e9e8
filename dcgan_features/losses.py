"""GAN losses and the self-supervised rotation task on D.

* ``bce``: the paper's loss; D minimises the binary cross-entropy of real -> 1, fake -> 0, and G the
  non-saturating -log D(G(z)).
* ``hinge``: D minimises mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))), G minimises -mean(D(G(z)))
  (Lim & Ye 2017; Miyato et al. 2018, with spectral normalisation).
* Rotation (Chen et al. 2019, "Self-Supervised GANs via Auxiliary Rotation Loss"): D also predicts which of four
  rotations (0, 90, 180, 270 degrees) was applied to a real image, from its last feature map, through a head of its
  own. The task asks D for features that know an object's orientation, which GAN training alone does not, and is
  meant to keep D from forgetting what it learnt as G's distribution moves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError


def _bce_d(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real)) + \
        F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))


def _hinge_d(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


# name -> (D's loss on real and fake logits, G's loss on fake logits); keyed by config.GAN_LOSSES (tested).
LOSSES = {
    "bce": (_bce_d, lambda logits_fake: F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))),
    "hinge": (_hinge_d, lambda logits_fake: -logits_fake.mean()),
}


def _loss(kind: str):
    if kind not in LOSSES:
        raise UserError(f"unknown GAN loss {kind!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[kind]


def discriminator_loss(kind: str, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """D's loss for one real and one fake batch (float32 logits)."""
    return _loss(kind)[0](logits_real, logits_fake)


def generator_loss(kind: str, logits_fake: torch.Tensor) -> torch.Tensor:
    """G's loss on D's logits for its samples (float32)."""
    return _loss(kind)[1](logits_fake)


class RotationHead(nn.Module):
    """D's last feature map (N, C, S, S) -> four rotation logits (N, 4): a linear read-out written as a convolution
    whose kernel covers the map, like D's real/fake head. Trained with D; not part of the extracted features."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.classify = nn.Conv2d(channels, 4, size, 1, 0, bias=True)
        nn.init.normal_(self.classify.weight, 0.0, 0.02)
        nn.init.zeros_(self.classify.bias)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.classify(feature_map).flatten(1)


def rotate(images: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image turned by a random multiple of 90 degrees (drawn from ``rng``), and that multiple (0..3)."""
    turns = torch.randint(0, 4, (images.shape[0],), generator=rng).to(images.device)
    rotated = images.clone()
    for k in range(1, 4):
        rows = turns == k
        rotated[rows] = torch.rot90(images[rows], k, dims=(2, 3))
    return rotated, turns


def rotation_loss(discriminator: nn.Module, head: RotationHead, real: torch.Tensor,
                  rng: torch.Generator) -> torch.Tensor:
    """Cross-entropy of D's rotation prediction on randomly rotated real images (float32)."""
    rotated, turns = rotate(real, rng)
    return F.cross_entropy(head(discriminator.trunk(rotated)).float(), turns)
