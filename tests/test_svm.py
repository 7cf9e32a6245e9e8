import numpy as np
import pytest
import torch
from sklearn.svm import LinearSVC

from dcgan_features.config import SvmConfig
from dcgan_features.errors import UserError
from dcgan_features.protocols import run_full
from dcgan_features.svm import (TorchL2SVM, fit_and_score, l2svm_objective, make_classifier, nystrom_sketch,
                                select_c, standardise, validation_split)


def blobs(n=600, d=40, classes=5, seed=0, noise=2.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    y = np.arange(n) % classes
    return (centres[y] + noise * rng.normal(size=(n, d))).astype(np.float32), y


def total_objective(model, X, y, C):
    return sum(l2svm_objective(X, y, model.coef_[k:k + 1], model.intercept_[k:k + 1], C, model.classes_[k:k + 1])
               for k in range(len(model.classes_)))


@pytest.mark.parametrize("precision,rank", [("float32", 0), ("bfloat16", 0), ("float32", 16), ("bfloat16", 16)])
@pytest.mark.parametrize("C", [1e-3, 1e-1, 1.0])
def test_torch_solver_agrees_with_liblinear(C, precision, rank):
    X, y = blobs()
    X_train, X_test = standardise(X[:450], X[450:])
    ours = TorchL2SVM(C=C, tol=1e-5, hessian_precision=precision, preconditioner_rank=rank).fit(X_train, y[:450])
    reference = LinearSVC(C=C, dual="auto", tol=1e-8, max_iter=100_000).fit(X_train, y[:450])
    ours_obj, ref_obj = total_objective(ours, X_train, y[:450], C), total_objective(reference, X_train, y[:450], C)
    assert abs(ours_obj - ref_obj) / ref_obj < 1e-3
    assert abs(np.mean(ours.predict(X_test) == y[450:]) - np.mean(reference.predict(X_test) == y[450:])) <= 0.003


def correlated_features(n=2000, d=300, factors=10, seed=0):
    """Standardised features dominated by a few shared factors, as conv features are: X^T X has a handful
    of eigenvalues far above the rest."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 5
    latent = rng.normal(size=(n, factors)) * np.geomspace(30, 3, factors)
    latent[:, 0] += 2 * y
    X = latent @ rng.normal(size=(factors, d)) + rng.normal(size=(n, d))
    return standardise(X.astype(np.float32))[0], y


def test_nystrom_sketch_finds_the_top_eigenvalues():
    X, _ = correlated_features()
    U, eigenvalues = nystrom_sketch(torch.from_numpy(X), rank=40)
    exact = np.linalg.eigvalsh(X.T.astype(np.float64) @ X)[::-1]
    np.testing.assert_allclose(eigenvalues[:10].numpy(), exact[:10], rtol=1e-2)
    np.testing.assert_allclose(U.T @ U, np.eye(40), atol=1e-4)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_preconditioning_cuts_cg_steps_not_accuracy(precision):
    X, y = correlated_features()
    plain = TorchL2SVM(C=0.01, tol=1e-5, hessian_precision=precision).fit(X, y)
    sketched = TorchL2SVM(C=0.01, tol=1e-5, hessian_precision=precision, preconditioner_rank=32).fit(X, y)
    assert sketched.cg_iter_ < plain.cg_iter_ / 2
    assert abs(total_objective(sketched, X, y, 0.01) / total_objective(plain, X, y, 0.01) - 1) < 1e-5


def test_warm_start_reaches_the_same_solution():
    X, y = blobs()
    cold = TorchL2SVM(C=0.1, tol=1e-6).fit(X, y)
    warm = TorchL2SVM(C=0.01, tol=1e-6, warm_start=True).fit(X, y).set_params(C=0.1).fit(X, y)
    np.testing.assert_allclose(warm.coef_, cold.coef_, rtol=1e-3, atol=1e-5)


def test_validation_split_is_stratified_disjoint_and_seeded():
    y = np.arange(1000) % 10
    fit, val = validation_split(y, 0.1, seed=3)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == 1000
    assert np.all(np.bincount(y[val]) == 10)
    again, other = validation_split(y, 0.1, seed=3), validation_split(y, 0.1, seed=4)
    assert np.array_equal(again[1], val) and not np.array_equal(other[1], val)


class Spy:
    """Wraps an estimator factory and records every array handed to fit and predict."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, C):
        spy = self

        class Recorded:
            warm_start = False

            def fit(self, X, y):
                spy.calls.append(("fit", C, X.shape[0]))
                self.model = spy.inner(C).fit(X, y)
                return self

            def predict(self, X):
                spy.calls.append(("predict", C, X.shape[0]))
                return self.model.predict(X)

        return Recorded()


def test_c_is_never_chosen_with_test_data():
    """Test rows reach the classifier exactly once, after the last fit, at the C that won on validation;
    and the choice is identical whatever the test set holds."""
    X, y = blobs(n=700, noise=3.0)
    X_test, y_test = X[600:], y[600:]
    cfg = SvmConfig(solver="torch", c_grid=(1e-4, 1e-2, 1.0), val_fraction=0.2)
    spy = Spy(lambda C: make_classifier(cfg, C))
    selection = select_c(X[:600], y[:600], cfg, seed=0, factory=spy)
    fit_and_score(X[:600], y[:600], X_test, y_test, selection.best_c, spy)
    test_calls = [c for c in spy.calls if c == ("predict", selection.best_c, len(X_test))]
    assert len(test_calls) == 1 and spy.calls[-1] == test_calls[0]
    assert spy.calls[-2] == ("fit", selection.best_c, 600)
    assert all(n != len(X_test) for kind, _, n in spy.calls[:-1])
    best_on_val = max(selection.table, key=lambda row: row["val_accuracy"])["val_accuracy"]
    assert [r["val_accuracy"] for r in selection.table if r["C"] == selection.best_c] == [best_on_val]
    # selection depends on training data only: a different "test" set cannot move it
    again = select_c(X[:600], y[:600], cfg, seed=0, factory=lambda C: make_classifier(cfg, C))
    assert again.best_c == selection.best_c
    assert [r["val_accuracy"] for r in again.table] == [r["val_accuracy"] for r in selection.table]
    # the full protocol's own path (one array, refilled for the refit) keeps the same order and choice
    spy.calls.clear()
    outcome = run_full(X[:600], y[:600], X_test, y_test, cfg, 0, spy)
    assert outcome["chosen_C"] == selection.best_c and outcome["validation"] == [
        {**row, "fit_seconds": new["fit_seconds"]} for row, new in zip(selection.table, outcome["validation"])]
    assert spy.calls[-2:] == [("fit", selection.best_c, 600), ("predict", selection.best_c, len(X_test))]
    assert all(n != len(X_test) for kind, _, n in spy.calls[:-1])


def test_standardise_uses_training_statistics_only():
    train = np.array([[0.0], [2.0]], np.float32)
    test = np.array([[100.0]], np.float32)
    scaled_train, scaled_test = standardise(train, test)
    np.testing.assert_allclose(scaled_train.ravel(), [-1, 1])
    np.testing.assert_allclose(scaled_test.ravel(), [99])


def test_single_class_is_refused():
    with pytest.raises(UserError, match="two classes"):
        TorchL2SVM().fit(np.zeros((4, 2), np.float32), np.zeros(4))


def test_liblinear_path_runs():
    X, y = blobs(n=300)
    cfg = SvmConfig(solver="liblinear", c_grid=(1e-2,))
    selection = select_c(X, y, cfg, 0, lambda C: make_classifier(cfg, C))
    assert selection.best_c == 1e-2 and selection.table[0]["val_accuracy"] > 0.8


def test_standardisation_can_be_switched_off():
    train = np.array([[0.0], [2.0]], np.float32)
    (raw,) = standardise(train, enabled=False)
    np.testing.assert_array_equal(raw, train)
    assert raw is not train


def test_grid_edge_needs_a_strict_improvement():
    from dcgan_features.svm import at_grid_edge

    assert at_grid_edge({1e-3: 0.9, 1e-2: 0.8, 1e-1: 0.7}, 1e-3)
    assert not at_grid_edge({1e-3: 0.9, 1e-2: 0.9, 1e-1: 0.9}, 1e-3)  # a tie
    assert not at_grid_edge({1e-3: 0.8, 1e-2: 0.9, 1e-1: 0.7}, 1e-2)


def test_read_rows_from_a_memory_mapped_cache_matches_fancy_indexing(tmp_path, monkeypatch):
    """The file-read path (used so mapped pages do not count twice) returns exactly features[rows],
    in the requested order, across block boundaries; slices of a map take the plain path."""
    import dcgan_features.svm as svm_module

    monkeypatch.setattr(svm_module, "CHUNK_VALUES", 7 * 5)  # blocks of 5 rows
    data = np.random.default_rng(0).normal(size=(23, 7)).astype(np.float32)
    np.save(tmp_path / "f.npy", data)
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    rows = np.array([22, 0, 7, 6, 13, 1, 20])
    assert np.array_equal(svm_module.read_rows(mapped, rows), data[rows])
    assert np.array_equal(svm_module.read_rows(mapped[3:], rows[rows < 20]), data[3:][rows[rows < 20]])
    out = np.zeros((len(rows), 7), np.float32)
    assert svm_module.read_rows(mapped, rows, out=out) is out and np.array_equal(out, data[rows])
    assert np.array_equal(svm_module.read_rows(data, rows), data[rows])  # in-memory input


def test_plain_cg_converges_in_as_many_steps_as_the_hessian_has_distinct_eigenvalues():
    """Exact-arithmetic CG needs one step per distinct eigenvalue of H. Here H = I + 2C X^T X has three for
    the weights (X's centred, orthogonal columns at three scales) and one for the decoupled intercept, so a
    correct CG is done in a handful of steps; a search direction that aliases the residual is not."""
    from dcgan_features.svm import _conjugate_gradient

    torch.manual_seed(0)
    Q = torch.randn(200, 30)
    for _ in range(2):  # orthonormal and centred columns
        Q = torch.linalg.qr(Q - Q.mean(0)).Q
    X = (Q - Q.mean(0)) * torch.tensor([1.0, 10.0, 100.0]).repeat_interleave(10).sqrt() * 10
    _, steps = _conjugate_gradient(X, torch.ones(200, 2), torch.randn(31, 2), 0.5, max_iter=100, rel_tol=1e-6)
    assert steps <= 8
