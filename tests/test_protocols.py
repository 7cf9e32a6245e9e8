import numpy as np
import pytest

from dcgan_features.config import SvmConfig
from dcgan_features.errors import UserError
from dcgan_features.protocols import class_balanced_draw, run_per_class
from dcgan_features.svm import make_classifier, validation_split


def test_class_balanced_draws_are_balanced_seeded_and_distinct():
    labels = np.repeat(np.arange(10), 50)
    a = class_balanced_draw(labels, 20, np.random.default_rng([0, 0]))
    assert np.all(np.bincount(labels[a]) == 20) and len(np.unique(a)) == 200
    assert np.array_equal(a, class_balanced_draw(labels, 20, np.random.default_rng([0, 0])))
    assert not np.array_equal(a, class_balanced_draw(labels, 20, np.random.default_rng([0, 1])))
    fit, val = validation_split(labels[a], 0.2, seed=0)
    assert len(np.intersect1d(a[fit], a[val])) == 0 and np.all(np.bincount(labels[a][val]) == 4)


def test_more_labels_than_a_class_has_is_refused():
    labels = np.array([0] * 30 + [1] * 10)
    with pytest.raises(UserError, match="more than class 1 has \\(10 images\\)"):
        class_balanced_draw(labels, 11, np.random.default_rng(0))


def test_per_class_protocol_reports_mean_and_std_over_draws():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 20))
    y = np.arange(800) % 4
    x = (centres[y] + 1.5 * rng.normal(size=(800, 20))).astype(np.float32)
    cfg = SvmConfig(c_grid=(1e-3, 1e-1), val_fraction=0.25)
    out = run_per_class(x[:600], y[:600], x[600:], y[600:], cfg, 0, lambda C: make_classifier(cfg, C), 20, 5)
    assert len(out.details["test_accuracy_per_draw"]) == 5 and out.details["test_accuracy_std"] > 0
    assert out.test_accuracy == pytest.approx(np.mean(out.details["test_accuracy_per_draw"]))
    assert out.chosen_C == max(out.validation, key=lambda r: r["val_accuracy"])["C"]
    assert out.n_train == 80 and out.test_accuracy > 0.6


def test_svhn_protocol_splits_and_draws():
    from dcgan_features.protocols import run_svhn_1000

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 16))
    y = np.arange(1200) % 10
    x = (centres[y] + 1.0 * rng.normal(size=(1200, 16))).astype(np.float32)
    cfg = SvmConfig(c_grid=(1e-3, 1e-1))
    out = run_svhn_1000(x[:1000], y[:1000], x[1000:], y[1000:], cfg, 0, lambda C: make_classifier(cfg, C),
                        labels_per_class=10, val_draws=3, test_draws=6, val_size=300)
    errors = out.details["test_error_per_draw"]
    assert len(errors) == 6 and out.n_val == 300 and out.n_train == 100
    assert out.details["test_error_ci95"] == pytest.approx(1.96 * np.std(errors, ddof=1))
    assert out.test_accuracy == pytest.approx(1 - np.mean(errors))
    with pytest.raises(UserError, match="smaller than the training set"):
        run_svhn_1000(x[:100], y[:100], x[1000:], y[1000:], cfg, 0, lambda C: make_classifier(cfg, C), val_size=100)


class Recorder:
    """A factory whose classifiers record which rows (by the id in column 0) they are fitted on and asked
    to predict; they predict by nearest class mean on the other columns."""

    def __init__(self):
        self.calls = []

    def __call__(self, C):
        recorder = self

        class Recorded:
            warm_start = False

            def fit(self, X, y):
                recorder.calls.append(("fit", frozenset(X[:, 0].astype(int)), tuple(np.bincount(y, minlength=10))))
                self.classes_ = np.unique(y)
                self.means_ = np.stack([X[y == c, 1:].mean(0) for c in self.classes_])
                return self

            def predict(self, X):
                recorder.calls.append(("predict", frozenset(X[:, 0].astype(int)), None))
                distances = ((X[:, None, 1:] - self.means_[None]) ** 2).sum(-1)
                return self.classes_[distances.argmin(1)]

        return Recorded()


@pytest.mark.parametrize("protocol", ["full", "per-class", "svhn-1000"])
def test_protocol_splits_are_disjoint_balanced_and_seeded(protocol):
    """Whatever the protocol: every fit is disjoint from the rows it is validated on, no training row is
    ever a test row, test rows are scored only at the end, labelled sets are class-balanced, and the
    same seed gives exactly the same splits (another seed does not)."""
    from dcgan_features.protocols import run_full, run_svhn_1000

    rng = np.random.default_rng(0)
    y = np.arange(1100) % 10
    x = np.column_stack([np.arange(1100), rng.normal(size=(1100, 5)) + y[:, None]]).astype(np.float32)
    train, test = slice(0, 1000), slice(1000, 1100)
    cfg = SvmConfig(c_grid=(1e-3, 1e-1), val_fraction=0.2, standardize=False)  # ids stay readable
    run = {"full": lambda s, f: run_full(x[train], y[train], x[test], y[test], cfg, s, f),
           "per-class": lambda s, f: run_per_class(x[train], y[train], x[test], y[test], cfg, s, f, 20, 4),
           "svhn-1000": lambda s, f: run_svhn_1000(x[train], y[train], x[test], y[test], cfg, s, f,
                                                   labels_per_class=10, val_draws=3, test_draws=5, val_size=300)}
    records = {}
    for seed in (0, 0, 1):
        recorder = Recorder()
        run[protocol](seed, recorder)
        records.setdefault(seed, []).append(recorder.calls)
    calls = records[0][0]
    test_ids = frozenset(range(1000, 1100))
    fits = [(ids, counts) for kind, ids, counts in calls if kind == "fit"]
    assert all(not ids & test_ids for ids, _ in fits)
    assert all(len(set(counts)) == 1 for _, counts in fits)  # class-balanced labelled sets
    first_test = next(i for i, (kind, ids, _) in enumerate(calls) if ids == test_ids)
    assert all(kind == "fit" or ids == test_ids for kind, ids, _ in calls[first_test:])  # test only at the end
    for (kind, fit_ids, _), (next_kind, scored, _) in zip(calls, calls[1:]):
        if kind == "fit" and next_kind == "predict":
            assert not fit_ids & scored  # validated (or tested) on rows it was not fitted on
    if protocol == "svhn-1000":  # one fixed validation split, disjoint from every draw
        validation = {ids for kind, ids, _ in calls[:first_test] if kind == "predict"}
        assert len(validation) == 1 and all(not ids & next(iter(validation)) for ids, _ in fits)
    assert records[0][0] == records[0][1] and records[0][0] != records[1][0]


def test_validation_protocol_is_the_full_protocols_selection_without_test_data():
    from dcgan_features.protocols import run_full, run_validation

    rng = np.random.default_rng(0)
    y = np.arange(700) % 5
    x = (rng.normal(size=(5, 12))[y] + 2 * rng.normal(size=(700, 12))).astype(np.float32)
    cfg = SvmConfig(c_grid=(1e-3, 1e-1), val_fraction=0.2)
    factory = lambda C: make_classifier(cfg, C)  # noqa: E731
    full = run_full(x[:600], y[:600], x[600:], y[600:], cfg, 3, factory)
    alone = run_validation(x[:600], y[:600], cfg, 3, factory)
    strip = lambda table: [(r["C"], r["val_accuracy"]) for r in table]  # noqa: E731
    assert alone.test_accuracy is None and strip(alone.validation) == strip(full.validation)
    assert alone.chosen_C == full.chosen_C and (alone.n_fit, alone.n_val) == (480, 120)
    assert alone.details["validation_accuracy"] == max(r["val_accuracy"] for r in alone.validation)
