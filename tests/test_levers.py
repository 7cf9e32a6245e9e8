"""The levers of issue 12: DiffAugment, the hinge loss, spectral normalisation, the rotation task, and mirrored
training rows for the SVM."""


from functools import partial

import numpy as np
import pytest
import torch

import dcgan_features.train as train_module
from dcgan_features.augment import AUGMENTATIONS, coin, cutout, diff_augment, flip, translation
from dcgan_features.checkpoint import load_checkpoint, load_discriminator
from dcgan_features.config import AUGMENTATIONS as CONFIG_AUGMENTATIONS
from dcgan_features.config import apply_overrides
from dcgan_features.data import load_images, to_model_range
from dcgan_features.errors import UserError
from dcgan_features.losses import discriminator_loss, generator_loss, rotate
from dcgan_features.models import Discriminator
from dcgan_features.train import pretrain

ALL_LEVERS = {"train.diffaugment": ["flip", "translation", "cutout", "color"], "train.rotation_weight": 1.0,
              "train.loss": "hinge", "model.d_spectral_norm": True, "train.lr_d": 4e-4,
              "train.contrastive_weight": 1.0}


def rng(seed=0):
    return torch.Generator().manual_seed(seed)


def test_the_config_names_every_augmentation_and_refuses_unknown_ones(tiny_config):
    assert set(CONFIG_AUGMENTATIONS) == set(AUGMENTATIONS)
    with pytest.raises(UserError, match="unknown augmentation 'mirror'"):
        apply_overrides(tiny_config, {"train.diffaugment": ["mirror"]})
    with pytest.raises(UserError, match="train.loss"):
        apply_overrides(tiny_config, {"train.loss": "wasserstein"})


def test_translation_moves_a_pixel_by_at_most_an_eighth_and_fills_with_zeros():
    x = torch.zeros(200, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = translation(x, rng())
    assert out.shape == x.shape
    where = out[:, 0].flatten(1).argmax(1)
    dy, dx = where // 16 - 8, where % 16 - 8
    assert out.sum(dim=(1, 2, 3)).eq(1).all()  # the pixel stays, nothing else appears
    assert dy.abs().max() == 2 and dx.abs().max() == 2  # 16 / 8, and every shift is drawn over 200 images
    assert (dy != 0).any() and (dx != dy).any()


def test_flip_mirrors_about_half_the_images_and_leaves_the_rest():
    x = torch.rand(400, 3, 8, 8)
    out = flip(x, rng())
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (mirrored ^ kept).all()  # each image whole, either way (random images are never symmetric)
    assert 150 < int(mirrored.sum()) < 250


def test_coin_draws_the_same_mask_for_a_bfloat16_batch_at_its_probability():
    x = torch.zeros(4000, 3, 2, 2)
    mask = coin(x, rng(), 0.8)
    assert mask.shape == (4000, 1, 1, 1) and mask.dtype == torch.bool
    assert torch.equal(mask, coin(x.bfloat16(), rng(), 0.8))  # compared in float32: bfloat16 would round 0.799 up
    assert 0.78 < mask.float().mean() < 0.82
    assert not coin(x, rng(), 0.0).any() and coin(x, rng(), 1.0).all()


def test_cutout_zeros_at_most_a_half_size_square():
    out = cutout(torch.ones(100, 3, 16, 16), rng())
    zeroed = (out == 0).all(dim=1).sum(dim=(1, 2))
    assert zeroed.max() == 64 and zeroed.min() > 0  # an 8x8 square, clipped at the border for some images
    assert ((out == 0) | (out == 1)).all()


def test_augmentation_is_differentiable_reproducible_and_identity_when_empty():
    x = torch.rand(8, 3, 16, 16, requires_grad=True)
    assert diff_augment(x, (), rng()) is x
    policy = tuple(AUGMENTATIONS)
    out = diff_augment(x, policy, rng(1))
    assert torch.equal(out, diff_augment(x, policy, rng(1)))
    assert not torch.equal(out, diff_augment(x, policy, rng(2)))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert discriminator_loss("hinge", real, fake) == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert generator_loss("hinge", fake) == pytest.approx(1.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(real, torch.ones(2)) + bce(fake, torch.zeros(2))
    assert discriminator_loss("bce", real, fake) == pytest.approx(float(expected))


def test_rotate_labels_say_how_each_image_was_turned():
    images = torch.rand(40, 3, 8, 8)
    rotated, turns = rotate(images, rng())
    assert set(turns.tolist()) == {0, 1, 2, 3}
    for image, back, k in zip(images, rotated, turns.tolist()):
        assert torch.equal(torch.rot90(back, -k, dims=(1, 2)), image)


def test_spectral_norm_bounds_every_conv_of_d(tiny_config):
    config = apply_overrides(tiny_config, {"model.d_spectral_norm": True})
    torch.manual_seed(0)  # the initial power-iteration vectors and the inputs: the same every run
    d = Discriminator(config.model).train()
    for _ in range(100):  # power iterations converge as D runs
        d(torch.rand(4, 3, 32, 32))
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("lever", sorted(ALL_LEVERS))
def test_each_lever_changes_the_update(tiny_config, lever):
    images = to_model_range(load_images("fake", "", "train", image_size=32, channels=3).images[:64])
    after = {}
    variants = {"default": tiny_config, lever: apply_overrides(tiny_config, {lever: ALL_LEVERS[lever]})}
    for name, config in variants.items():
        state = train_module.new_state(config, torch.device("cpu"))
        train_module.train_step(state, images, config, torch.device("cpu"))
        after[name] = state.generator.state_dict()
    assert any(not torch.equal(after["default"][k], after[lever][k]) for k in after["default"])


def test_mirror_real_shows_d_a_fixed_random_half_of_each_epochs_real_images_flipped(tiny_config, tmp_path,
                                                                                        monkeypatch):
    """Every real batch is the images as they are or mirrored, image by image: about half mirrored, another half
    each epoch, the same draw for the same seed; off, D sees the images as they are."""
    real_step, seen = train_module.train_step, []

    def recording_step(state, real, *args):
        seen.append(real)
        return real_step(state, real, *args)

    monkeypatch.setattr(train_module, "train_step", recording_step)
    images = to_model_range(load_images("fake", "", "train", image_size=32, channels=3).images)
    as_is, mirrored = ({image.numpy().tobytes() for image in array} for array in (images, images.flip(-1)))
    flips = {}
    for name, mirror in (("off", False), ("on", True), ("again", True)):
        seen.clear()
        pretrain(apply_overrides(tiny_config, {"train.epochs": 2, "train.mirror_real": mirror}), tmp_path / name,
                 echo=lambda s: None)
        flags = []
        for image in (image.numpy().tobytes() for real in seen for image in real):
            assert image in as_is or image in mirrored
            flags.append(image not in as_is)
        flips[name] = flags
    steps = len(seen) // 2 * tiny_config.train.batch_size
    assert not any(flips["off"]) and flips["on"] == flips["again"]
    first, second = flips["on"][:steps], flips["on"][steps:]
    assert 0.3 < np.mean(first) < 0.7 and 0.3 < np.mean(second) < 0.7


def test_a_run_with_every_lever_resumes_bitwise_and_evaluates(tiny_config, tmp_path, interrupted_pretrain):
    config = apply_overrides(tiny_config, {**ALL_LEVERS, "train.mirror_real": True, "train.checkpoint_every": 3})
    pretrain(config, tmp_path / "straight", echo=lambda s: None)
    interrupted_pretrain(config, tmp_path / "resumed", at=11)  # the last checkpoint was at step 9
    pretrain(config, tmp_path / "resumed", echo=lambda s: None)
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("straight", "resumed"))
    for part in ("generator", "discriminator", "rotation_head", "contrastive_head"):
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    d, stored = load_discriminator(load_checkpoint(tmp_path / "straight" / "discriminator.pt"), "d")
    assert stored.model.d_spectral_norm and d(torch.rand(2, 3, 32, 32)).shape == (2,)


class SpyClassifier:
    """Records the number of rows it is fitted on and asked to predict; predicts class 0."""

    def __init__(self, log):
        self.log, self.n_iter_, self.converged_ = log, 1, True

    def fit(self, X, y):
        assert len(X) == len(y)
        self.log.append(("fit", len(X)))
        return self

    def predict(self, X):
        self.log.append(("predict", len(X)))
        return np.zeros(len(X), int)


def toy_rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """400 rows of 6 random features in 4 classes, and a second array of the same shape (their 'mirrors')."""
    rng = np.random.default_rng(0)
    x, other = rng.normal(size=(400, 6)).astype(np.float32), rng.normal(size=(400, 6)).astype(np.float32)
    return x, other, np.arange(400) % 4


def run_toy_protocol(protocol: str, factory, x: np.ndarray, y: np.ndarray, **mirrors):
    """``protocol`` on the first 300 rows (training) and the last 100 (test) with one C, and the mirror keywords
    given (``fit_views``, ``val_views``, ``test_views``; the validation protocol reads no test mirror)."""
    from dcgan_features.config import SvmConfig
    from dcgan_features.protocols import run_full, run_per_class, run_svhn_1000, run_validation

    cfg = SvmConfig(c_grid=(1e-2,), val_fraction=0.25)
    train, test = (x[:300], y[:300]), (x[300:], y[300:])
    if protocol == "validation":
        return run_validation(*train, cfg, 0, factory, **{k: v for k, v in mirrors.items() if k != "test_views"})
    if protocol == "full":
        return run_full(*train, *test, cfg, 0, factory, **mirrors)
    if protocol == "per-class":
        return run_per_class(*train, *test, cfg, 0, factory, 20, 2, **mirrors)
    return run_svhn_1000(*train, *test, cfg, 0, factory, 20, 1, 2, val_size=100, **mirrors)


@pytest.mark.parametrize("protocol", ["full", "validation", "per-class", "svhn-1000"])
def test_other_views_join_fitting_rows_only(protocol):
    """One other view (the mirror) doubles every fit's rows, two (mirror and a shifted copy) treble them; the
    rows predicted (validation, test) stay the images as they are, in every protocol."""
    from dcgan_features.svm_rows import FittingViews

    x, mirrored, y = toy_rows()
    views = {"plain": None, "one": FittingViews((mirrored[:300],)), "two": FittingViews((mirrored[:300], x[:300]))}
    logs = {mode: [] for mode in views}
    for mode, fit_views in views.items():
        run_toy_protocol(protocol, partial(lambda log, C: SpyClassifier(log), logs[mode]), x, y, fit_views=fit_views)
    assert [kind for kind, _ in logs["plain"]] == [kind for kind, _ in logs["one"]] == [k for k, _ in logs["two"]]
    for (kind, plain), (_, one), (_, two) in zip(logs["plain"], logs["one"], logs["two"]):
        assert (one, two) == ((2 * plain, 3 * plain) if kind == "fit" else (plain, plain))


def test_training_rows_append_the_same_rows_of_each_other_view_in_turn():
    from dcgan_features.svm_rows import FittingViews, training_rows

    x, m, y = np.arange(12.0).reshape(6, 2), -np.arange(12.0).reshape(6, 2), np.arange(6)
    rows = np.array([1, 4])
    X, Y = training_rows(x, y, rows, m)
    assert X.dtype == np.float32 and np.array_equal(X, np.concatenate([x[rows], m[rows]]))
    assert np.array_equal(Y, [1, 4, 1, 4])
    X, Y = training_rows(x, y, rows, FittingViews((m, 10 * x))[np.array([0, 1, 2, 3, 4])])
    assert np.array_equal(X, np.concatenate([x[rows], m[rows], 10 * x[rows]])) and np.array_equal(Y, [1, 4] * 3)


def test_shifted_copies_move_each_image_within_the_bound_and_are_fixed_by_their_seed():
    from dcgan_features.augment import shifted_copy

    images = torch.rand(40, 3, 8, 8) + 1  # no zeros, so the zero fill shows where the border came in
    a, b, c = (shifted_copy(images, 2, seed) for seed in (0, 0, 1))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(shifted_copy(images, 0, seed=0), images)
    for original, moved in zip(images, a):  # each copy is its image moved by some (dy, dx) within [-2, 2]
        padded = torch.nn.functional.pad(original, [2, 2, 2, 2])
        assert any(torch.equal(moved, padded[:, 2 + dy:10 + dy, 2 + dx:10 + dx])
                   for dy in range(-2, 3) for dx in range(-2, 3))
    assert (a == 0).any()  # some image did move
