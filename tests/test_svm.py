import numpy as np
import pytest
import torch
from sklearn.svm import LinearSVC

from dcgan_features.config import SvmConfig
from dcgan_features.errors import UserError
from dcgan_features.protocols import run_full
from dcgan_features.svm import (
    TorchL2SVM,
    fit_and_score,
    l2svm_objective,
    make_classifier,
    nystrom_sketch,
    select_c,
    validation_split,
)
from dcgan_features.svm_rows import standardise


def blobs(n=600, d=40, classes=5, seed=0, noise=2.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    y = np.arange(n) % classes
    return (centres[y] + noise * rng.normal(size=(n, d))).astype(np.float32), y


def total_objective(model, X, y, C):
    return sum(l2svm_objective(X, y, model.coef_[k:k + 1], model.intercept_[k:k + 1], C, model.classes_[k:k + 1])
               for k in range(len(model.classes_)))


def agreement(n, d, C, tol, precision, rank):
    """Relative objective gap and accuracy gap between our solver and a LinearSVC run to tol 1e-10."""
    X, y = blobs(n=n, d=d)
    k = 3 * n // 4
    X_train, X_test = standardise(X[:k], X[k:])
    ours = TorchL2SVM(C=C, tol=tol, hessian_precision=precision, preconditioner_rank=rank).fit(X_train, y[:k])
    reference = LinearSVC(C=C, dual="auto", tol=1e-10, max_iter=1_000_000).fit(X_train, y[:k])
    ours_obj, ref_obj = total_objective(ours, X_train, y[:k], C), total_objective(reference, X_train, y[:k], C)
    accuracy_gap = np.mean(ours.predict(X_test) == y[k:]) - np.mean(reference.predict(X_test) == y[k:])
    assert ours.converged_
    return (ours_obj - ref_obj) / ref_obj, accuracy_gap


# Bounds are a small factor above what the solver reached when this test was written (float32: at most 4.6e-9
# with n > d and 2.3e-7 with d > n at C = 1; bfloat16 Hessian products: 1.4e-5 with d > n at C = 1).
@pytest.mark.parametrize("precision,rank", [("float32", 0), ("bfloat16", 0), ("float32", 16), ("bfloat16", 16)])
@pytest.mark.parametrize("C", [1e-3, 1e-1, 1.0])
def test_torch_solver_agrees_with_liblinear(C, precision, rank):
    gap, accuracy_gap = agreement(600, 40, C, 1e-5, precision, rank)  # n > d: the full protocol's regime
    assert -1e-8 < gap < 2e-8 and accuracy_gap == 0
    gap, accuracy_gap = agreement(200, 400, C, 1e-5, precision, rank)  # d > n: the per-class regime
    assert -1e-8 < gap < (1e-6 if precision == "float32" else 5e-5) and accuracy_gap == 0


@pytest.mark.parametrize("tol,bound", [(1e-4, 1e-5), (1e-3, 2e-4)])  # the default config's tol, the paper config's
@pytest.mark.parametrize("n,d", [(600, 40), (200, 400)])
def test_production_tolerances_reach_the_optimum_closely_enough(n, d, tol, bound):
    for C, precision, rank in [(1e-3, "float32", 0), (1e-1, "float32", 0), (1e-3, "bfloat16", 16),
                               (1e-1, "bfloat16", 16)]:
        gap, accuracy_gap = agreement(n, d, C, tol, precision, rank)
        assert -1e-8 < gap < bound and accuracy_gap == 0, (C, precision, gap)


def test_a_solver_that_stops_early_says_so(monkeypatch):
    from sklearn.exceptions import ConvergenceWarning

    import dcgan_features.svm as svm
    from dcgan_features.protocols import run_full

    X, y = blobs()
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        model = TorchL2SVM(C=1.0, tol=1e-8, max_iter=1).fit(X, y)
    assert not model.converged_ and svm.convergence(model) == {"iterations": 1, "converged": False}
    assert svm.convergence(TorchL2SVM(C=1.0).fit(X, y))["converged"]
    # a line search that finds no acceptable step stops the solver, which says so, rather than taking the step
    monkeypatch.setattr(svm, "_line_search", lambda *a, **k: (torch.zeros(5, dtype=torch.float64), False))
    with pytest.warns(ConvergenceWarning, match="line search"):
        stalled = TorchL2SVM(C=1.0).fit(X, y)
    assert not stalled.converged_ and stalled.n_iter_ == 1 and np.all(stalled.coef_ == 0)
    # every fit of a protocol is recorded with its convergence
    cfg = SvmConfig(solver="torch", c_grid=(1e-3, 1e-1), max_iter=1, tol=1e-8)
    with pytest.warns(ConvergenceWarning):
        outcome = run_full(X[:500], y[:500], X[500:], y[500:], cfg, 0, lambda C: make_classifier(cfg, C))
    assert [(f["stage"], f["C"], f["converged"]) for f in outcome.fits] == [
        ("sweep", 1e-3, False), ("sweep", 1e-1, False), ("refit", outcome.chosen_C, False)]


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


def test_the_warm_refit_starts_from_the_sweeps_solution_and_reaches_the_same_optimum(monkeypatch):
    from dcgan_features import protocols

    X, y = blobs(n=1500, d=60)
    starts, fitted = [], []
    original = protocols.starting_from

    def spy(model, solution):
        starts.append(solution)
        fitted.append(model)
        return original(model, solution)

    monkeypatch.setattr(protocols, "starting_from", spy)
    outcomes = {}
    for warm in (False, True):
        cfg = SvmConfig(c_grid=(1e-3, 1e-2), tol=1e-5, warm_refit=warm)
        factory = lambda C, cfg=cfg: make_classifier(cfg, C)  # noqa: E731
        outcomes[warm] = run_full(X[:1200], y[:1200], X[1200:], y[1200:], cfg, 0, factory)
    cold, warm = fitted
    assert starts[0] is None and starts[1] is not None and starts[1][0].shape == warm.coef_.shape
    assert warm.n_iter_ < cold.n_iter_  # it started near the optimum
    scaled = standardise(X[:1200])[0]
    C = outcomes[True].chosen_C
    assert abs(total_objective(warm, scaled, y[:1200], C) / total_objective(cold, scaled, y[:1200], C) - 1) < 1e-5


def test_validation_split_is_stratified_disjoint_and_seeded():
    y = np.arange(1000) % 10
    fit, val = validation_split(y, 0.1, seed=3)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == 1000
    assert np.all(np.bincount(y[val]) == 10)
    again, other = validation_split(y, 0.1, seed=3), validation_split(y, 0.1, seed=4)
    assert np.array_equal(again[1], val) and not np.array_equal(other[1], val)


class Spy:
    """Wraps an estimator factory and records every call to fit and predict, with whether the array handed
    over holds a test row. Test rows are recognised by their content: their marker column is 100 before
    scaling, where training rows hold N(0, 1) noise, so after scaling with training statistics only test rows
    exceed 50."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, C):
        spy = self

        class Recorded:
            warm_start = False

            def fit(self, X, y):
                spy.calls.append(("fit", C, bool(np.any(np.asarray(X)[:, -1] > 50))))
                self.model = spy.inner(C).fit(X, y)
                return self

            def predict(self, X):
                spy.calls.append(("predict", C, bool(np.any(np.asarray(X)[:, -1] > 50))))
                return self.model.predict(X)

        return Recorded()


def marked_data(test_seed):
    """700 training rows and 100 test rows of another draw, the last column marking test rows by content."""
    X, y = blobs(n=700, noise=3.0)
    X_test, y_test = blobs(n=100, noise=3.0, seed=test_seed)
    X[:, -1] = np.random.default_rng(1).normal(size=len(X))
    X_test[:, -1] = 100.0
    return X, y, X_test, y_test


@pytest.mark.parametrize("protocol", ["select_c", "full"])
def test_c_is_never_chosen_with_test_data(protocol):
    """Test rows reach the classifier once, in the last call, a predict at the C that won on validation;
    and the choice and its validation table are identical whatever the test set holds."""
    cfg = SvmConfig(solver="torch", c_grid=(1e-4, 1e-2, 1.0), val_fraction=0.2)
    outcomes = []
    for test_seed in (1, 2):  # two different test sets
        X, y, X_test, y_test = marked_data(test_seed)
        spy = Spy(lambda C: make_classifier(cfg, C))
        if protocol == "full":
            outcome = run_full(X, y, X_test, y_test, cfg, 0, spy)
            best, table, accuracy = outcome.chosen_C, outcome.validation, outcome.test_accuracy
        else:
            selection = select_c(X, y, cfg, seed=0, factory=spy)
            best, table = selection.best_c, selection.table
            accuracy = fit_and_score(X, y, X_test, y_test, best, spy)["test_accuracy"]
        assert [call for call in spy.calls if call[2]] == [("predict", best, True)] == spy.calls[-1:]
        assert spy.calls[-2] == ("fit", best, False)
        assert max(table, key=lambda row: row["val_accuracy"])["C"] == best
        outcomes.append((best, [(r["C"], r["val_accuracy"]) for r in table], accuracy))
    (best_a, table_a, accuracy_a), (best_b, table_b, accuracy_b) = outcomes
    assert best_a == best_b and table_a == table_b
    assert accuracy_a != accuracy_b  # the test sets really differed


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
    import dcgan_features.svm_rows as svm_module

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
    # other views taken by rows (the per-class and SVHN protocols' draws) go through the same reads
    taken = svm_module.FittingViews((mapped, data))[rows].arrays
    assert all(type(a) is np.ndarray and np.array_equal(a, data[rows]) for a in taken)


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


def test_bfloat16_fitting_rows_are_the_float32_rows_rounded_with_their_views_and_the_same_scaler():
    from dcgan_features.svm_rows import FittingViews, fitting_matrix

    X, y = blobs(n=300, d=24)
    mirror, rows = X[:, ::-1].copy(), np.arange(0, 300, 2)
    exact, y32, scaler32 = fitting_matrix(X, y, rows, FittingViews((mirror,)))
    narrow, y16, scaler16 = fitting_matrix(X, y, rows, FittingViews((mirror,)), precision="bfloat16")
    assert narrow.dtype == torch.bfloat16 and narrow.shape == exact.shape == (300, 24)
    np.testing.assert_array_equal(y16, y32)
    np.testing.assert_allclose(scaler16.mean_, scaler32.mean_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(narrow.float().numpy(), exact, rtol=2**-8, atol=1e-6)  # 8 significant bits
    raw, _, none = fitting_matrix(X, y, rows, standardize=False, precision="bfloat16")
    assert none is None and torch.equal(raw, torch.from_numpy(X[rows]).to(torch.bfloat16))


@pytest.mark.parametrize("hessian", ["float32", "bfloat16"])
def test_the_solver_on_bfloat16_rows_solves_the_rounded_problem_widening_a_block_at_a_time(hessian, monkeypatch):
    from dcgan_features import svm

    X, y = correlated_features(n=1200, d=80)
    narrow = torch.from_numpy(X).to(torch.bfloat16)
    solver = dict(C=0.01, tol=1e-4, hessian_precision=hessian, preconditioner_rank=8)
    reference = TorchL2SVM(**solver).fit(narrow.float().numpy(), y)
    monkeypatch.setattr(svm, "WIDEN_VALUES", 80 * 100)  # 100 rows a block: 12 blocks
    widened = []
    original = svm._widened
    monkeypatch.setattr(svm, "_widened", lambda X, dtype: widened.append(X.dtype) or original(X, dtype))
    stored = TorchL2SVM(**solver).fit(narrow, y)
    assert stored.converged_ and widened and set(widened) == {torch.bfloat16}
    rounded = narrow.float().numpy()
    gap = total_objective(stored, rounded, y, 0.01) / total_objective(reference, rounded, y, 0.01) - 1
    assert abs(gap) < 1e-5
    np.testing.assert_array_equal(stored.predict(rounded), reference.predict(rounded))


def test_row_precision_is_refused_with_liblinear():
    with pytest.raises(UserError, match="needs svm.solver = torch"):
        SvmConfig(solver="liblinear", row_precision="bfloat16")
    with pytest.raises(UserError, match="row_precision"):
        SvmConfig(row_precision="float16")


@pytest.mark.parametrize("protocol", ["full", "validation"])
def test_bfloat16_rows_change_the_protocols_accuracy_by_rounding_only(protocol):
    from dcgan_features.protocols import run_validation
    from dcgan_features.svm_rows import FittingViews

    X, y = blobs(n=1500, d=60)
    views = FittingViews((X[:1200] + 0.1,))
    outcomes = {}
    for precision in ("float32", "bfloat16"):
        cfg = SvmConfig(c_grid=(1e-3, 1e-2), tol=1e-5, row_precision=precision)
        factory = lambda C, cfg=cfg: make_classifier(cfg, C)  # noqa: E731
        outcomes[precision] = (run_full(X[:1200], y[:1200], X[1200:], y[1200:], cfg, 0, factory, views)
                               if protocol == "full" else run_validation(X[:1200], y[:1200], cfg, 0, factory, views))
    plain, narrow = outcomes["float32"], outcomes["bfloat16"]
    assert narrow.n_fit == plain.n_fit == 2 * 1080  # the view joined the fitting rows
    for a, b in zip(plain.validation, narrow.validation):
        assert abs(a["val_accuracy"] - b["val_accuracy"]) <= 0.02 and a["val_accuracy"] > 0.5
    if protocol == "full":
        assert abs(plain.test_accuracy - narrow.test_accuracy) <= 0.02
