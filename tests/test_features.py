import json
import os
from pathlib import Path

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


def test_features_are_post_activation_max_pools_concatenated_in_block_order():
    """The whole vector, computed by hand: each block's conv, batch norm (eval, with non-trivial statistics)
    and LeakyReLU, max-pooled over 4x4 grid cells, flattened channel-major, blocks in order."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    d = discriminator(**{"model.width": 8}).eval()
    for block in list(d.blocks.values())[1:]:
        bn = block[1]
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    x = torch.randn(3, 3, 32, 32)
    expected, h = [], x
    for name, block in d.blocks.items():
        h = block[0](h)  # the convolution
        if name != "conv1":  # the paper: no batch norm on D's input block
            bn = block[1]
            h = (h - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
            h = h * bn.weight[:, None, None] + bn.bias[:, None, None]
        h = F.leaky_relu(h, 0.2)
        n, c, size, _ = h.shape
        cells = h.reshape(n, c, 4, size // 4, 4, size // 4).amax(dim=(3, 5))  # (n, c, 4, 4)
        expected.append(cells.reshape(n, -1))
    features = FrozenExtractor(d, PoolingSpec(("conv1", "conv2", "conv3"), 4, "max"))(x)
    assert features.shape == (3, 16 * (8 + 16 + 32))
    torch.testing.assert_close(features, torch.cat(expected, dim=1), atol=1e-5, rtol=1e-5)
    assert (features < 0).any()  # negative maxima exist, so pooling before the activation would differ
    reordered = FrozenExtractor(d, PoolingSpec(("conv3", "conv1"), 4, "max"))(x)
    torch.testing.assert_close(reordered, torch.cat([expected[2], expected[0]], dim=1), atol=1e-5, rtol=1e-5)


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
    from dcgan_features.models import recompute_batchnorm_stats

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


def _publish_same_entry(cache_dir, start, errors):
    """One of several processes writing the same cache entry at the same moment."""
    from dcgan_features.features import _write_entry

    try:
        key = {"k": 1, "num_images": 64}
        Path(cache_dir).mkdir(exist_ok=True)
        start.wait()
        _write_entry(Path(cache_dir) / "e", key, np.full((64, 32), 7, np.float32), np.arange(64))
    except BaseException as exc:  # reported to the parent, which fails the test
        errors.put(repr(exc))


def test_concurrent_cache_writers_all_succeed_with_one_whole_entry(tmp_path):
    import multiprocessing

    from dcgan_features.features import _read_entry

    context = multiprocessing.get_context("fork")
    for round_ in range(3):  # a race: the unguarded rmtree-then-replace lost it in most rounds
        cache = tmp_path / str(round_)
        start, errors = context.Event(), context.Queue()
        writers = [context.Process(target=_publish_same_entry, args=(cache, start, errors)) for _ in range(8)]
        for w in writers:
            w.start()
        start.set()
        for w in writers:
            w.join(60)
        assert [w.exitcode for w in writers] == [0] * 8 and errors.empty()
        assert [p.name for p in cache.iterdir()] == ["e"]  # one entry, no temporaries left behind
        entry = _read_entry(cache / "e", {"k": 1, "num_images": 64})
        assert entry is not None and np.all(entry.features == 7)


def test_a_killed_writers_temporaries_are_removed_by_the_next_run(tmp_path):
    import socket
    import subprocess

    d = discriminator(**{"model.width": 8})
    spec = PoolingSpec.from_config(FeatureConfig(), d)
    data = load_images("fake", "x", "test", image_size=32, channels=3)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    host = socket.gethostname()
    stale = tmp_path / f".{'a' * 32}.{host}.{dead.pid}.x1y2z3"
    live = tmp_path / f".{'b' * 32}.{host}.{os.getpid()}.k9k9k9"  # a writer still at work: left alone
    foreign = tmp_path / f".{'c' * 32}.another-host.{dead.pid}.q1q1q1"  # another machine's: cannot tell, left alone
    for path in (stale, live, foreign):
        path.mkdir()
        np.save(path / "features.npy", np.zeros((100, 100), np.float32))
    key = cache_key("a" * 64, spec, data, "running")
    cached_features(FrozenExtractor(d, spec), data, key, tmp_path, 64, torch.device("cpu"))
    assert not stale.exists() and live.exists() and foreign.exists()
    # an entry left damaged under the entry's own name is replaced by a whole one
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    (entry / "key.json").unlink()
    assert not cached_features(FrozenExtractor(d, spec), data, key, tmp_path, 64, torch.device("cpu")).cache_hit
    assert cached_features(FrozenExtractor(d, spec), data, key, tmp_path, 64, torch.device("cpu")).cache_hit
