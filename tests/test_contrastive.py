"""The contrastive term on D's real images (train.contrastive_weight): SimCLR's views and loss, and its head."""

import math

import pytest
import torch
import torch.nn.functional as F

import dcgan_features.train as train_module
from dcgan_features.config import apply_overrides
from dcgan_features.contrastive import ProjectionHead, contrastive_loss, nt_xent, resized_crop, strong_view
from dcgan_features.errors import UserError


def rng(seed=0):
    return torch.Generator().manual_seed(seed)


def test_a_resized_crop_keeps_the_size_and_covers_a_fifth_to_all_of_each_image():
    # Each pixel's value is its column in [-1, 1]: a crop's columns span its width, in order.
    columns = torch.linspace(-1, 1, 32).expand(300, 3, 32, 32).contiguous()
    out = resized_crop(columns, rng())
    assert out.shape == columns.shape
    assert (out[..., 1:] >= out[..., :-1] - 1e-6).all()  # no crop mirrors or shuffles
    span = (out[..., -1] - out[..., 0]).amax(dim=(1, 2)) / 2  # the crop's width as a share of the image's
    smallest = math.sqrt(0.2 * 3 / 4)  # the narrowest crop: a fifth of the area at aspect 3/4
    assert span.min() > smallest * 30 / 32 - 0.01 and span.max() <= 1.0 + 1e-6
    assert span.std() > 0.1  # the width varies from image to image
    constant = resized_crop(torch.full((4, 3, 8, 8), 0.25), rng())
    assert torch.allclose(constant, torch.full_like(constant, 0.25))  # reflection padding adds nothing


def test_two_strong_views_differ_and_are_reproducible():
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    a, b = strong_view(x, rng(1)), strong_view(x, rng(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, strong_view(x, rng(2)))


def test_nt_xent_equals_the_cross_entropy_written_out():
    first, second = F.normalize(torch.randn(3, 5), dim=1), F.normalize(torch.randn(3, 5), dim=1)
    z = torch.cat([first, second])
    expected = 0.0
    for i in range(6):
        partner = (i + 3) % 6
        logits = [float(z[i] @ z[j]) / 0.5 for j in range(6) if j != i]
        others = [j for j in range(6) if j != i]
        expected -= logits[others.index(partner)] - math.log(sum(math.exp(v) for v in logits))
    assert float(nt_xent(first, second, 0.5)) == pytest.approx(expected / 6, rel=1e-5)
    # A view whose partner is itself (and far from the rest) is easy; with the partners shuffled it is not.
    pairs = torch.eye(4)
    assert nt_xent(pairs, pairs, 0.1) < 0.01 < nt_xent(pairs, pairs.roll(1, 0), 0.1)


def test_the_loss_trains_d_and_the_head(tiny_config):
    config = apply_overrides(tiny_config, {"train.contrastive_weight": 1.0})
    state = train_module.new_state(config, torch.device("cpu"))
    assert isinstance(state.contrastive_head, ProjectionHead)
    loss = contrastive_loss(state.discriminator, state.contrastive_head, torch.rand(8, 3, 32, 32) * 2 - 1, rng(),
                            0.1)
    loss.backward()
    trunk = [p for name, p in state.discriminator.named_parameters() if not name.startswith("head.")]
    for params in (trunk, list(state.contrastive_head.parameters())):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert state.discriminator.head.weight.grad is None  # the real/fake head is not the contrastive term's
    head_params = {id(p) for p in state.contrastive_head.parameters()}
    assert head_params <= {id(p) for group in state.opt_d.param_groups for p in group["params"]}
    assert train_module.new_state(tiny_config, torch.device("cpu")).contrastive_head is None  # off by default


@pytest.mark.parametrize("key, value", [("train.contrastive_weight", -1.0), ("train.contrastive_temperature", 0.0)])
def test_the_config_refuses_a_negative_weight_or_a_zero_temperature(tiny_config, key, value):
    with pytest.raises(UserError, match=key.split(".")[1]):
        apply_overrides(tiny_config, {key: value})
