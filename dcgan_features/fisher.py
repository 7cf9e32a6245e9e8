"""Adversarial Fisher vectors (Zhai et al., NeurIPS 2019): an image's feature is the gradient of D's output with
respect to D's weights, centred and scaled coordinate by coordinate by the gradient's mean and spread over images
drawn from the run's G (the diagonal Fisher information of the model distribution), then reduced to a fixed
dimension. ``features.kind = "fisher"`` or ``"pooled+fisher"`` (config.FeatureConfig) selects it.

The reduction keeps every coordinate's information where memory allows it: a signed CountSketch per parameter tensor
(coordinate i adds sign(i) * value to bucket(i); inner products are unbiased, with a variance of at most
2 |a|^2 |b|^2 / m), seeded so every image of every split meets the same sketch; ``"stride"``, every k-th coordinate
of the concatenated gradient (AFV's ``--sample``), is the baseline.

Per-image gradients are exact: ``torch.func.vmap`` over ``torch.func.grad`` of D in eval mode, a batch at a time.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .checkpoint import GENERATOR_FILE, load_checkpoint, load_state
from .config import Config, FeatureConfig
from .errors import UserError
from .features import FrozenExtractor
from .models import Discriminator, Generator, sample_noise
from .runtime import seeded_generator

SKETCH_SEED = 0  # the sketch and the generated images are fixed, so features never depend on the evaluation seed
MOMENT_BATCH = 64  # images whose gradients are held at once (about 64 x 1.3M floats for the default D)


def per_example_gradients(discriminator: Discriminator, images: torch.Tensor, output: str) -> dict[str, torch.Tensor]:
    """``{name: (N, *shape)}``: for every image, the gradient of D's ``output`` ("logit" or "sigmoid") with respect
    to each of D's parameters, with D in eval mode (batch norm reads its running statistics, so one image's
    gradient never depends on the others in its batch)."""
    params = {name: p.detach() for name, p in discriminator.named_parameters()}
    buffers = {name: b.detach() for name, b in discriminator.named_buffers()}

    def score(weights: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        logit = functional_call(discriminator, (weights, buffers), (image.unsqueeze(0),))[0]
        return torch.sigmoid(logit) if output == "sigmoid" else logit

    was_training = discriminator.training
    discriminator.eval()
    try:
        return vmap(grad(score), in_dims=(None, 0))(params, images)
    finally:
        discriminator.train(was_training)


class Reducer(nn.Module):
    """Maps each parameter's (N, n_i) gradient rows to (N, m_i) and concatenates them: a signed CountSketch with
    m_i in proportion to n_i (at least 1; ``dim`` in all when there are fewer tensors than that), or every k-th
    coordinate of the concatenated gradient (``"stride"``, k = ceil(n / dim), so at most ``dim`` in all)."""

    def __init__(self, sizes: dict[str, int], dim: int, method: str, seed: int = SKETCH_SEED):
        super().__init__()
        self.names, self.method, total = list(sizes), method, sum(sizes.values())
        if method == "stride":
            step, offset = math.ceil(total / dim), 0
            for i, n in enumerate(sizes.values()):  # the global positions 0, step, 2 step, ... in this tensor
                start = (-offset) % step  # may lie beyond a small tensor: then none of it is kept
                self.register_buffer(f"index{i}", torch.arange(min(start, n), n, step))
                offset += n
        else:
            # one bucket each, and the rest in proportion to size by rounded running totals: dim in all
            rng, seen, rest = seeded_generator(seed, 3), 0, max(dim - len(sizes), 0)
            for i, n in enumerate(sizes.values()):
                m = 1 + round(rest * (seen + n) / total) - round(rest * seen / total)
                seen += n
                self.register_buffer(f"bucket{i}", torch.randint(m, (n,), generator=rng))
                self.register_buffer(f"sign{i}", torch.randint(2, (n,), generator=rng).float() * 2 - 1)
                self.register_buffer(f"width{i}", torch.tensor(m))

    def forward(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for i, name in enumerate(self.names):
            flat = rows[name].flatten(1)
            if self.method == "stride":
                parts.append(flat[:, getattr(self, f"index{i}")])
                continue
            sketch = flat.new_zeros(len(flat), int(getattr(self, f"width{i}")))
            parts.append(sketch.index_add_(1, getattr(self, f"bucket{i}"), flat * getattr(self, f"sign{i}")))
        return torch.cat(parts, dim=1)


@torch.no_grad()
def generated_moments(discriminator: Discriminator, generator: Generator, cfg: FeatureConfig, model_cfg,
                      device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The per-coordinate mean and standard deviation of D's gradient over ``cfg.fisher_samples`` images drawn
    from G (eval mode, fixed noise): statistics of the model's distribution, never of the data's."""
    noise = sample_noise(cfg.fisher_samples, model_cfg, seeded_generator(SKETCH_SEED, 4))
    generator = generator.to(device).eval()
    total, squares = {}, {}
    for start in range(0, len(noise), MOMENT_BATCH):
        images = generator(noise[start:start + MOMENT_BATCH].to(device))
        for name, g in per_example_gradients(discriminator, images, cfg.fisher_output).items():
            g = g.double()
            total[name] = total.get(name, 0) + g.sum(0)
            squares[name] = squares.get(name, 0) + (g * g).sum(0)
    n = len(noise)
    mean = {name: (s / n) for name, s in total.items()}
    std = {name: (squares[name] / n - mean[name] ** 2).clamp_min(0).sqrt() for name in total}
    return {k: v.float() for k, v in mean.items()}, {k: v.float() for k, v in std.items()}


class FisherExtractor(nn.Module):
    """Images -> Fisher vectors of D (and, for ``pooled+fisher``, the pooled grid's features before them)."""

    def __init__(self, discriminator: Discriminator, mean: dict[str, torch.Tensor], std: dict[str, torch.Tensor],
                 cfg: FeatureConfig, pooled: FrozenExtractor | None = None):
        super().__init__()
        self.discriminator, self.pooled, self.output = discriminator, pooled, cfg.fisher_output
        self.names = list(mean)
        for i, name in enumerate(self.names):
            self.register_buffer(f"mean{i}", mean[name])
            self.register_buffer(f"scale{i}", 1 / (std[name] + 1e-6))  # AFV's epsilon
        self.reducer = Reducer({name: v.numel() for name, v in mean.items()}, cfg.fisher_dim, cfg.fisher_reduce)
        super().train(False)

    def train(self, mode: bool = True) -> "FisherExtractor":
        return super().train(False)  # batch norm keeps its frozen statistics

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fisher = torch.cat([self.fisher_vectors(chunk) for chunk in images.split(MOMENT_BATCH)])
        return fisher if self.pooled is None else torch.cat([self.pooled(images), fisher], dim=1)

    def fisher_vectors(self, images: torch.Tensor) -> torch.Tensor:
        """A few images at a time: their gradients hold (N, number of D's weights) floats before the reduction."""
        grads = per_example_gradients(self.discriminator, images, self.output)
        return self.reducer({name: (grads[name] - getattr(self, f"mean{i}")) * getattr(self, f"scale{i}")
                             for i, name in enumerate(self.names)})


def load_run_generator(checkpoint_path: Path, model_cfg) -> tuple[Generator, str]:
    """G of the run a D file belongs to (``generator.pt`` beside it) and that file's path, for the Fisher vectors'
    generated images; refused clearly when there is none, or when it is of another architecture."""
    path = checkpoint_path.parent / GENERATOR_FILE
    if not path.is_file():
        raise UserError(f"features.kind Fisher vectors need the run's {GENERATOR_FILE} beside {checkpoint_path} "
                        "(their mean and scale are taken over generated images); evaluate a finished run's folder")
    payload = load_checkpoint(path)
    stored = Config.from_dict(payload["config"], f"config stored in {path}")
    if stored.model != model_cfg:
        raise UserError(f"{path} is of another architecture than {checkpoint_path}; they are not of one run")
    generator = Generator(model_cfg)
    load_state(generator, payload["generator"], str(path), "generator")
    return generator, str(path)


def describe_fisher(discriminator: Discriminator, cfg: FeatureConfig) -> str:
    """``Fisher vector of D's 1,234,567 weights (logit), CountSketch to 16,384``, for the console and the record."""
    n = sum(p.numel() for p in discriminator.parameters())
    step = math.ceil(n / cfg.fisher_dim)
    how = f"CountSketch to {cfg.fisher_dim:,}" if cfg.fisher_reduce == "sketch" else f"every {step:,}th coordinate"
    return f"Fisher vector of D's {n:,} weights ({cfg.fisher_output}, {cfg.fisher_samples:,} generated images), {how}"
