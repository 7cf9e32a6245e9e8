"""DCGAN generator and discriminator following Radford et al. (2015), section 3.

Guidelines kept: strided convolutions instead of pooling; batch norm everywhere except G's output
and D's input layer; ReLU with a tanh output in G; LeakyReLU(0.2) in D; no fully connected hidden
layers; weights drawn from N(0, 0.02).

With the default config (32x32 RGB, width 64) the shapes are::

    G: z (N, 100, 1, 1) -> (N, 256, 4, 4) -> (N, 128, 8, 8) -> (N, 64, 16, 16) -> (N, 3, 32, 32)
    D: x (N, 3, 32, 32) -> conv1 (N, 64, 16, 16) -> conv2 (N, 128, 8, 8) -> conv3 (N, 256, 4, 4) -> logit (N,)
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .data import to_model_range
from .errors import UserError


def same_padding(kernel_size: int) -> int:
    """Padding that makes a stride-s convolution map n to n / s for even n (k = 3, 4, 5, ...)."""
    return (kernel_size - 1) // 2


def weights_init(module: nn.Module) -> None:
    """The paper's initialisation: conv/linear weights N(0, 0.02); batch-norm gains N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """Maps z to an image in [-1, 1]: a 4x4 projection, then transposed convolutions of stride 2 (doubling the
    size) or 1 (keeping it, as in the paper's ImageNet generator)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        widths = cfg.generator_widths
        k, pad = cfg.kernel_size, same_padding(cfg.kernel_size)
        # output_padding makes ConvTranspose2d exactly double the size: (n-1)*2 - 2*pad + k + op = 2n.
        out_pad = 2 + 2 * pad - k
        if cfg.g_projection == "conv":
            # (N, z, 1, 1) -> (N, widths[0], 4, 4)
            self.project = nn.Sequential(
                nn.ConvTranspose2d(cfg.z_dim, widths[0], 4, 1, 0, bias=False),
                nn.BatchNorm2d(widths[0], eps=cfg.bn_eps),
                nn.ReLU(True),
            )
        else:
            # (N, z) -> (N, widths[0] * 16) -> (N, widths[0], 4, 4); BN over all 16 * widths[0] units,
            # as the authors' Theano code normalises the linear layer's outputs.
            self.project = nn.Sequential(
                nn.Flatten(),
                nn.Linear(cfg.z_dim, widths[0] * 16, bias=False),
                nn.BatchNorm1d(widths[0] * 16, eps=cfg.bn_eps),
                nn.ReLU(True),
                nn.Unflatten(1, (widths[0], 4, 4)),
            )
        strides = cfg.generator_strides
        layers: list[nn.Module] = []
        for c_in, c_out, stride in zip(widths[:-1], widths[1:], strides):
            # (N, c_in, s, s) -> (N, c_out, stride * s, stride * s)
            layers += [nn.ConvTranspose2d(c_in, c_out, k, stride, pad, output_padding=out_pad if stride == 2 else 0,
                                          bias=False),
                       nn.BatchNorm2d(c_out, eps=cfg.bn_eps), nn.ReLU(True)]
        # (N, widths[-1], size/stride, size/stride) -> (N, channels, size, size); no BN on G's output.
        last = strides[-1]
        layers += [nn.ConvTranspose2d(widths[-1], cfg.channels, k, last, pad,
                                      output_padding=out_pad if last == 2 else 0, bias=False),
                   nn.Tanh()]
        self.upsample = nn.Sequential(*layers)
        self.z_dim = cfg.z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.project(z.view(z.shape[0], self.z_dim, 1, 1)))


class Discriminator(nn.Module):
    """Image -> real/fake logit. Conv blocks are named ``conv1``, ``conv2``, ... for feature extraction."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        k, pad = cfg.kernel_size, same_padding(cfg.kernel_size)
        blocks: dict[str, nn.Module] = {}
        c_in, size = cfg.channels, cfg.image_size
        for i, (c_out, stride) in enumerate(zip(cfg.discriminator_widths, cfg.discriminator_strides), start=1):
            use_bn = i > 1 or cfg.d_batchnorm_first
            # (N, c_in, size, size) -> (N, c_out, size/stride, size/stride); LeakyReLU(0.2) after BN
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, pad, bias=False)]
            if use_bn:
                layers.append(nn.BatchNorm2d(c_out, eps=cfg.bn_eps))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            blocks[f"conv{i}"] = nn.Sequential(*layers)
            c_in, size = c_out, size // stride
        self.blocks = nn.ModuleDict(blocks)
        # (N, c_last, size, size) -> (N, 1, 1, 1): a linear read-out of the last feature map, written as a
        # convolution whose kernel covers the whole map (no fully connected hidden layer).
        self.head = nn.Conv2d(c_in, 1, size, 1, 0, bias=False)
        self.block_shapes = self._block_shapes(cfg)
        if cfg.d_spectral_norm:
            self.apply(_spectrally_normalise)

    @staticmethod
    def _block_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int, int]]:
        shapes, size = {}, cfg.image_size
        for i, (c, s) in enumerate(zip(cfg.discriminator_widths, cfg.discriminator_strides), start=1):
            size //= s
            shapes[f"conv{i}"] = (c, size, size)
        return shapes

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's feature map, (N, C, S, S): what the real/fake head (and a rotation head) reads."""
        for block in self.blocks.values():
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).flatten()

    def block_outputs(self, x: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Post-activation outputs of the named blocks; stops after the last one needed."""
        wanted, outputs = set(names), {}
        for name, block in self.blocks.items():
            x = block(x)
            if name in wanted:
                outputs[name] = x
                if len(outputs) == len(wanted):
                    break
        return outputs


def _spectrally_normalise(module: nn.Module) -> None:
    """Divide a conv's weight by its largest singular value, estimated by one power iteration per forward in
    training (Miyato et al. 2018), so D is close to 1-Lipschitz per layer."""
    if isinstance(module, nn.Conv2d):
        nn.utils.parametrizations.spectral_norm(module)


def build_models(cfg: ModelConfig) -> tuple[Generator, Discriminator]:
    """A freshly initialised (G, D) pair."""
    g, d = Generator(cfg), Discriminator(cfg)
    g.apply(weights_init)
    d.apply(weights_init)
    return g, d


def sample_noise(n: int, cfg: ModelConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """z of shape (n, z_dim) from the configured prior, drawn on the CPU so runs are device-independent."""
    if cfg.z_distribution == "uniform":
        return torch.rand(n, cfg.z_dim, generator=generator) * 2 - 1
    return torch.randn(n, cfg.z_dim, generator=generator)


@torch.no_grad()
def recompute_batchnorm_stats(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
                              keep_partial: bool = False) -> None:
    """Replace every batch-norm layer's running statistics by the authors' recipe: the average, over
    ``batch_size``-image batches, of the per-batch channel means and biased variances, with each batch
    normalised by its own statistics on the way (train-mode batch norm). A last partial batch is dropped,
    or with ``keep_partial`` counted as one batch, as the authors' SVHN script does.

    ``images`` are uint8 model inputs, or z vectors (float) for a generator."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    sums = {id(m): [0.0, 0.0] for m in norms}

    def record(module, inputs):
        x = inputs[0].double()
        dims = [d for d in range(x.dim()) if d != 1]
        sums[id(module)][0] += x.mean(dims)
        sums[id(module)][1] += x.var(dims, unbiased=False)

    hooks = [m.register_forward_pre_hook(record) for m in norms]
    was_training = model.training
    model.to(device).train()
    batches = 0
    try:
        for start in range(0, len(images) - (0 if keep_partial else batch_size - 1), batch_size):
            batch = images[start:start + batch_size].to(device)
            model(to_model_range(batch) if batch.dtype == torch.uint8 else batch)
            batches += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if batches == 0:
        raise UserError(f"batch-norm statistics need at least one batch of {batch_size} images, got {len(images)}")
    for m in norms:
        m.running_mean.copy_(sums[id(m)][0] / batches)
        m.running_var.copy_(sums[id(m)][1] / batches)
