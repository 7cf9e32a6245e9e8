"""The read-out options of issue 27: a spatial pyramid beside the pooling grid (``features.pyramid``), and scoring
each image by several views, the image and its mirror (``svm.score_hflip``) and its shifted copies
(``svm.score_translate``). All off by default, which keeps the paper's read-out bitwise."""

import json
from dataclasses import asdict
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcgan_features.config import FeatureConfig
from dcgan_features.features import FrozenExtractor, PoolingSpec, cache_key
from dcgan_features.svm import predict_views

from test_cli import fail, tiny_run  # noqa: F401
from test_features import discriminator
from test_levers import SpyClassifier, run_toy_protocol, toy_rows


def test_a_pyramid_adds_each_blocks_coarser_pools_after_its_grid():
    d = discriminator(**{"model.width": 8}).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    plain = PoolingSpec.from_config(FeatureConfig(), d)
    pyramid = PoolingSpec.from_config(FeatureConfig(pyramid=(2, 1)), d)
    assert pyramid.grids == (4, 2, 1) and pyramid.dimension(d) == plain.dimension(d) * (16 + 4 + 1) // 16
    features = FrozenExtractor(d, pyramid)(x)
    assert features.shape == (3, pyramid.dimension(d))
    with torch.no_grad():
        outputs = d.block_outputs(x, pyramid.layers)
    expected = [F.adaptive_max_pool2d(outputs[name], g).flatten(1) for name in pyramid.layers for g in (4, 2, 1)]
    torch.testing.assert_close(features, torch.cat(expected, dim=1))
    # the 1x1 pool of a block is its global maximum, which the 4x4 cells of the same block also hold
    width = d.block_shapes["conv1"][0]
    conv1 = features[:, :21 * width]
    torch.testing.assert_close(conv1[:, 20 * width:], conv1[:, :16 * width].reshape(3, width, 16).amax(-1))
    assert "conv1 8x(4x4+2x2+1x1)" in pyramid.describe(d)


def test_without_a_pyramid_features_and_the_cache_key_are_those_of_before():
    d = discriminator(**{"model.width": 8}).eval()  # the extractor's batch norm uses D's running statistics
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    spec = PoolingSpec.from_config(FeatureConfig(), d)
    with torch.no_grad():
        outputs = d.block_outputs(x, spec.layers)
    before = torch.cat([F.adaptive_max_pool2d(outputs[name], 4).flatten(1) for name in spec.layers], dim=1)
    assert torch.equal(FrozenExtractor(d, spec)(x), before)
    from dcgan_features.data import load_images

    data = load_images("fake", "x", "test", image_size=32, channels=3)
    key = cache_key("a" * 64, spec, data, "running")
    assert key["spec"] == {"layers": list(spec.layers), "grid": 4, "pool": "max"}  # as stored before the pyramid
    with_pyramid = PoolingSpec.from_config(FeatureConfig(pyramid=(2,)), d)
    assert cache_key("a" * 64, with_pyramid, data, "running")["spec"] == json.loads(json.dumps(asdict(with_pyramid)))


class Linear:
    """A fixed linear model with the parts of the scikit-learn interface that predict_views uses."""

    def __init__(self, coef):
        self.coef, self.classes_ = np.asarray(coef, float), np.array([3, 5, 7])

    def decision_function(self, X):
        return X @ self.coef.T

    def predict(self, X):
        return self.classes_[np.argmax(self.decision_function(X), 1)]


def test_two_views_are_scored_by_their_mean_decision():
    model = Linear(np.eye(3))
    view, mirror = np.array([[1.0, 0.0, 0.9]]), np.array([[0.0, 0.2, 1.0]])
    assert predict_views(model, view)[0] == 3 and predict_views(model, mirror)[0] == 7
    assert predict_views(model, view, mirror)[0] == 7  # 1.0 + 0.0 < 0.9 + 1.0
    assert predict_views(model, view, view)[0] == predict_views(model, view)[0]
    shifted = np.array([[0.0, 1.8, 0.0]])
    assert predict_views(model, view, mirror, shifted)[0] == 5  # a third view: summed 1.0, 2.0, 1.9


class SpyViews(SpyClassifier):
    """:class:`SpyClassifier` that also records the rows it scores through decision_function (one view each)."""

    classes_ = np.array([0, 1, 2, 3])

    def decision_function(self, X):
        self.log.append(("view", len(X)))
        return np.zeros((len(X), 4))


@pytest.mark.parametrize("protocol", ["full", "validation", "per-class", "svhn-1000"])
def test_score_hflip_scores_validation_and_test_rows_by_two_views_and_fits_on_one(protocol):
    x, m, y = toy_rows()
    logs = {"one view": [], "two views": []}
    for mode, views in {"one view": {}, "two views": dict(val_views=m[:300], test_views=m[300:])}.items():
        run_toy_protocol(protocol, partial(lambda log, C: SpyViews(log), logs[mode]), x, y, **views)
    fits = lambda log: [n for kind, n in log if kind == "fit"]  # noqa: E731
    assert fits(logs["one view"]) == fits(logs["two views"])  # the fitting rows are the images as they are
    scored = [n for kind, n in logs["one view"] if kind == "predict"]
    assert scored and not any(kind == "predict" for kind, _ in logs["two views"])
    # every scored row is scored twice: once as it is, once mirrored
    assert [n for kind, n in logs["two views"] if kind == "view"] == [n for n in scored for _ in range(2)]


@pytest.mark.parametrize("protocol", ["full", "validation", "per-class", "svhn-1000"])
def test_score_translate_scores_every_validation_and_test_row_by_each_of_its_views(protocol):
    """Scoring views given as a FittingViews (the mirror and a shifted copy): each scored row is scored once per view,
    the fitting rows are those of one view."""
    from dcgan_features.svm_rows import FittingViews

    x, m, y = toy_rows()
    logs = {"one view": [], "three views": []}
    three = dict(val_views=FittingViews((m[:300], x[:300] + 1)), test_views=FittingViews((m[300:], x[300:] + 1)))
    for mode, views in {"one view": {}, "three views": three}.items():
        run_toy_protocol(protocol, partial(lambda log, C: SpyViews(log), logs[mode]), x, y, **views)
    fits = lambda log: [n for kind, n in log if kind == "fit"]  # noqa: E731
    assert fits(logs["one view"]) == fits(logs["three views"])
    scored = [n for kind, n in logs["one view"] if kind == "predict"]
    assert scored and [n for kind, n in logs["three views"] if kind == "view"] == [n for n in scored for _ in range(3)]


def test_score_translate_extracts_the_test_images_shifted_copies_and_labels_the_read_out(tmp_path, tiny_run):  # noqa: F811
    from dcgan_features.evaluate import evaluate
    from dcgan_features.protocols import EvalConfig
    from dcgan_features.records import read_out

    common = dict(cache_dir=tmp_path / "cache", results_dir=tmp_path / "res", echo=lambda s: None)
    shifted = {"svm.c_grid": [1e-2], "svm.train_translate": 2, "svm.train_translate_views": 2}
    full = evaluate(tiny_run, EvalConfig(protocol="full"), overrides=shifted, **common)
    assert "features_test_shifted0_s" not in full["timings"] and read_out(full) == "paper"  # fitting copies alone
    scored = evaluate(tiny_run, EvalConfig(protocol="full"), overrides=shifted | {"svm.score_translate": True},
                      **common)
    assert {"features_test_shifted0_s", "features_test_shifted1_s"} <= set(scored["timings"])
    assert scored["n_train"] == full["n_train"] and read_out(scored) == "4x4 pool, 3 views"
    both = shifted | {"svm.score_translate": True, "svm.score_hflip": True}
    validation = evaluate(tiny_run, EvalConfig(protocol="validation"), overrides=both, **common)
    assert read_out(validation) == "4x4 pool, 4 views" and not any("test" in k for k in validation["timings"])
    keys = [json.loads((p / "key.json").read_text()) for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert sorted(k["split"] for k in keys) == ["test", "test-shift2-0", "test-shift2-1", "train", "train-hflip",
                                                 "train-shift2-0", "train-shift2-1"]


def test_evaluate_extracts_mirrored_validation_and_test_images_for_score_hflip(tmp_path, tiny_run):  # noqa: F811
    from dcgan_features.evaluate import evaluate
    from dcgan_features.protocols import EvalConfig

    common = dict(cache_dir=tmp_path / "cache", results_dir=tmp_path / "res", echo=lambda s: None)
    settings = {"svm.c_grid": [1e-2], "svm.score_hflip": True, "features.pyramid": [2, 1]}
    validation = evaluate(tiny_run, EvalConfig(protocol="validation"), overrides=settings, **common)
    full = evaluate(tiny_run, EvalConfig(protocol="full"), overrides=settings, **common)
    assert validation["n_fit"] + validation["n_val"] == full["n_train"]  # one view of each fitting row
    assert "features_train_mirrored_s" in validation["timings"] and "features_test_mirrored_s" in full["timings"]
    assert "features_test_mirrored_s" not in validation["timings"]  # the validation protocol never reads test
    keys = [json.loads((p / "key.json").read_text()) for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert sorted(k["split"] for k in keys) == ["test", "test-hflip", "train", "train-hflip"]
    assert all(k["spec"]["pyramid"] == [2, 1] for k in keys)
    assert validation["feature_dim"] == full["feature_dim"] == 8 * 21 + 16 * 21 + 32 * 21


@pytest.mark.parametrize("setting, message", [
    ("features.pyramid=[0]", "features.pyramid must hold distinct grid sizes of at least 1"),
    ("features.pyramid=[2,2]", "features.pyramid must hold distinct grid sizes of at least 1"),
    ("features.pyramid=[4,1]", "features.pyramid repeats features.grid (4)"),
    ("svm.score_hflip=3", "svm.score_hflip must be bool"),
    ("svm.score_translate=true", "svm.score_translate needs svm.train_translate > 0"),
])
def test_bad_read_out_settings_get_one_line(tmp_path, tiny_run, setting, message):  # noqa: F811
    assert message in fail("evaluate", "--checkpoint", tiny_run, "--protocol", "validation", "--set", setting,
                           "--results-dir", tmp_path / "res")
