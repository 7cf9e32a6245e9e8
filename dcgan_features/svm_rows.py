"""The SVM's rows: feature matrices (often memory-mapped caches) read, standardised and stacked with other views
without holding a second copy of them, chunk by chunk. ``svm`` fits on what these return; ``protocols`` builds
its fitting, validation and test rows with them."""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler

CHUNK_VALUES = 1 << 24  # values per chunk when scaling or reading features: 128 MB as float64


def _chunk_rows(array: np.ndarray) -> int:
    return max(1, CHUNK_VALUES // max(1, int(np.prod(array.shape[1:]))))


def read_rows(features: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``features[rows]`` as one float32 array (into ``out`` when given).

    A memory-mapped cache is read with plain file reads, block by block in file order: mapped pages
    would count towards the process's memory until unmapped, so at the paper's scale (50,000 x 28,672)
    gathering through the map would hold the features twice."""
    out = np.empty((len(rows), *features.shape[1:]), np.float32) if out is None else out
    mapped_whole = isinstance(features, np.memmap) and isinstance(features.base, mmap.mmap)  # not a view of one
    if not (mapped_whole and features.flags.c_contiguous and features.filename):
        if features.dtype == out.dtype:
            return np.take(features, rows, axis=0, out=out)  # gathered straight into out, no temporary
        out[:] = features[rows]
        return out
    position = np.full(len(features), -1)
    position[rows] = np.arange(len(rows))
    row_bytes = features.dtype.itemsize * int(np.prod(features.shape[1:]))
    block = _chunk_rows(features)
    with open(features.filename, "rb") as stream:
        for start in range(0, len(features), block):
            wanted = position[start:start + block]
            if (wanted < 0).all():
                continue
            stream.seek(features.offset + start * row_bytes)
            chunk = np.fromfile(stream, dtype=features.dtype, count=len(wanted) * row_bytes // features.dtype.itemsize)
            chunk = chunk.reshape(len(wanted), *features.shape[1:])
            out[wanted[wanted >= 0]] = chunk[wanted >= 0]
    return out


def fitted_scaler(train: np.ndarray) -> StandardScaler:
    """Mean and std of ``train`` accumulated in float64 over row chunks, never holding a float64 copy."""
    scaler = StandardScaler()
    step = _chunk_rows(train)
    for start in range(0, len(train), step):
        scaler.partial_fit(train[start:start + step])
    return scaler


def scale_in_place(array: np.ndarray, scaler: StandardScaler) -> np.ndarray:
    step = _chunk_rows(array)
    for start in range(0, len(array), step):
        array[start:start + step] = scaler.transform(array[start:start + step])
    return array


def scaled(array: np.ndarray, scaler: StandardScaler | None) -> np.ndarray:
    """``array`` scaled in place by ``scaler``; as it is when there is none (features not standardised)."""
    return array if scaler is None else scale_in_place(array, scaler)


def standardise(train: np.ndarray, *others: np.ndarray, copy: bool = True, enabled: bool = True) -> list[np.ndarray]:
    """Scale with statistics of ``train`` only, as float32. With ``copy`` the inputs (possibly
    memory-mapped caches) are left alone and each is copied once; without it, float32 arrays are
    scaled in place. With ``enabled=False`` the arrays only become float32 (the authors' "no normalisation")."""
    arrays = [np.array(a, dtype=np.float32, copy=copy or a.dtype != np.float32) for a in (train, *others)]
    if enabled:
        scaler = fitted_scaler(arrays[0])
        for array in arrays:
            scale_in_place(array, scaler)
    return arrays


@dataclass(frozen=True)
class FittingViews:
    """Other views of the same images, each an array row-aligned with their features: for fitting rows the mirror
    (``svm.train_hflip``) and shifted copies (``svm.train_translate``); for scored rows the mirror
    (``svm.score_hflip``) and shifted copies (``svm.score_translate``). ``views[rows]`` reads those rows of each
    (:func:`read_rows`, so a memory-mapped cache's pages are not left mapped)."""

    arrays: tuple[np.ndarray, ...]

    def __getitem__(self, rows: np.ndarray) -> FittingViews:
        return FittingViews(tuple(read_rows(array, rows) for array in self.arrays))


def view_arrays(views: FittingViews | np.ndarray | None) -> tuple[np.ndarray, ...]:
    """The arrays of ``views``: none, one array (such as the mirrored features), or a :class:`FittingViews`."""
    if views is None:
        return ()
    return views.arrays if isinstance(views, FittingViews) else (views,)


def scaled_views(features: np.ndarray, views: FittingViews | np.ndarray | None, rows: np.ndarray,
                 scaler: StandardScaler | None) -> list[np.ndarray]:
    """``rows`` of ``features`` and of each of its other ``views``, read (:func:`read_rows`) and standardised by
    ``scaler``: the scored rows of an image, one array per view, for :func:`predict_views`."""
    return [scaled(read_rows(array, rows), scaler) for array in (features, *view_arrays(views))]


def training_rows(features: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                  views: FittingViews | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The rows an SVM is fitted on: ``features[rows]`` as float32, followed, when ``views`` (other views of the
    same images: a :class:`FittingViews`, or one array such as the mirrored features) is given, by the same rows
    of each view in turn; and their labels. Only fitting rows ever get other views: validation and test rows are
    the images as they are."""
    arrays = view_arrays(views)
    if not arrays:
        return read_rows(features, rows), labels[rows]
    stacked = np.empty(((1 + len(arrays)) * len(rows), *features.shape[1:]), np.float32)  # each read into place
    for i, array in enumerate((features, *arrays)):
        read_rows(array, rows, out=stacked[i * len(rows):(i + 1) * len(rows)])
    return stacked, np.tile(labels[rows], 1 + len(arrays))


def fitting_matrix(features: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                   views: FittingViews | np.ndarray | None = None, standardize: bool = True,
                   precision: str = "float32") -> tuple[np.ndarray | torch.Tensor, np.ndarray, StandardScaler | None]:
    """The SVM's fitting rows (:func:`training_rows`), scaled with their own statistics when ``standardize``; their
    labels; and the scaler (None when not standardising), for the rows they will score.

    ``precision`` is how the rows are stored (``svm.row_precision``): float32, one numpy array scaled in place; or
    bfloat16, a torch tensor filled a block at a time after a first pass has gathered the statistics (in
    float64), so no float32 copy of the rows is ever held: half the SVM's largest array, the rows rounded to 8
    significant bits after scaling. The solver widens them again a block at a time for its float32 sums."""
    if precision == "float32":
        X, y = training_rows(features, labels, rows, views)
        scaler = fitted_scaler(X) if standardize else None
        return scaled(X, scaler), y, scaler
    arrays = (features, *view_arrays(views))
    step = _chunk_rows(features)
    blocks = [(i, start, array) for i, array in enumerate(arrays) for start in range(0, len(rows), step)]
    scaler = StandardScaler() if standardize else None
    for _, start, array in blocks if standardize else ():
        scaler.partial_fit(read_rows(array, rows[start:start + step]))
    X = torch.empty((len(arrays) * len(rows), *features.shape[1:]), dtype=getattr(torch, precision))
    for i, start, array in blocks:
        block = read_rows(array, rows[start:start + step])
        X[i * len(rows) + start:i * len(rows) + start + len(block)] = torch.from_numpy(scaled(block, scaler))
    return X, np.tile(labels[rows], len(arrays)), scaler
