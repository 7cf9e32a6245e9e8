"""Weighted k-nearest-neighbour classification on cosine similarity, as DINO's ``eval_knn`` does it.

Every query votes with its k most similar training rows (cosine similarity of L2-normalised features), each
neighbour weighted by ``exp(similarity / temperature)``; the class with the largest summed weight wins. It needs
no solver and no hyperparameter but k (and the temperature), so it shows a feature's quality in seconds beside
the linear SVM. Features are first standardised with the bank's statistics when ``standardize`` (the SVM's
setting, so both read the same features), because max-pooled activations share a large positive offset that
would otherwise dominate every cosine.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import SvmConfig
from .runtime import progress
from .svm import validation_split
from .svm_rows import read_rows, standardise

QUERY_CHUNK = 1024  # queries per similarity block: 1,024 x 50,000 float32 is 200 MB


def normalised_rows(bank: np.ndarray, *queries: np.ndarray, standardize: bool = True) -> list[torch.Tensor]:
    """The bank and the queries as float32 tensors, standardised with the bank's statistics (when asked) and
    scaled to unit L2 norm, so that a matrix product gives cosine similarities."""
    arrays = standardise(bank, *queries, copy=False, enabled=standardize)
    return [torch.nn.functional.normalize(torch.from_numpy(array), dim=1) for array in arrays]


def knn_votes(bank: torch.Tensor, bank_labels: np.ndarray, queries: torch.Tensor, ks: tuple[int, ...],
              temperature: float) -> dict[int, np.ndarray]:
    """The predicted class index of every query for each k of ``ks``, from one similarity pass: the neighbours
    of the largest k are found once, sorted, and each smaller k uses their first k."""
    classes, label_index = np.unique(bank_labels, return_inverse=True)
    labels = torch.from_numpy(label_index)
    largest = min(max(ks), len(bank))
    predictions = {k: np.empty(len(queries), np.int64) for k in ks}
    for start in range(0, len(queries), QUERY_CHUNK):
        similarity = queries[start:start + QUERY_CHUNK] @ bank.T  # (chunk, bank rows): cosines
        top, where = similarity.topk(largest, dim=1)  # sorted, most similar first
        # exp((cos - the row's largest cos) / T): the same vote ratios as exp(cos / T), without overflow at small T
        weights, neighbour_labels = ((top - top[:, :1]) / temperature).exp(), labels[where]
        for k in ks:
            votes = torch.zeros(len(top), len(classes))
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            predictions[k][start:start + len(top)] = votes.argmax(1).numpy()
    return {k: classes[p] for k, p in predictions.items()}


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, bank_rows: np.ndarray, query_x: np.ndarray,
                 query_rows: np.ndarray, query_y: np.ndarray, ks: tuple[int, ...], temperature: float,
                 standardize: bool = True) -> dict[int, float]:
    """Accuracy for each k when ``train_x[bank_rows]`` (labelled ``train_y[bank_rows]``) votes for the rows
    ``query_rows`` of ``query_x``. Only those rows are read, so a bank never sees its own queries' labels."""
    bank, queries = normalised_rows(read_rows(train_x, bank_rows), read_rows(query_x, query_rows),
                                    standardize=standardize)
    predicted = knn_votes(bank, train_y[bank_rows], queries, ks, temperature)
    return {k: float(np.mean(predicted[k] == query_y)) for k in ks}


def choose_k(train_x: np.ndarray, train_y: np.ndarray, cfg: SvmConfig, seed: int, ks: tuple[int, ...],
             temperature: float) -> tuple[dict[int, float], int, int, int]:
    """Accuracy for each k on the linear protocols' validation split of the training set (the same seed gives the
    same split), the fitting rows as the bank; the best k (ties to the smaller); and the fitting and validation
    row counts. Takes no test data."""
    fit_rows, val_rows = validation_split(train_y, cfg.val_fraction, seed)
    with progress(1, f"kNN: {len(ks)} values of k on {len(val_rows):,} validation images") as bar:
        accuracy = knn_accuracy(train_x, train_y, fit_rows, train_x, val_rows, train_y[val_rows], ks, temperature,
                                cfg.standardize)
        bar.update(1)
    return accuracy, max(sorted(ks), key=lambda k: accuracy[k]), len(fit_rows), len(val_rows)


def test_accuracy_at(k: int, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     temperature: float, standardize: bool) -> float:
    """Test accuracy when every training image votes, at the k chosen on validation."""
    with progress(1, f"kNN: {len(test_y):,} test images at k={k}") as bar:
        accuracy = knn_accuracy(train_x, train_y, np.arange(len(train_y)), test_x, np.arange(len(test_y)), test_y,
                                (k,), temperature, standardize)[k]
        bar.update(1)
    return accuracy
