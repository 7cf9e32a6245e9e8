from pathlib import Path

import pytest
import torch
from torch import nn

from dcgan_features.config import Config, apply_overrides
from dcgan_features.models import build_models, sample_noise

ROOT = Path(__file__).parents[1]


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


def test_paper_config_has_the_released_imagenet_models_shapes():
    """The shapes of the authors' released ImageNet 32x32 model (Newmu/dcgan_code, imagenet/load_pretrained.py and
    the .npy headers of models/imagenet_gan_pretrain_128f_relu_lrelu_7l_3x3_256z/): G's linear projection
    (256 -> 8,192 units, BN over all of them), then transposed convolutions 512->512 (3x3, stride 2),
    512->256 (1), 256->256 (2), 256->128 (1), 128->128 (2), 128->3 (1)."""
    from dcgan_features.config import load_config

    cfg = load_config(ROOT / "configs" / "paper_imagenet32.toml").model
    g, d = build_models(cfg)
    assert g.project[1].weight.shape == (8192, 256) and g.project[2].num_features == 8192
    convs = [m for m in g.upsample if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for m in convs] == [
        (512, 512, 3, 2), (512, 256, 3, 1), (256, 256, 3, 2), (256, 128, 3, 1), (128, 128, 3, 2), (128, 3, 3, 1)]
    shapes, x = [], g.project(sample_noise(2, cfg).view(2, 256, 1, 1))
    for layer in g.upsample:
        x = layer(x)
        if isinstance(layer, torch.nn.ConvTranspose2d):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(512, 8, 8), (256, 8, 8), (256, 16, 16), (128, 16, 16), (128, 32, 32), (3, 32, 32)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in (b[0] for b in d.blocks.values())] == [
        (3, 128, 1), (128, 128, 2), (128, 256, 1), (256, 256, 2), (256, 512, 1), (512, 512, 2)]
    assert d.head.weight.numel() == 8192  # the release's read-out: 8,192 x 1


def test_generator_strides_are_validated():
    from dcgan_features.config import ModelConfig
    from dcgan_features.errors import UserError

    with pytest.raises(UserError, match="3 strides of 2"):
        ModelConfig(kernel_size=3, g_strides=(2, 1, 2))
    with pytest.raises(UserError, match="odd model.kernel_size"):
        ModelConfig(kernel_size=4, g_strides=(2, 1, 2, 2))
    with pytest.raises(UserError, match="needs 4 entries"):
        ModelConfig(kernel_size=3, g_strides=(2, 1, 2, 2), g_widths=(64, 32, 16))
