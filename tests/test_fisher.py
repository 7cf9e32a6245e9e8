"""Fisher vectors of D (features.kind, fisher.py): exact per-image gradients, the sketch's bound, moments taken
from generated images only, and the option end to end through the CLI."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dcgan_features.cli import cli
from dcgan_features.config import FeatureConfig, load_config
from dcgan_features.errors import UserError
from dcgan_features.features import cache_key
from dcgan_features.fisher import FisherExtractor, Reducer, generated_moments, per_example_gradients
from dcgan_features.models import build_models
from dcgan_features.records import experiment_identity, read_out

TINY = ["--set", "model.width=8", "--set", "train.log_every=5"]


def tiny_models():
    torch.manual_seed(0)
    return build_models(load_config(None, {"model.width": 8}).model)


@pytest.mark.parametrize("output", ["logit", "sigmoid"])
def test_per_image_gradients_equal_autograd_one_image_at_a_time(output):
    _, d = tiny_models()
    d.eval()
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    batched = per_example_gradients(d, images, output)
    for i in range(len(images)):
        value = d(images[i:i + 1])[0]
        value = torch.sigmoid(value) if output == "sigmoid" else value
        direct = torch.autograd.grad(value, list(d.parameters()))
        for (name, _), expected in zip(d.named_parameters(), direct):
            torch.testing.assert_close(batched[name][i], expected, rtol=1e-4, atol=1e-6)
    assert not torch.equal(batched["head.weight"][0], batched["head.weight"][1])


def test_the_sketch_keeps_inner_products_unbiased_within_its_variance_bound():
    torch.manual_seed(1)
    a = torch.randn(1, 4000)
    b = 0.5 * a + torch.randn(1, 4000)  # correlated, so the inner product is far from 0
    m, exact = 400, float(a @ b.T)
    errors = []
    for seed in range(300):
        sketch = Reducer({"w": 4000}, m, "sketch", seed=seed)
        errors.append(float(sketch({"w": a}) @ sketch({"w": b}).T) - exact)
    errors = np.array(errors)
    bound = (float(a.norm() ** 2 * b.norm() ** 2) + exact ** 2) / m  # the variance of a CountSketch inner product
    assert abs(errors.mean()) < 4 * np.sqrt(bound / len(errors))  # unbiased
    assert errors.var() < 1.3 * bound and errors.var() > 0.3 * bound  # and as noisy as the bound says, no more
    assert Reducer({"w": 4000, "v": 1000}, m, "sketch")({"w": a, "v": a[:, :1000]}).shape == (1, m)


def test_the_stride_baseline_takes_every_kth_coordinate_of_the_whole_gradient():
    rows = {"w": torch.arange(10.0).reshape(1, 10), "v": torch.arange(10.0, 17.0).reshape(1, 7)}
    assert Reducer({"w": 10, "v": 7}, 6, "stride")(rows).tolist() == [[0.0, 3.0, 6.0, 9.0, 12.0, 15.0]]
    rows = {"w": torch.arange(4.0).reshape(1, 4), "b": torch.tensor([[4.0]]), "v": torch.arange(5.0, 9.0)[None]}
    assert Reducer({"w": 4, "b": 1, "v": 4}, 3, "stride")(rows).tolist() == [[0.0, 3.0, 6.0]]  # "b" between steps


def test_the_mean_and_scale_come_from_generated_images_and_centre_them():
    g, d = tiny_models()
    d.eval()
    cfg = FeatureConfig(kind="fisher", fisher_samples=70, fisher_dim=64)
    mean, std = generated_moments(d, g, cfg, load_config(None, {"model.width": 8}).model, torch.device("cpu"))
    from dcgan_features.fisher import SKETCH_SEED, sample_noise, seeded_generator
    noise = sample_noise(70, load_config(None, {"model.width": 8}).model, seeded_generator(SKETCH_SEED, 4))
    with torch.no_grad():
        fakes = g.eval()(noise)
    direct = per_example_gradients(d, fakes, "logit")
    for name, grads in direct.items():
        torch.testing.assert_close(mean[name], grads.mean(0), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(std[name], grads.std(0, unbiased=False), rtol=1e-3, atol=1e-6)
    # the generated images' Fisher vectors (before sketching) are centred: stride 1 keeps every coordinate
    whole = FisherExtractor(d, mean, std, FeatureConfig(kind="fisher", fisher_dim=10**9, fisher_reduce="stride"))
    vectors = whole(fakes)
    assert vectors.shape[1] == sum(p.numel() for p in d.parameters())
    assert vectors.mean(0).abs().max() < 1e-3
    other_g, _ = build_models(load_config(None, {"model.width": 8, "train.seed": 5}).model)
    moved = generated_moments(d, other_g.apply(lambda m: None), cfg, load_config(None, {"model.width": 8}).model,
                              torch.device("cpu"))[0]
    assert any(not torch.allclose(moved[k], mean[k]) for k in mean)  # another G, other statistics


def test_pooled_features_keep_their_cache_key_and_fisher_ones_get_their_own():
    from dcgan_features.data import load_images
    from dcgan_features.features import PoolingSpec
    data = load_images("fake", "data", "train", image_size=32, channels=3)
    spec = PoolingSpec(("conv1",), 4, "max")
    pooled = cache_key("abc", spec, data, "running")
    assert "fisher" not in pooled  # the key every cache entry written before Fisher vectors had
    fisher = cache_key("abc", spec, data, "running", fisher={"kind": "fisher", "fisher_dim": 8})
    assert fisher != pooled and fisher["fisher"]["fisher_dim"] == 8


def test_fisher_features_end_to_end_and_bad_input(tmp_path):
    def run(*args, code=0):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == code, result.output
        return result

    run("pretrain", "--dataset", "fake", "--epochs", "1", "--out", tmp_path / "run", *TINY)
    common = ["evaluate", "--checkpoint", tmp_path / "run", "--protocol", "validation", "--results-dir",
              tmp_path / "res", "--cache-dir", tmp_path / "cache", "--set", "svm.c_grid=[1e-2]",
              "--set", "features.fisher_samples=64", "--set", "features.fisher_dim=96"]
    run(*common, "--set", "features.kind=fisher")
    run(*common, "--set", "features.kind=pooled+fisher")
    run(*common)
    results = {json.loads(p.read_text())["config"]["features"]["kind"]: json.loads(p.read_text())
               for p in (tmp_path / "res").glob("*.json")}
    assert set(results) == {"pooled", "fisher", "pooled+fisher"}
    assert results["fisher"]["feature_dim"] == 96
    assert results["pooled+fisher"]["feature_dim"] == results["pooled"]["feature_dim"] + 96
    assert "Fisher vector of D's" in results["fisher"]["feature_spec"]
    assert [read_out(results[k]) for k in ("pooled", "fisher", "pooled+fisher")] == [
        "paper", "Fisher vector, 1 view", "4x4 pool + Fisher vector, 1 view"]  # the report's read-out column
    assert len({json.dumps(experiment_identity(r), sort_keys=True) for r in results.values()}) == 3

    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "discriminator.pt").write_bytes((tmp_path / "run" / "discriminator.pt").read_bytes())
    for checkpoint, extra, message in (
            (alone / "discriminator.pt", [], "need the run's generator.pt"),
            (None, ["--baseline", "untrained", "--config", "configs/digits.toml"], "the untrained baseline has none")):
        where = ["--checkpoint", checkpoint] if checkpoint else []
        out = run("evaluate", *where, *extra, "--protocol", "validation", "--results-dir", tmp_path / "res2",
                  "--set", "features.kind=fisher", code=2).output
        assert message in out and "Traceback" not in out
    with pytest.raises(UserError, match="features.kind must be one of pooled, fisher, pooled\\+fisher"):
        load_config(None, {"features.kind": "gradients"})
