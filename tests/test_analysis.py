"""The paper's analyses and the run page, on a tiny run of fake data."""

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dcgan_features.analysis.common import load_models
from dcgan_features.analysis.latent import arithmetic, interpolate, walk
from dcgan_features.analysis.memorisation import memorisation_check
from dcgan_features.analysis.run_page import write_run_page
from dcgan_features.analysis.samples import write_samples
from dcgan_features.analysis.visualise import GuidedLeakyReLU, guided_backprop, visualise
from dcgan_features.cli import cli
from dcgan_features.data import load_images, to_model_range
from dcgan_features.train import pretrain


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_config_module):
    out = tmp_path_factory.mktemp("analysis") / "run"
    pretrain(tiny_config_module, out, echo=lambda s: None)
    return out


@pytest.fixture(scope="module")
def tiny_config_module():
    from dcgan_features.config import load_config

    return load_config(None, {"data.dataset": "fake", "model.width": 8, "train.epochs": 2,
                              "train.batch_size": 64, "train.log_every": 2})


@pytest.fixture(scope="module")
def models(run):
    return load_models(run, torch.device("cpu"))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_walk_endpoints_reproduce_the_endpoint_samples(models, tmp_path):
    write_samples(models, 10, 0, tmp_path / "s")
    z = torch.from_numpy(np.load(tmp_path / "s" / "z.npy"))
    for distribution in ("normal", "uniform"):
        path = interpolate(z[2], z[7], 5, distribution)
        assert torch.allclose(path[0], z[2], atol=1e-5) and torch.allclose(path[-1], z[7], atol=1e-5)
    summary = walk(models, torch.stack([z[2], z[7]])[None], 5, tmp_path / "w")
    assert len(summary["per_row"][0]["pixel_change"]) == 4 and summary["per_row"][0]["pixel_max_over_mean"] >= 1
    done = invoke("analyse", "walk", models.path, "--samples", tmp_path / "s", "--pair", "2,7", "--steps", 5,
                  "--out", tmp_path / "w2")
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "w2" / "walk.json").read_text())["per_row"] == summary["per_row"]


def test_arithmetic_with_a_equal_to_b_returns_c(models, tmp_path):
    z = torch.randn(9, models.config.model.z_dim)
    out = arithmetic(models, {"A": z[:3], "B": z[:3], "C": z[6:]}, tmp_path, seed=0)
    with torch.no_grad():
        expected = models.generator(z[6:].mean(0, keepdim=True))
    assert torch.allclose(out["result"][0], expected[0], atol=1e-6)


def test_memorisation_flags_a_copying_generator_and_passes_a_fresh_one(models, tmp_path):
    train = load_images("fake", "", "train", image_size=32, channels=3)
    held_out = load_images("fake", "", "test", image_size=32, channels=3)
    copies = to_model_range(train.images[torch.randperm(len(train))[:50]])
    copied = memorisation_check(models, train, held_out, 50, 0, tmp_path / "copy", generated=copies)
    assert copied["flagged"] and copied["pixels"]["fraction_nearer_than_held_out"] == 1.0
    fresh = memorisation_check(models, train, held_out, 50, 0, tmp_path / "fresh")
    assert not fresh["flagged"]
    assert (tmp_path / "fresh" / "memorisation.png").is_file()


def test_guided_backprop_passes_no_gradient_where_the_forward_input_was_negative():
    x = torch.randn(1000, requires_grad=True)
    upstream = torch.randn(1000)
    GuidedLeakyReLU(0.2)(x).backward(upstream)
    assert torch.all(x.grad[x.detach() < 0] == 0) and torch.all(x.grad[upstream < 0] == 0)
    kept = (x.detach() > 0) & (upstream > 0)
    assert torch.equal(x.grad[kept], upstream[kept])


def test_guided_backprop_and_filters_of_trained_and_untrained_d(models, tmp_path):
    images = load_images("fake", "", "test", image_size=32, channels=3).images[:16]
    maps = guided_backprop(models.discriminator, to_model_range(images), features_per_block=2)
    assert list(maps) == list(models.discriminator.block_shapes)
    assert all(g.shape == (3, 32, 32) and g.abs().sum() > 0 for found in maps.values() for _, _, g in found)
    assert not any(isinstance(m, GuidedLeakyReLU) for m in models.discriminator.modules())  # D itself untouched
    summary = visualise(models, images, tmp_path, features_per_block=2)
    assert all((tmp_path / name).is_file() for name in summary["figures"])


def test_run_page_names_every_image_it_links_and_they_exist(run, tmp_path):
    made = write_run_page(run, tmp_path / "page")
    markdown = (tmp_path / "page" / "index.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert linked == made["images"] and all((tmp_path / "page" / name).is_file() for name in linked)
    assert {"curves.png", "samples.gif", "samples_epoch_002.png"} <= set(linked)
    page = (tmp_path / "page" / "index.html").read_text()
    assert page.count("<img ") == len(linked) and "data:image/png;base64," in page
    assert '&quot;epochs&quot;: 2' in page and '"epochs": 2' in markdown  # the config is on both pages


def test_bad_input_gets_one_line(run, tmp_path):
    write_samples(load_models(run, torch.device("cpu")), 4, 0, tmp_path / "s")
    cases = {
        ("samples", run / "discriminator.pt", "--out", tmp_path / "x"): "holds no generator",
        ("walk", run, "--samples", tmp_path / "s", "--pair", "0,9", "--out", tmp_path / "w"): "out of range",
        ("arithmetic", run, "--samples", tmp_path / "s", "--a", "0", "--b", ",", "--c", "1", "--out", tmp_path / "a"):
            "empty",
        ("walk", run, "--pair", "0,1", "--out", tmp_path / "w"): "--samples",
        ("samples", run, "--out", tmp_path / "s"): "exists",
    }
    for args, message in cases.items():
        done = invoke("analyse", *args)
        assert done.exit_code == 2 and message in done.output and "Traceback" not in done.output, (args, done.output)


def test_embedding_maps_the_trained_and_an_untrained_d_and_measures_their_separation(run, tmp_path):
    done = invoke("analyse", "embedding", run, "--per-class", "6", "--out", tmp_path / "e")
    assert done.exit_code == 0, done.output
    record = json.loads((tmp_path / "e" / "embedding.json").read_text())
    assert (tmp_path / "e" / "embedding.png").stat().st_size > 10_000
    assert record["images"] == 60 and record["per_class"] == 6 and record["checkpoint_sha256"]
    for name in ("trained D", "untrained D"):
        for space in ("full_space", "map"):
            measured = record["separation"][name][space]
            assert 0 <= measured["knn_accuracy"] <= 1 and -1 <= measured["silhouette"] <= 1
    again = invoke("analyse", "embedding", run, "--per-class", "6", "--out", tmp_path / "e")
    assert again.exit_code == 2 and "exists" in again.output  # an earlier map is kept without --force
    bad = invoke("analyse", "embedding", run, "--per-class", "1", "--out", tmp_path / "f")
    assert bad.exit_code == 2 and "--per-class must be at least 2" in bad.output


def test_the_separation_numbers_tell_separated_classes_from_mixed_ones():
    from dcgan_features.analysis.embedding import balanced_subset, separation

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    apart = rng.normal(size=(90, 5)) + 10 * np.eye(5)[labels]
    mixed = rng.normal(size=(90, 5))
    assert separation(apart, labels, "euclidean")["knn_accuracy"] == 1.0
    separated, random = (separation(points, labels, "euclidean")["silhouette"] for points in (apart, mixed))
    assert separated > 0.5 > random
    rows = balanced_subset(np.array([0, 0, 0, 1, 1, 2]), 2, 0)
    assert np.bincount(np.array([0, 0, 0, 1, 1, 2])[rows]).tolist() == [2, 2, 1]
