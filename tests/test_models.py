import pytest
import torch
from torch import nn

from dcgan_features.config import Config, apply_overrides
from dcgan_features.models import build_models, sample_noise


def models_for(**overrides):
    model = apply_overrides(Config(), {f"model.{k}": v for k, v in overrides.items()}).model
    return model, *build_models(model)


@pytest.mark.parametrize("size,channels,kernel", [(16, 3, 4), (32, 3, 4), (32, 1, 5), (64, 3, 4), (64, 1, 3)])
def test_generator_and_discriminator_shapes(size, channels, kernel):
    cfg, g, d = models_for(image_size=size, channels=channels, kernel_size=kernel, width=8)
    images = g(sample_noise(5, cfg))
    assert images.shape == (5, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1  # tanh output
    assert d(images).shape == (5,)
    outputs = d.block_outputs(images, tuple(d.block_shapes))
    for name, (c, h, w) in d.block_shapes.items():
        assert outputs[name].shape == (5, c, h, w)
    assert list(d.block_shapes)[-1] == f"conv{len(d.block_shapes)}"
    assert d.block_shapes[list(d.block_shapes)[-1]][1] == 4  # strided down to 4x4


def test_default_is_the_paper_layout():
    cfg, g, d = models_for()
    assert d.block_shapes == {"conv1": (64, 16, 16), "conv2": (128, 8, 8), "conv3": (256, 4, 4)}
    # no BN on D's input block, BN on the others; LeakyReLU(0.2) everywhere in D
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.blocks["conv1"])
    assert all(any(isinstance(m, nn.BatchNorm2d) for m in d.blocks[n]) for n in ("conv2", "conv3"))
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    # G ends in a transposed conv and tanh with no BN between them; no pooling or hidden linear layers
    assert isinstance(g.upsample[-1], nn.Tanh) and isinstance(g.upsample[-2], nn.ConvTranspose2d)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.Linear)) for m in [*g.modules(), *d.modules()])


def test_init_is_normal_0_02():
    torch.manual_seed(0)
    _, g, d = models_for()
    weight = d.blocks["conv3"][0].weight
    assert abs(weight.mean().item()) < 1e-3 and abs(weight.std().item() - 0.02) < 1e-3


def test_stride_one_blocks_and_linear_projection():
    cfg, g, d = models_for(d_widths=[16, 16, 32, 32, 64, 64], d_strides=[1, 2, 1, 2, 1, 2], kernel_size=3,
                           g_widths=[64, 32, 16], g_projection="linear", z_distribution="uniform")
    z = sample_noise(3, cfg)
    assert z.min() >= -1 and z.max() <= 1
    assert d(g(z)).shape == (3,)
    assert d.block_shapes["conv1"] == (16, 32, 32) and d.block_shapes["conv6"] == (64, 4, 4)
