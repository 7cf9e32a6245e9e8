"""The SVM's rows: feature matrices (often memory-mapped caches) read, standardised and stacked with other views
without holding a second copy of them, chunk by chunk. ``svm`` fits on what these return; ``protocols`` builds
its fitting, validation and test rows with them."""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np
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
    """Other views of the fitting images, each an array row-aligned with their features: the mirror
    (``svm.train_hflip``), shifted copies (``svm.train_translate``). ``views[rows]`` takes those rows of each."""

    arrays: tuple[np.ndarray, ...]

    def __getitem__(self, rows: np.ndarray) -> FittingViews:
        return FittingViews(tuple(array[rows] for array in self.arrays))


def training_rows(features: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                  views: FittingViews | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The rows an SVM is fitted on: ``features[rows]`` as float32, followed, when ``views`` (other views of the
    same images: a :class:`FittingViews`, or one array such as the mirrored features) is given, by the same rows
    of each view in turn; and their labels. Only fitting rows ever get other views: validation and test rows are
    the images as they are."""
    arrays = () if views is None else views.arrays if isinstance(views, FittingViews) else (views,)
    if not arrays:
        return read_rows(features, rows), labels[rows]
    stacked = np.empty(((1 + len(arrays)) * len(rows), *features.shape[1:]), np.float32)  # each read into place
    for i, array in enumerate((features, *arrays)):
        read_rows(array, rows, out=stacked[i * len(rows):(i + 1) * len(rows)])
    return stacked, np.tile(labels[rows], 1 + len(arrays))
