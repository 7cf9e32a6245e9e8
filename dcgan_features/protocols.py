"""Evaluation protocols: how labelled training data, validation data and test data are used.

Every protocol chooses C from validation data carved out of its labelled training data, then scores
the test set with models refit at that C. No function that chooses C receives test data.

* ``full``: all training images; one stratified validation split; refit on everything; test once.
* ``per-class``: ``draws`` class-balanced samples of ``labels_per_class`` labelled images each (the
  paper's "400 per class" CIFAR-10 column). Each draw holds out a stratified validation part of its
  own labelled images; C maximises the mean validation accuracy over draws; each draw is then refit on
  all its labelled images at that C and scored on test; the result is the mean and std over draws.
* ``svhn-1000``: the authors' SVHN protocol (:func:`run_svhn_1000`): a fixed validation split, draws of
  100 labels per class from the rest, C by mean validation accuracy, then many test draws.
* ``knn``: weighted k-nearest neighbours on cosine similarity (DINO's ``eval_knn``, :mod:`knn`): k chosen on the
  ``full`` protocol's validation split, then every training image votes for each test image, once.
* ``validation``: the ``full`` protocol's C sweep alone (:func:`run_validation`). It reports the best
  validation accuracy and never sees the test split, so recipes and checkpoints can be chosen with it.

Each protocol is one :class:`Protocol` in :data:`PROTOCOLS`, the registry that the CLI (its choices and help),
``evaluate``, the result record, the report and the run page read: a protocol added there is offered, run,
stored, summarised and reported with nothing else to change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .config import BASELINES, DATASETS, DEVICES, SELECTIONS, SvmConfig
from .errors import UserError
from .knn import choose_k, test_accuracy_at
from .runtime import progress
from .svm import (
    ClassifierFactory,
    at_grid_edge,
    choose_c,
    convergence,
    fit_and_score,
    predict_views,
    select_c,
    starting_from,
)
from .svm_rows import fitting_matrix, read_rows, scaled_views


@dataclass(frozen=True)
class Outcome:
    """What a protocol measured. ``details`` holds the protocol's own numbers (per-draw scores, their spread),
    written into the result file beside the common fields."""

    test_accuracy: float | None  # None for the validation protocol, which never sees test data
    chosen_C: float | None  # None for a protocol without C (knn: its chosen k is in ``details``)
    validation: list[dict]  # the C -> validation accuracy table that chose C, in grid order
    c_at_grid_edge: bool
    fits: list[dict]  # every SVM fit: stage, C, iterations, converged
    n_train: int
    n_fit: int | None
    n_val: int | None
    timings: dict
    details: dict = field(default_factory=dict)


SWEEP_LABEL = "SVM: C sweep"


def _counted(bar, value):
    """``value``, after advancing ``bar`` by one (progress inside a comprehension)."""
    bar.update(1)
    return value


def fit_log(stage: str, fits: list[dict], **where) -> list[dict]:
    """One record per SVM fit (which stage, at which C, iterations, converged) for the result file, so a
    solver that stopped early is visible in every protocol."""
    return [{"stage": stage, **where, "C": f["C"], "iterations": f["iterations"], "converged": f["converged"]}
            for f in fits]


def run_full(train_x, train_y, test_x, test_y, cfg: SvmConfig, seed: int, factory: ClassifierFactory,
             fit_views=None, val_views=None, test_views=None) -> dict:
    """All training images: C on a stratified validation split, refit on everything, test once.

    With ``fit_views`` (other views of the training images: mirror, shifted copies) every fitting row is joined
    by its other views; validation and test rows never are. With ``val_views`` and ``test_views`` (other views of
    the training and test images: the mirror under ``svm.score_hflip``, shifted copies under
    ``svm.score_translate``) each validation and test image is scored by the mean decision over all its views.
    The arrays are built one at a time, so the sweep's, the refit's and the test's copies never coexist."""
    start = time.perf_counter()
    selection = select_c(train_x, train_y, cfg, seed, factory, fit_views, label=SWEEP_LABEL, scoring_views=val_views)
    select_s = time.perf_counter() - start
    X, y, scaler = fitting_matrix(train_x, train_y, np.arange(len(train_y)), fit_views, cfg.standardize,
                                  cfg.row_precision)
    start = time.perf_counter()
    with progress(1, f"SVM: refit on {len(y):,} rows at C={selection.best_c:g}") as bar:
        start_at = selection.solution if cfg.warm_refit else None
        model = starting_from(factory(selection.best_c), start_at).fit(X, y)
        bar.update(1)
    refit_s = time.perf_counter() - start
    del X
    views = scaled_views(test_x, test_views, np.arange(len(test_y)), scaler)
    fits = fit_log("sweep", selection.table) + fit_log("refit", [{"C": selection.best_c, **convergence(model)}])
    return Outcome(float(np.mean(predict_views(model, *views) == test_y)), selection.best_c, selection.table,
                   selection.at_grid_edge, fits, int(len(train_y)), selection.n_fit, selection.n_val,
                   {"select_c_s": round(select_s, 2), "refit_s": round(refit_s, 3)})


def run_validation(train_x, train_y, cfg: SvmConfig, seed: int, factory: ClassifierFactory,
                   fit_views=None, val_views=None) -> Outcome:
    """The ``full`` protocol's selection alone: C swept on the same stratified validation split of the training
    set (the same seed gives the same split), and the best validation accuracy reported. Takes no test data."""
    start = time.perf_counter()
    selection = select_c(train_x, train_y, cfg, seed, factory, fit_views, label=SWEEP_LABEL, scoring_views=val_views)
    best = next(row["val_accuracy"] for row in selection.table if row["C"] == selection.best_c)
    return Outcome(None, selection.best_c, selection.table, selection.at_grid_edge, fit_log("sweep", selection.table),
                   int(len(train_y)), selection.n_fit, selection.n_val,
                   {"select_c_s": round(time.perf_counter() - start, 2)}, {"validation_accuracy": best})


def run_knn(train_x, train_y, test_x, test_y, cfg: SvmConfig, seed: int, ks: tuple[int, ...],
            temperature: float) -> Outcome:
    """Weighted kNN (:mod:`knn`): k chosen on the ``full`` protocol's validation split, then every training image
    votes for each test image, once. Features are read with one view, as the paper's."""
    start = time.perf_counter()
    val, best, n_fit, n_val = choose_k(train_x, train_y, cfg, seed, ks, temperature)
    select_s, start = time.perf_counter() - start, time.perf_counter()
    test = test_accuracy_at(best, train_x, train_y, test_x, test_y, temperature, cfg.standardize)
    return Outcome(test, None, [{"k": k, "val_accuracy": val[k]} for k in ks], at_grid_edge(val, best), [],
                   int(len(train_y)), n_fit, n_val,
                   {"select_k_s": round(select_s, 2), "test_s": round(time.perf_counter() - start, 2)},
                   {"chosen_k": best, "temperature": temperature, "validation_accuracy": val[best]})


def summarise_draws(val_accuracy: dict[float, list[float]], cfg: SvmConfig) -> tuple[float, list[dict], bool]:
    """C by the mean validation accuracy over draws; the table of means and stds in grid order; the edge flag."""
    means = {c: float(np.mean(v)) for c, v in val_accuracy.items()}
    best, edge = choose_c(means)
    rows = [{"C": c, "val_accuracy": means[c], "val_accuracy_std": float(np.std(val_accuracy[c]))} for c in cfg.c_grid]
    return best, rows, edge


def class_balanced_draw(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of ``per_class`` images of every class, drawn without replacement, sorted."""
    classes, counts = np.unique(labels, return_counts=True)
    if per_class > counts.min():
        scarce = classes[counts.argmin()]
        raise UserError(f"--labels-per-class {per_class} is more than class {scarce} has ({counts.min()} images)")
    rows = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(rows))


def rows_of(views, rows: np.ndarray):
    """Those rows of other views (a ``FittingViews``), or None where there are none."""
    return None if views is None else views[rows]


def run_per_class(train_x, train_y, test_x, test_y, cfg: SvmConfig, seed: int, factory: ClassifierFactory,
                  labels_per_class: int, draws: int, fit_views=None, val_views=None, test_views=None) -> dict:
    """``draws`` class-balanced draws of ``labels_per_class`` labelled images; C by the mean validation accuracy
    over the draws' own validation parts; each draw refit at that C and scored on test (other views as in
    :func:`run_full`)."""
    if draws < 1:
        raise UserError("--draws must be at least 1")
    start = time.perf_counter()
    pools = [class_balanced_draw(train_y, labels_per_class, np.random.default_rng([seed, d])) for d in range(draws)]
    # Selection: every draw's own validation split, C by the mean validation accuracy over draws.
    with progress(draws, f"SVM: C sweep on each of {draws} draws") as bar:
        tables = [_counted(bar, select_c(read_rows(train_x, rows), train_y[rows], cfg, seed + d, factory,
                                         rows_of(fit_views, rows), scoring_views=rows_of(val_views, rows)).table)
                  for d, rows in enumerate(pools)]
    best, validation, edge = summarise_draws({row["C"]: [t[i]["val_accuracy"] for t in tables]
                                              for i, row in enumerate(tables[0])}, cfg)
    select_s = time.perf_counter() - start
    # Test: each draw refit on all its labelled images at the chosen C.
    start = time.perf_counter()
    with progress(draws, f"SVM: refit each draw at C={best:g}") as bar:
        refits = [_counted(bar, fit_and_score(read_rows(train_x, rows), train_y[rows], test_x, test_y, best, factory,
                                              cfg.standardize, rows_of(fit_views, rows), test_views,
                                              cfg.row_precision))
                  for rows in pools]
    accuracies = [r["test_accuracy"] for r in refits]
    fits = [f for d, t in enumerate(tables) for f in fit_log("sweep", t, draw=d)] + \
        [f for d, r in enumerate(refits) for f in fit_log("refit", [r], draw=d)]
    std = float(np.std(accuracies, ddof=1)) if draws > 1 else 0.0
    return Outcome(float(np.mean(accuracies)), best, validation, edge, fits,
                   labels_per_class * len(np.unique(train_y)), None, None,
                   {"select_c_s": round(select_s, 2), "refit_s": round(time.perf_counter() - start, 2)},
                   {"test_accuracy_std": std, "test_accuracy_per_draw": accuracies,
                    "labels_per_class": labels_per_class, "draws": draws})


def svhn_shuffle(n: int, val_size: int, split_seed: int = 42) -> np.ndarray:
    """The authors' SVHN split: the training set shuffled with ``split_seed``; the first ``val_size`` rows of this
    order are validation, the rest the labelled pool (and, in this order, the images of their BN statistics)."""
    if val_size >= n:
        raise UserError(f"the validation split ({val_size}) must be smaller than the training set ({n})")
    return np.random.RandomState(split_seed).permutation(n)


def run_svhn_1000(train_x, train_y, test_x, test_y, cfg: SvmConfig, seed: int, factory: ClassifierFactory,
                  labels_per_class: int = 100, val_draws: int = 10, test_draws: int = 100, val_size: int = 10_000,
                  split_seed: int = 42, fit_views=None, val_views=None, test_views=None) -> dict:
    """The authors' SVHN protocol (Radford et al. 2015, Table 2).

    Shuffle the training images with ``split_seed``; the first ``val_size`` are validation, the rest the
    labelled pool. For each C, ``val_draws`` class-balanced draws of ``labels_per_class`` images are fitted
    and scored on validation; the best mean wins. Then ``test_draws`` fresh draws are fitted at that C and
    scored on test. Reports the mean test error, its std and 1.96 x std (the paper's ±)."""
    order = svhn_shuffle(len(train_y), val_size, split_seed)
    val_rows, pool_rows = np.sort(order[:val_size]), np.sort(order[val_size:])
    draw = lambda k: pool_rows[class_balanced_draw(train_y[pool_rows], labels_per_class,  # noqa: E731
                                                   np.random.default_rng([seed, k]))]
    start = time.perf_counter()
    val_x, val_y = read_rows(train_x, val_rows), train_y[val_rows]
    val_x_views = rows_of(val_views, val_rows)
    fit = lambda rows, x, y, C, x_views: fit_and_score(  # noqa: E731
        read_rows(train_x, rows), train_y[rows], x, y, C, factory, cfg.standardize,
        rows_of(fit_views, rows), x_views, cfg.row_precision)
    with progress(len(cfg.c_grid) * val_draws, f"SVM: {val_draws} validation draws per C") as bar:
        val_fits = {C: [_counted(bar, fit(rows, val_x, val_y, C, val_x_views)) for rows in map(draw, range(val_draws))]
                    for C in sorted(cfg.c_grid)}
    best, validation, edge = summarise_draws({C: [f["test_accuracy"] for f in fits]
                                              for C, fits in val_fits.items()}, cfg)
    select_s = time.perf_counter() - start
    start = time.perf_counter()
    with progress(test_draws, f"SVM: {test_draws} test draws at C={best:g}") as bar:
        test_fits = [_counted(bar, fit(rows, test_x, test_y, best, test_views))
                     for rows in map(draw, range(val_draws, val_draws + test_draws))]
    errors = np.array([1 - f["test_accuracy"] for f in test_fits])
    std = float(errors.std(ddof=1)) if test_draws > 1 else 0.0
    fits = [f for C in val_fits for d, r in enumerate(val_fits[C]) for f in fit_log("validation", [r], draw=d)] + \
        [f for d, r in enumerate(test_fits) for f in fit_log("test", [r], draw=val_draws + d)]
    return Outcome(float(1 - errors.mean()), best, validation, edge, fits,
                   labels_per_class * len(np.unique(train_y)), None, int(val_size),
                   {"select_c_s": round(select_s, 2), "refit_s": round(time.perf_counter() - start, 2)},
                   {"test_error_std": std, "test_error_ci95": 1.96 * std, "test_error_per_draw": errors.tolist(),
                    "labels_per_class": labels_per_class, "val_draws": val_draws, "test_draws": test_draws})


@dataclass(frozen=True)
class ProtocolInputs:
    """What every protocol is given: the (memory-mapped) features and labels, the SVM settings, the seed, the
    classifier factory, the other views of the training images that join the fitting rows (``FittingViews``), and the
    other views of the training and test images scored beside each image (``svm.score_hflip``, ``score_translate``)."""

    train_x: Any
    train_y: np.ndarray
    test_x: Any
    test_y: np.ndarray | None
    svm: SvmConfig
    seed: int
    factory: ClassifierFactory
    fit_views: Any = None
    val_views: Any = None
    test_views: Any = None

    @property
    def views(self) -> dict[str, Any]:
        """The other views' features as the protocol functions take them (keyword arguments)."""
        return {"fit_views": self.fit_views, "val_views": self.val_views, "test_views": self.test_views}

    @property
    def arrays(self) -> tuple:
        return (self.train_x, self.train_y, self.test_x, self.test_y, self.svm, self.seed, self.factory)


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: its name and help, the labels it uses by default, how it runs, how its result is
    labelled (the result's ``protocol`` field, from the settings that change the outcome), which field holds its
    score, and the line that summarises a result of it."""

    name: str
    help: str
    run: Callable[[ProtocolInputs, "EvalConfig"], Outcome]
    label: Callable[["EvalConfig"], str]
    summary: Callable[[dict], str]
    reads_test: bool = True  # False: it never loads the test split (its results choose recipes, not report them)
    default_labels: int = 0  # labelled images per class when --labels-per-class is not given (0: all)
    label_prefix: str = ""  # labels of older results start with this (empty: the label is the name)
    uses_views: bool = True  # whether it reads other views (svm.train_hflip, train_translate, score_*) at all

    @property
    def score(self) -> str:
        """The result field the report aggregates (test accuracy), or validation accuracy where test is never read."""
        return "test_accuracy" if self.reads_test else "validation_accuracy"


def _full_summary(r: dict) -> str:
    return (f"test accuracy at C={r['chosen_C']:.0e}, refit on all {r['n_train']:,} training images: "
            f"{100 * r['test_accuracy']:.2f}%  ({r['n_test']:,} test images)")


def _validation_summary(r: dict) -> str:
    return (f"validation accuracy at C={r['chosen_C']:.0e}: {100 * r['validation_accuracy']:.2f}% "
            f"({r['n_fit']:,} fitting / {r['n_val']:,} validation images; test never read)")


def _per_class_summary(r: dict) -> str:
    return (f"test accuracy at C={r['chosen_C']:.0e}, each of {r['draws']} draws of {r['labels_per_class']} labels "
            f"per class refit: {100 * r['test_accuracy']:.2f}% ± {100 * r['test_accuracy_std']:.2f}  "
            f"({r['n_test']:,} test images)")


def _knn_summary(r: dict) -> str:
    return (f"test accuracy of weighted kNN at k={r['chosen_k']} (temperature {r['temperature']:g}), all "
            f"{r['n_train']:,} training images voting: {100 * r['test_accuracy']:.2f}%  ({r['n_test']:,} test images)")


def _knn_label(s: "EvalConfig") -> str:
    default = EvalConfig()
    if (s.knn_k, s.knn_temperature) == (default.knn_k, default.knn_temperature):
        return "knn"
    return f"knn-k{','.join(map(str, s.knn_k))}-T{s.knn_temperature:g}"


def _svhn_summary(r: dict) -> str:
    return (f"test error at C={r['chosen_C']:.0e} over {r['test_draws']} draws of {r['labels_per_class']} labels "
            f"per class: {100 * r['test_error']:.2f}% ± {100 * r['test_error_ci95']:.2f} (1.96 x std)  "
            f"({r['n_test']:,} test images)")


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("full", "all training labels; C on a validation split, refit on all, test once",
             lambda i, s: run_full(*i.arrays, **i.views), lambda s: "full", _full_summary),
    Protocol("per-class", "repeated class-balanced draws of --labels-per-class labels (the paper's 400 per class)",
             lambda i, s: run_per_class(*i.arrays, s.labels, s.draws, **i.views),
             lambda s: f"per-class-{s.labels}x{s.draws}", _per_class_summary, default_labels=400,
             label_prefix="per-class"),
    Protocol("svhn-1000", "the paper authors' SVHN protocol (100 labels per class, fixed validation split)",
             lambda i, s: run_svhn_1000(*i.arrays, s.labels, s.draws, s.test_draws, s.val_size, **i.views),
             lambda s: f"svhn-{s.labels}pc-{s.draws}x{s.test_draws}-val{s.val_size}", _svhn_summary,
             default_labels=100, label_prefix="svhn"),
    Protocol("knn", "weighted k-nearest neighbours on cosine similarity (DINO's eval_knn), k chosen on validation",
             lambda i, s: run_knn(*i.arrays[:6], s.knn_k, s.knn_temperature), _knn_label, _knn_summary,
             label_prefix="knn", uses_views=False),
    Protocol("validation", "full's C sweep alone, for choosing recipes: the test split is never read",
             lambda i, s: run_validation(i.train_x, i.train_y, i.svm, i.seed, i.factory, i.fit_views,
                                                        i.val_views),
             lambda s: "validation", _validation_summary, reads_test=False),
)}


def protocol_of(label: str) -> str:
    """The registry name of a result's ``protocol`` label (``per-class-400x10`` -> ``per-class``)."""
    for protocol in PROTOCOLS.values():
        if label == protocol.name or (protocol.label_prefix and label.startswith(protocol.label_prefix + "-")):
            return protocol.name
    raise UserError(f"unknown protocol {label!r}; this version knows {', '.join(PROTOCOLS)}")


@dataclass(frozen=True)
class EvalConfig:
    """How ``evaluate`` runs, besides a config's [data], [features] and [svm]: each default is written here once,
    and the CLI builds one of these as ``pretrain`` builds a :class:`Config`. ``dataset`` and ``root`` left
    empty come from the config file, then from the checkpoint."""

    protocol: str = "full"
    labels_per_class: int = 0  # 0: the protocol's default (Protocol.default_labels)
    draws: int = 10  # class-balanced draws (per-class), or validation draws per C (svhn-1000)
    test_draws: int = 100  # svhn-1000
    val_size: int = 10_000  # svhn-1000: validation images first in the seed-42 shuffle
    baseline: str = ""  # "", pixels or untrained
    device: str = "auto"
    seeds: tuple[int, ...] = (0,)
    dataset: str = ""
    root: str = ""
    select: str = "final"  # final | best-probe | ema: which D of a run directory is evaluated
    knn_k: tuple[int, ...] = (10, 20, 50, 100, 200)  # knn: the values of k tried on validation
    knn_temperature: float = 0.07  # knn: each neighbour's vote is exp(cosine / temperature), as DINO's

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise UserError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if self.baseline and self.baseline not in BASELINES:
            raise UserError(f"unknown baseline {self.baseline!r}; choose one of {', '.join(BASELINES)}")
        if self.dataset and self.dataset not in DATASETS:
            raise UserError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.device not in DEVICES:
            raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.select not in SELECTIONS:
            raise UserError(f"--select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        if self.draws < 1 or self.test_draws < 1 or self.val_size < 1:
            raise UserError("--draws, --test-draws and --val-size must be at least 1")
        if self.labels_per_class < 0 or any(seed < 0 for seed in self.seeds):
            raise UserError("--labels-per-class and --seeds must not be negative")
        if not self.knn_k or any(k < 1 for k in self.knn_k) or not self.knn_temperature > 0:
            raise UserError("--knn-k needs at least one k of at least 1, and --knn-temperature must be positive")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"a seed is given twice in --seeds {' '.join(map(str, self.seeds))}")

    @property
    def labels(self) -> int:
        return self.labels_per_class or PROTOCOLS[self.protocol].default_labels

    @property
    def protocol_name(self) -> str:
        """The protocol with the settings that change its outcome, as results and the report name it."""
        return PROTOCOLS[self.protocol].label(self)
