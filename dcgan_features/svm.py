"""The linear probe: an L2-regularised, squared-hinge (L2-loss) SVM, one-vs-rest.

Two solvers minimise the same objective as liblinear,
``0.5 * ||w||^2 + C * sum_i max(0, 1 - y_i (w . x_i + b))^2`` per class, with the intercept a
regularised extra feature of value 1 (liblinear's ``intercept_scaling=1``):

* ``liblinear``: scikit-learn's :class:`~sklearn.svm.LinearSVC` (float64 copies, one thread);
* ``torch``: :class:`TorchL2SVM`, a full-batch Newton-CG method on float32 in PyTorch with every
  class in one matrix product, which runs on CPU threads or a GPU and warm-starts along the C grid.

C is chosen on a validation split carved out of the training set (:func:`select_c`, which never
sees test data), then the model is refit on all training data and scored once on test
(:func:`fit_and_score`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.svm import LinearSVC

from .config import SvmConfig
from .errors import UserError
from .runtime import progress, settled_hessian_precision
from .svm_rows import FittingViews, fitting_matrix, scaled_views


class TorchL2SVM(ClassifierMixin, BaseEstimator):
    """One-vs-rest L2-loss linear SVM solved by Newton-CG with a backtracking line search.

    Each Newton step solves ``H s = -g`` with the generalised Hessian
    ``H v = v + 2C X_A^T (X_A v)`` (A: the margin violators) by conjugate gradients, for all classes
    at once, so one step costs a few (n x d) @ (d x K) products.
    """

    def __init__(self, C: float = 1.0, tol: float = SvmConfig.tol, max_iter: int = SvmConfig.max_iter,
                 device: str = "cpu",
                 warm_start: bool = False, hessian_precision: str = "float32", preconditioner_rank: int = 0):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.warm_start = warm_start
        self.hessian_precision = hessian_precision
        self.preconditioner_rank = preconditioner_rank

    def fit(self, X, y):
        """Fit on ``X``: an array (used as float32), or a torch tensor of rows stored in a narrower precision
        (:func:`svm_rows.fitting_matrix`), which the float32 sums widen a block at a time, never whole."""
        stored = isinstance(X, torch.Tensor) and X.dtype != torch.float32
        X_t = X.to(self.device) if stored else torch.as_tensor(np.asarray(X, dtype=np.float32), device=self.device)
        self.classes_, y_idx = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) < 2:
            raise UserError("the SVM needs at least two classes in its training data")
        Y = -torch.ones(X_t.shape[0], len(self.classes_), device=self.device)
        Y[torch.arange(X_t.shape[0]), torch.as_tensor(y_idx, device=self.device)] = 1.0
        W = torch.zeros(X_t.shape[1] + 1, len(self.classes_), device=self.device)  # last row: intercept
        if self.warm_start and getattr(self, "coef_", None) is not None and self.coef_.shape == W[:-1].T.shape:
            W[:-1], W[-1] = torch.as_tensor(self.coef_.T), torch.as_tensor(self.intercept_)
        # The Hessian products inside CG only steer the step (the objective, gradient and line search stay
        # float32), so they may run on a bfloat16 copy: half the bytes, and much faster CPU kernels. Rows already
        # stored narrower serve as they are (widened a block at a time where the products are float32).
        precision = getattr(torch, self.hessian_precision)
        X_h = X_t if stored else X_t.to(precision)
        # Features of a conv net are strongly correlated: X^T X has a few huge eigenvalues, which is what
        # makes plain CG slow. A rank-r sketch of them preconditions CG (two passes over X, once per fit).
        sketch = nystrom_sketch(X_h, self.preconditioner_rank) if self.preconditioner_rank > 0 else None
        W, self.n_iter_, self.cg_iter_, stalled = _newton_cg(X_t, X_h, Y, W, self.C, self.tol, self.max_iter, sketch,
                                                             precision)
        self.converged_ = not stalled and self.n_iter_ < self.max_iter
        if stalled:
            warnings.warn(f"TorchL2SVM at C={self.C:g}: the line search found no step that decreases the objective "
                          f"after {self.n_iter_} Newton steps; stopped short of tol={self.tol:g}", ConvergenceWarning,
                          stacklevel=2)
        elif not self.converged_:
            warnings.warn(f"TorchL2SVM at C={self.C:g} stopped at max_iter={self.max_iter} Newton steps before its "
                          f"gradient fell below tol={self.tol:g}; raise svm.max_iter", ConvergenceWarning,
                          stacklevel=2)
        self.coef_, self.intercept_ = W[:-1].T.cpu().numpy(), W[-1].cpu().numpy()
        return self

    def decision_function(self, X):
        return np.asarray(X, dtype=np.float32) @ self.coef_.T + self.intercept_

    def predict(self, X):
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


def l2svm_objective(X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: np.ndarray, C: float,
                    classes: np.ndarray) -> float:
    """liblinear's primal objective summed over the one-vs-rest classes (float64), for comparisons."""
    Y = np.where(np.asarray(y)[:, None] == classes[None, :], 1.0, -1.0)
    margins = np.maximum(0.0, 1.0 - Y * (X.astype(np.float64) @ coef.T.astype(np.float64) + intercept))
    return float(0.5 * (np.sum(coef.astype(np.float64) ** 2) + np.sum(intercept.astype(np.float64) ** 2))
                 + C * np.sum(margins**2))


# Values per block when rows held in bfloat16 are widened for a float32 product: 4 MB as float32, small enough to
# stay in cache for its product (64 MB blocks took 2.5x as long on a Zen 4: `_xt` of 20,000 x 20,160 rows).
WIDEN_VALUES = 1 << 20


def _widened(X: torch.Tensor, dtype: torch.dtype):
    """(first row, block) over X's rows in ``dtype``: rows stored in a narrower precision are widened a block at a
    time, never as a whole."""
    step = max(1, WIDEN_VALUES // max(1, X.shape[1]))
    for start in range(0, X.shape[0], step):
        yield start, X[start:start + step].to(dtype)


def _scores(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """X W plus the intercept row, in W's precision."""
    if X.dtype == W.dtype:
        return torch.addmm(W[-1:], X, W[:-1])
    out = torch.empty(X.shape[0], W.shape[1], dtype=W.dtype, device=W.device)
    for start, block in _widened(X, W.dtype):
        out[start:start + len(block)] = torch.addmm(W[-1:], block, W[:-1])
    return out


def _xt(X: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """X^T R in R's precision, computed as (R^T X)^T: several times faster on CPU BLAS for a tall X and few
    columns."""
    if X.dtype == R.dtype:
        return (R.T @ X).T
    out = torch.zeros(X.shape[1], R.shape[1], dtype=R.dtype, device=R.device)
    for start, block in _widened(X, R.dtype):
        out += (R[start:start + len(block)].T @ block).T
    return out


def _objective(X, Y, W, Z, C):
    """Per-class objective (K,), gradient and the active (margin-violating) mask, given the scores Z = X W."""
    slack = 1.0 - Y * Z
    active = (slack > 0).to(slack.dtype)
    residual = -Y * slack * active  # d/dz of 0.5 * slack^2 where active
    grad = W.clone()
    grad[:-1] += 2 * C * _xt(X, residual)
    grad[-1] += 2 * C * residual.sum(0)
    per_class = 0.5 * (W.double() ** 2).sum(0) + C * ((slack * active).double() ** 2).sum(0)
    return per_class, grad, active


def _hessian_product(X_h, active, V, C, precision):
    """H V for every class, with the products in ``precision`` and the sums in float32."""
    XV = _scores(X_h, V.to(precision)).float() * active
    HV = V.clone()
    HV[:-1] += 2 * C * _xt(X_h, XV.to(precision)).float()
    HV[-1] += 2 * C * XV.sum(0)
    return HV


def _conjugate_gradient(X_h, active, grad, C, max_iter: int, precondition=None, rel_tol: float = 0.1,
                        precision=torch.float32):
    """Solve H S = -grad column by column (all columns in the same products) by preconditioned CG, to a
    relative residual of ``rel_tol`` (liblinear's choice); returns the step and the number of iterations.
    ``precondition`` applies an approximate inverse of H to the residual (the identity when None)."""
    precondition = precondition or torch.clone  # CG updates R in place, so P must never alias it
    S = torch.zeros_like(grad)
    R = -grad.clone()
    P = precondition(R)
    rz = (R * P).sum(0)
    stop = rel_tol**2 * (R * R).sum(0)
    for iteration in range(max_iter):
        done = (R * R).sum(0) <= stop
        if bool(done.all()):
            return S, iteration
        HP = _hessian_product(X_h, active, P, C, precision)
        alpha = rz / (P * HP).sum(0).clamp_min(1e-30)
        alpha = torch.where(done, torch.zeros_like(alpha), alpha)  # converged columns stay put
        S += alpha * P
        R -= alpha * HP
        Z = precondition(R)
        rz_new = (R * Z).sum(0)
        P = Z + (rz_new / rz.clamp_min(1e-30)) * P
        rz = rz_new
    return S, max_iter


def nystrom_sketch(X_h: torch.Tensor, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top eigenpairs (U: d x r, eigenvalues: r) of X^T X from a randomised sketch: two passes over X.

    The Nystrom approximation of X^T X with test matrix omega, X^T P X with P the projector onto the range
    of X omega (Frangella, Tropp & Udell 2023, "Randomized Nystrom preconditioning"), computed as a
    randomised SVD of X (Halko, Martinsson & Tropp 2011), which needs no Cholesky factor or stabilising
    shift. It only steers CG, so products in bfloat16 cost speed at worst, never accuracy."""
    rank = min(rank, *X_h.shape)
    generator = torch.Generator(device=X_h.device).manual_seed(seed)
    omega = torch.randn(X_h.shape[1], rank, generator=generator, device=X_h.device)
    Q = torch.linalg.qr((X_h @ omega.to(X_h.dtype)).float()).Q  # n x r: an orthonormal basis of X omega
    U, singular, _ = torch.linalg.svd(_xt(X_h, Q.to(X_h.dtype)).float(), full_matrices=False)  # X^T Q = U S V^T
    return U, singular**2


def _nystrom_preconditioner(U, eigenvalues, active, C):
    """The inverse of each class's Nystrom-approximated Hessian, I + 2C f_k U diag(eigenvalues) U^T, where
    f_k is the class's fraction of active rows (the sketch is of all rows). Beyond the sketch the
    Hessian is taken as (lambda_r + 1) I, the sketch's smallest eigenvalue plus the regulariser."""
    curvature = 2 * C * active.mean(0)[None, :] * eigenvalues[:, None]  # r x K
    scale = (curvature[-1:] + 1) / (curvature + 1) - 1

    def precondition(R):
        out = R.clone()  # the intercept row is left as it is
        out[:-1] += U @ ((U.T @ R[:-1]) * scale)
        return out

    return precondition


def _newton_cg(X, X_h, Y, W, C: float, tol: float, max_iter: int, sketch=None, precision=torch.float32):
    """Minimise every class's objective; stop when ||grad|| <= tol * ||grad at w = 0|| for each class.
    With ``sketch`` (from :func:`nystrom_sketch`) CG is preconditioned. Returns the weights, the Newton and
    CG steps taken, and whether the line search stalled (no step passed its test: stopped there).
    Reaching ``max_iter`` returns ``max_iter`` steps, which the caller reports as not converged."""
    grad0_norm = (2 * C * torch.cat([_xt(X, Y), Y.sum(0, keepdim=True)])).norm(dim=0)  # gradient at W = 0
    cg_total = 0
    Z = _scores(X, W)  # kept up to date along the steps, as liblinear does: one product per step saved
    for iteration in range(1, max_iter + 1):
        f, grad, active = _objective(X, Y, W, Z, C)
        if bool((grad.norm(dim=0) <= tol * grad0_norm).all()):
            return W, iteration - 1, cg_total, False
        precondition = None if sketch is None else _nystrom_preconditioner(*sketch, active, C)
        S, cg_steps = _conjugate_gradient(X_h, active, grad, C, max_iter=500, precondition=precondition,
                                          precision=precision)
        cg_total += cg_steps
        U = _scores(X, S)
        step, ok = _line_search(Y, W, Z, U, S, grad, f, C)
        step = step.to(W.dtype)
        W, Z = W + step * S, Z + step * U
        if not ok:
            return W, iteration, cg_total, True
    return W, max_iter, cg_total, False


def _line_search(Y, W, Z, U, S, grad, f, C, shrink: float = 0.5, armijo: float = 0.01, trials: int = 30):
    """Backtracking per class from the full Newton step, given the scores Z = X W and U = X S: every
    trial is computed from those two, with no further pass over X. Returns the step per class, and whether
    every class found one that passes the Armijo test; a class that found none gets step 0 (stays put)."""
    slope = (grad * S).sum(0).double()
    step = torch.ones(W.shape[1], dtype=torch.float64, device=W.device)
    for _ in range(trials):
        W_try = W + step.to(W.dtype) * S
        slack = (1.0 - Y * (Z + step.to(W.dtype) * U)).clamp_min(0)
        f_try = 0.5 * (W_try.double() ** 2).sum(0) + C * (slack.double() ** 2).sum(0)
        ok = f_try <= f + armijo * step * slope
        if bool(ok.all()):
            return step, True
        step = torch.where(ok, step, step * shrink)
    return torch.where(ok, step, torch.zeros_like(step)), False


def make_classifier(cfg: SvmConfig, C: float, device: str = "cpu"):
    """The configured solver at one C, as a scikit-learn estimator."""
    if cfg.solver == "liblinear":
        return LinearSVC(C=C, penalty="l2", loss="squared_hinge", dual="auto", tol=cfg.tol, max_iter=cfg.max_iter)
    # evaluate has settled "auto" already, for its records; settling here too serves direct callers
    precision = settled_hessian_precision(cfg.hessian_precision, torch.device(device))
    return TorchL2SVM(C=C, tol=cfg.tol, max_iter=cfg.max_iter, device=device, warm_start=True,
                      hessian_precision=precision, preconditioner_rank=cfg.preconditioner_rank)


ClassifierFactory = Callable[[float], BaseEstimator]


@dataclass(frozen=True)
class Selection:
    """The outcome of the C sweep on the validation split."""

    best_c: float
    table: list[dict]  # [{"C": ..., "val_accuracy": ..., "fit_seconds": ...}] in grid order
    n_fit: int
    n_val: int
    at_grid_edge: bool = False  # the best C is the grid's end and strictly beats its neighbour
    solution: tuple[np.ndarray, np.ndarray] | None = None  # (coef, intercept) at best_c, from a warm-starting solver


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, validation) row indices into the training set, identical for the same seed."""
    rows = np.arange(len(labels))
    try:
        fit_rows, val_rows = train_test_split(rows, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as exc:
        raise UserError(f"cannot carve a stratified validation split from {len(labels)} training images: "
                        f"{exc}") from None
    return np.sort(fit_rows), np.sort(val_rows)


def select_c(features: np.ndarray, labels: np.ndarray, cfg: SvmConfig, seed: int,
             factory: ClassifierFactory, fit_views: FittingViews | None = None, label: str | None = None,
             scoring_views: FittingViews | np.ndarray | None = None) -> Selection:
    """Choose C by accuracy on a validation split of the training set. Takes no test data by design.

    ``fit_views`` (other views of the same images: the mirror, shifted copies) join the fitting rows;
    ``scoring_views`` (other views scored beside each image: the mirror under ``svm.score_hflip``, shifted copies
    under ``svm.score_translate``) score each validation row by the mean decision over all its views."""
    fit_rows, val_rows = validation_split(labels, cfg.val_fraction, seed)
    x_fit, y_fit, scaler = fitting_matrix(features, labels, fit_rows, fit_views, cfg.standardize, cfg.row_precision)
    val_views = scaled_views(features, scoring_views, val_rows, scaler)
    return sweep_c(x_fit, y_fit, val_views[0], labels[val_rows], cfg, factory, label, val_views[1:])


def predict_views(model, X: np.ndarray, *others: np.ndarray) -> np.ndarray:
    """The model's labels for ``X``; with ``others`` (other views of the same images: flipped left-right under
    ``svm.score_hflip``, shifted under ``svm.score_translate``), for the mean decision over all the views."""
    if not others:
        return model.predict(X)
    decision = sum((model.decision_function(view) for view in others), model.decision_function(X))
    if decision.ndim == 1:  # a two-class LinearSVC: one column, positive for classes_[1]
        return model.classes_[(decision > 0).astype(int)]
    return model.classes_[np.argmax(decision, axis=1)]


def sweep_c(x_fit: np.ndarray, y_fit: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, cfg: SvmConfig,
            factory: ClassifierFactory, label: str | None = None,
            x_val_views: tuple[np.ndarray, ...] = ()) -> Selection:
    """Fit every C of the grid on (x_fit, y_fit) and score it on the validation arrays (with ``label``, a progress
    bar over the grid; with ``x_val_views``, by the mean decision over each image and those other views of it).

    The grid is swept from small to large C so a warm-starting solver starts near its answer;
    ties go to the smaller C (the stronger regularisation), as in :func:`choose_c`."""
    table, solutions, model = {}, {}, None
    last = ""
    with progress(len(cfg.c_grid), label, lambda: last) as bar:
        for C in sorted(cfg.c_grid):
            start = time.perf_counter()
            model = _refit(model, factory, C).fit(x_fit, y_fit)
            accuracy = float(np.mean(predict_views(model, x_val, *x_val_views) == y_val))
            table[C] = {"C": C, "val_accuracy": accuracy, "fit_seconds": round(time.perf_counter() - start, 3),
                        **convergence(model)}
            if getattr(model, "warm_start", False):  # a solver that can start from a solution: keep each one
                solutions[C] = (model.coef_.copy(), model.intercept_.copy())
            last = f"C={C:g}: {100 * accuracy:.2f}% on validation"
            bar.update(1)
    best, edge = choose_c({c: row["val_accuracy"] for c, row in table.items()})
    return Selection(best, [table[C] for C in cfg.c_grid], len(y_fit), len(y_val), edge, solutions.get(best))


def starting_from(model, solution: tuple[np.ndarray, np.ndarray] | None):
    """``model`` set to start its fit from ``solution`` (coef, intercept) where it can warm-start; else as it was."""
    if solution is not None and getattr(model, "warm_start", False):
        model.coef_, model.intercept_ = (array.copy() for array in solution)
    return model


def choose_c(val_accuracy: dict[float, float]) -> tuple[float, bool]:
    """The C with the highest validation accuracy (ties go to the smaller C, the stronger
    regularisation), and whether it sits at the edge of the grid (see :func:`at_grid_edge`)."""
    best = max(sorted(val_accuracy), key=lambda c: val_accuracy[c])
    return best, at_grid_edge(val_accuracy, best)


def at_grid_edge(val_accuracy: dict[float, float], best: float) -> bool:
    """True when the chosen C is the grid's smallest or largest and strictly beats its neighbour there,
    i.e. the optimum may lie outside the grid (a tie across the grid is no such evidence)."""
    grid = sorted(val_accuracy)
    if len(grid) < 2 or best not in (grid[0], grid[-1]):
        return False
    neighbour = grid[1] if best == grid[0] else grid[-2]
    return val_accuracy[best] > val_accuracy[neighbour]


def convergence(model) -> dict:
    """The solver's iterations and whether it met its tolerance, for the result file. LinearSVC has no
    flag of its own: it converged when it stopped before ``max_iter`` (as its ConvergenceWarning says)."""
    iterations = int(np.max(getattr(model, "n_iter_", -1)))
    converged = getattr(model, "converged_", iterations < getattr(model, "max_iter", np.inf))
    return {"iterations": iterations, "converged": bool(converged)}


def _refit(previous, factory: ClassifierFactory, C: float):
    """Reuse the previous estimator (keeping its solution for warm starts) where it supports that."""
    if previous is not None and getattr(previous, "warm_start", False):
        return previous.set_params(C=C)
    return factory(C)


def fit_and_score(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  C: float, factory: ClassifierFactory, standardize: bool = True,
                  fit_views: FittingViews | None = None, test_views: FittingViews | np.ndarray | None = None,
                  row_precision: str = "float32") -> dict:
    """Refit on the whole training set (and its other views, when given; its rows stored in ``row_precision``) at
    ``C`` and score the test set, once (inputs are left alone); with ``test_views`` (other views of the test images),
    by each test image's mean decision over all its views."""
    x_train, y_train, scaler = fitting_matrix(train_x, train_y, np.arange(len(train_y)), fit_views, standardize,
                                              row_precision)
    x_test = scaled_views(test_x, test_views, np.arange(len(test_y)), scaler)
    start = time.perf_counter()
    model = factory(C).fit(x_train, y_train)
    fit_seconds = time.perf_counter() - start
    accuracy = float(np.mean(predict_views(model, *x_test) == test_y))
    return {"test_accuracy": accuracy, "C": C, "fit_seconds": round(fit_seconds, 3), **convergence(model)}
