"""The import of the authors' Theano DCGAN, checked against an independent numpy implementation of their
forward pass (true convolutions, input-gradient deconvolutions, batch-statistics BN with eps 1e-8)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from dcgan_features.checkpoint import load_checkpoint, load_discriminator
from dcgan_features.config import Config
from dcgan_features.dcgan_code import (
    DISCRIMINATOR_SHAPES,
    GENERATOR_SHAPES,
    SVHN_PAPER,
    build_discriminator,
    build_generator,
    import_dcgan_code,
    read_params,
)
from dcgan_features.errors import UserError

SHARED = Path(__file__).parents[2] / "shared" / "pretrained" / "dcgan_code_svhn"
CONFIG = Config.from_dict(SVHN_PAPER)


def write_release(directory, seed=0):
    rng = np.random.default_rng(seed)
    for prefix, shapes in (("discrim", DISCRIMINATOR_SHAPES), ("gen", GENERATOR_SHAPES)):
        for i, shape in enumerate(shapes, start=1):
            scale = 0.1 if len(shape) == 1 else 0.05
            array = rng.normal(1.0 if len(shape) == 1 and i % 2 == 0 else 0.0, scale, size=shape)
            np.save(directory / f"200_{prefix}_params.jl_{i:02d}.npy", array.astype(np.float32))
    (directory / "200_gen_params.jl").write_bytes(b"never unpickled")


def true_conv(x, w):
    """Theano dnn_conv, conv_mode='conv', stride 2, pad 2: correlation with the kernel flipped."""
    patches = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))), (5, 5), axis=(2, 3))[:, :, ::2, ::2]
    return np.einsum("ncpqab,ocab->nopq", patches, w[:, :, ::-1, ::-1])


def deconv(g, w):
    """The input-gradient of true_conv with weight w (out-of-forward x in-of-forward x 5 x 5)."""
    n, _, p, q = g.shape
    out = np.zeros((n, w.shape[1], 2 * p + 4, 2 * q + 4))
    for a in range(5):
        for b in range(5):
            out[:, :, a:a + 2 * p:2, b:b + 2 * q:2] += np.einsum("nopq,oc->ncpq", g, w[:, :, 4 - a, 4 - b])
    return out[:, :, 2:2 + 2 * p, 2:2 + 2 * q]


def batchnorm(x, gain, bias, axes):
    shape = [1] * x.ndim
    shape[1] = -1
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-8) * gain.reshape(shape) + bias.reshape(shape)


def lrelu(x):
    return np.where(x > 0, x, 0.2 * x)


def numpy_discriminator(x, p):
    h1 = lrelu(true_conv(x, p[0]))
    h2 = lrelu(batchnorm(true_conv(h1, p[1]), p[2], p[3], (0, 2, 3)))
    h3 = lrelu(batchnorm(true_conv(h2, p[4]), p[5], p[6], (0, 2, 3)))
    return [h1, h2, h3], h3.reshape(len(x), -1) @ p[7][:, 0]


def numpy_generator(z, p):
    h = np.maximum(batchnorm(z @ p[0], p[1], p[2], (0,)), 0).reshape(len(z), 256, 4, 4)
    h = np.maximum(batchnorm(deconv(h, p[3]), p[4], p[5], (0, 2, 3)), 0)
    h = np.maximum(batchnorm(deconv(h, p[6]), p[7], p[8], (0, 2, 3)), 0)
    return np.tanh(deconv(h, p[9]))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    directory = tmp_path_factory.mktemp("release")
    write_release(directory)
    return directory


def test_discriminator_matches_the_authors_forward_pass(release):
    params = read_params(release, "discrim", DISCRIMINATOR_SHAPES)
    x = np.random.default_rng(1).uniform(-1, 1, size=(6, 3, 32, 32)).astype(np.float32)
    blocks, logits = numpy_discriminator(x.astype(np.float64), [p.astype(np.float64) for p in params])
    for flip, should_match in ((True, True), (False, False)):
        d = build_discriminator(params, CONFIG, flip=flip).train()  # train mode: batch statistics, as the reference
        with torch.no_grad():
            outputs = d.block_outputs(torch.from_numpy(x), ("conv1", "conv2", "conv3"))
            ours = d(torch.from_numpy(x)).numpy()
        matches = np.allclose(outputs["conv3"].numpy(), blocks[2], atol=1e-3) and np.allclose(ours, logits, atol=1e-3)
        assert matches == should_match, f"flip={flip}"
    # the unflipped import already differs at the first layer
    assert not np.allclose(outputs["conv1"].numpy(), blocks[0], atol=1e-3)


def test_generator_matches_the_authors_forward_pass(release):
    params = read_params(release, "gen", GENERATOR_SHAPES)
    z = np.random.default_rng(2).normal(size=(8, 100)).astype(np.float32)
    reference = numpy_generator(z.astype(np.float64), [p.astype(np.float64) for p in params])
    for flip, should_match in ((True, True), (False, False)):
        g = build_generator(params, CONFIG, flip=flip).train()
        with torch.no_grad():
            ours = g(torch.from_numpy(z)).numpy()
        assert np.allclose(ours, reference, atol=1e-3) == should_match, f"flip={flip}"


def test_import_writes_an_evaluable_checkpoint(release, tmp_path):
    path = import_dcgan_code(release, tmp_path / "run", num_noise_batches=2)
    payload = load_checkpoint(path)
    d, config = load_discriminator(payload, str(path))
    assert config.features.bn_stats == "data" and config.model.bn_eps == 1e-8
    assert payload["kind"] == "imported" and payload["provenance"]["kernels_flipped"]
    assert (tmp_path / "run" / "samples" / "imported.png").is_file()
    with pytest.raises(UserError, match="--force"):
        import_dcgan_code(release, tmp_path / "run")


def test_incomplete_release_is_refused(tmp_path):
    write_release(tmp_path)
    (tmp_path / "200_discrim_params.jl_08.npy").unlink()
    with pytest.raises(UserError, match="should hold 8 files"):
        read_params(tmp_path, "discrim", DISCRIMINATOR_SHAPES)


@pytest.mark.skipif(not SHARED.is_dir(), reason="the authors' release is not beside this checkout")
def test_released_weights_match_the_reference_too():
    params = read_params(SHARED, "gen", GENERATOR_SHAPES)
    z = np.random.default_rng(3).normal(size=(16, 100)).astype(np.float32)
    with torch.no_grad():
        ours = build_generator(params, CONFIG).train()(torch.from_numpy(z)).numpy()
    assert np.allclose(ours, numpy_generator(z.astype(np.float64), [p.astype(np.float64) for p in params]), atol=1e-3)


def test_shipped_svhn_config_is_the_importers():
    from dcgan_features.config import load_config

    assert load_config(Path(__file__).parents[1] / "configs" / "svhn_paper.toml") == CONFIG
