import json

import numpy as np
import pytest
import torch

from dcgan_features.config import Config, FeatureConfig, apply_overrides
from dcgan_features.data import load_images
from dcgan_features.errors import UserError
from dcgan_features.features import FrozenExtractor, PoolingSpec, cache_key, cached_features, extract
from dcgan_features.models import Discriminator

PAPER_IMAGENET = {"model.d_widths": [128, 128, 256, 256, 512, 512], "model.d_strides": [1, 2, 1, 2, 1, 2],
                  "model.kernel_size": 3, "model.g_widths": [512, 256, 128]}


def discriminator(**overrides):
    return Discriminator(apply_overrides(Config(), overrides).model)


@pytest.mark.parametrize("overrides,dim", [({}, 7168), (PAPER_IMAGENET, 28672), ({"model.width": 8}, 896)])
def test_feature_dimension(overrides, dim):
    d = discriminator(**overrides)
    spec = PoolingSpec.from_config(FeatureConfig(), d)
    assert spec.dimension(d) == dim
    assert FrozenExtractor(d, spec)(torch.zeros(2, 3, 32, 32)).shape == (2, dim)


def test_layer_subset_and_unknown_layer():
    d = discriminator()
    spec = PoolingSpec.from_config(FeatureConfig(layers=("conv3",)), d)
    assert spec.dimension(d) == 256 * 16
    with pytest.raises(UserError, match="conv9"):
        PoolingSpec.from_config(FeatureConfig(layers=("conv9",)), d)


def test_extractor_is_frozen_in_eval_mode():
    d = discriminator(**{"model.width": 8})
    extractor = FrozenExtractor(d, PoolingSpec.from_config(FeatureConfig(), d))
    extractor.train()
    assert not extractor.training and not any(m.training for m in extractor.modules())
    out = extractor(torch.randn(4, 3, 32, 32))
    assert not out.requires_grad
    running = d.blocks["conv2"][1].running_mean.clone()
    extractor(torch.randn(4, 3, 32, 32) * 5)
    assert torch.equal(running, d.blocks["conv2"][1].running_mean)  # BN statistics untouched


def test_extract_gives_the_same_features_in_either_memory_layout():
    d = discriminator(**{"model.width": 8})
    images = (torch.rand(10, 3, 32, 32) * 255).to(torch.uint8)
    spec = PoolingSpec.from_config(FeatureConfig(), d)
    nchw = extract(FrozenExtractor(d, spec), images, 4, torch.device("cpu"), channels_last=False)
    nhwc = extract(FrozenExtractor(d, spec), images, 4, torch.device("cpu"), channels_last=True)
    assert nchw.shape == (10, 896) and nchw.dtype == np.float32
    np.testing.assert_allclose(nchw, nhwc, atol=1e-5)  # same order of values, batch edges included


def test_max_pooling_matches_manual_window():
    d = discriminator(**{"model.width": 8})
    extractor = FrozenExtractor(d, PoolingSpec(("conv1",), 4, "max"))
    x = torch.randn(1, 3, 32, 32)
    conv1 = d.eval().blocks["conv1"](x)  # (1, 8, 16, 16): 4x4 windows
    assert torch.allclose(extractor(x)[0, 0], conv1[0, 0, :4, :4].max())


def test_cache_hit_and_miss(tmp_path):
    d = discriminator(**{"model.width": 8})
    spec = PoolingSpec.from_config(FeatureConfig(), d)
    extractor = FrozenExtractor(d, spec)
    data = load_images("fake", "x", "test", image_size=32, channels=3)
    key = cache_key("a" * 64, spec, data, "running")
    first = cached_features(extractor, data, key, tmp_path, 64, torch.device("cpu"))
    second = cached_features(extractor, data, key, tmp_path, 64, torch.device("cpu"))
    assert not first.cache_hit and second.cache_hit
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_array_equal(second.indices, np.arange(len(data)))
    # another checkpoint, another layer spec or another split never reuses the entry
    assert not cached_features(extractor, data, {**key, "checkpoint_sha256": "b" * 64}, tmp_path, 64,
                               torch.device("cpu")).cache_hit
    other_spec = PoolingSpec(("conv1",), 4, "max")
    assert not cached_features(FrozenExtractor(d, other_spec), data, cache_key("a" * 64, other_spec, data, "running"),
                               tmp_path, 64, torch.device("cpu")).cache_hit


def test_cache_entry_with_mismatched_key_is_not_used(tmp_path):
    d = discriminator(**{"model.width": 8})
    spec = PoolingSpec.from_config(FeatureConfig(), d)
    data = load_images("fake", "x", "test", image_size=32, channels=3)
    key = cache_key("a" * 64, spec, data, "running")
    cached_features(FrozenExtractor(d, spec), data, key, tmp_path, 64, torch.device("cpu"))
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    stored = json.loads((entry / "key.json").read_text())
    (entry / "key.json").write_text(json.dumps({**stored, "split": "train"}))
    np.save(entry / "features.npy", np.zeros((len(data), spec.dimension(d)), np.float32))
    again = cached_features(FrozenExtractor(d, spec), data, key, tmp_path, 64, torch.device("cpu"))
    assert not again.cache_hit and np.abs(np.asarray(again.features)).sum() > 0


def test_data_batchnorm_stats_follow_the_authors_recipe():
    from dcgan_features.features import recompute_batchnorm_stats

    torch.manual_seed(0)
    d = discriminator(**{"model.width": 8})
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    d.eval()
    recompute_batchnorm_stats(d, images, 128, torch.device("cpu"))  # two full batches; 44 images dropped
    with torch.no_grad():
        pre_bn = [d.blocks["conv2"][0](d.blocks["conv1"](images[i:i + 128].float() / 127.5 - 1)) for i in (0, 128)]
    mean = torch.stack([x.mean((0, 2, 3)) for x in pre_bn]).mean(0)
    var = torch.stack([x.var((0, 2, 3), unbiased=False) for x in pre_bn]).mean(0)
    bn = d.blocks["conv2"][1]
    assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, rtol=1e-4)
    assert not d.training  # the mode it was in


def test_paper_imagenet_config_builds_a_28672_feature_discriminator():
    from pathlib import Path

    from dcgan_features.config import load_config

    config = load_config(Path(__file__).parents[1] / "configs" / "paper_imagenet32.toml")
    d = Discriminator(config.model)
    spec = PoolingSpec.from_config(config.features, d)
    assert spec.dimension(d) == 28672
    assert "= 28,672 features" in spec.describe(d)
    assert config.model.z_distribution == "uniform" and config.model.z_dim == 256
