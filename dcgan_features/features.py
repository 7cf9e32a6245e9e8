"""Frozen-discriminator features: each chosen conv block's post-activation output, pooled to a
grid x grid map, flattened and concatenated (Radford et al. 2015, section 5.1).

Features are cached on disk keyed by everything that determines them: the checkpoint's sha256, the
layer/pooling spec, the dataset, split and a fingerprint of its pixels. A cache entry whose stored
key differs from the requested one is never read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import FeatureConfig
from .data import ImageSet, to_model_range
from .distributed import broadcast_flag, current_world, gather_rows, shard_bounds
from .errors import UserError
from .models import Discriminator
from .runtime import progress


@dataclass(frozen=True)
class PoolingSpec:
    """Which blocks, pooled how: the whole definition of the feature vector, as data. ``pyramid`` holds extra grid
    sizes (a spatial pyramid beside ``grid``: every block also pooled to each of them); empty, the paper's read-out."""

    layers: tuple[str, ...]
    grid: int
    pool: str
    pyramid: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, cfg: FeatureConfig, discriminator: Discriminator) -> "PoolingSpec":
        available = tuple(discriminator.block_shapes)
        layers = cfg.layers or available
        unknown = [name for name in layers if name not in available]
        if unknown:
            raise UserError(f"features.layers names {unknown}, but this discriminator has {list(available)}")
        return cls(tuple(layers), cfg.grid, cfg.pool, tuple(cfg.pyramid))

    @property
    def grids(self) -> tuple[int, ...]:
        """Every grid each block is pooled to, in the order their pools are concatenated (``grid`` first)."""
        return (self.grid, *self.pyramid)

    def dimension(self, discriminator: Discriminator) -> int:
        cells = sum(g**2 for g in self.grids)
        return sum(discriminator.block_shapes[name][0] * cells for name in self.layers)

    def describe(self, discriminator: Discriminator) -> str:
        grids = "+".join(f"{g}x{g}" for g in self.grids)
        grids = grids if not self.pyramid else f"({grids})"
        parts = [f"{name} {discriminator.block_shapes[name][0]}x{grids}" for name in self.layers]
        return f"{' + '.join(parts)} = {self.dimension(discriminator):,} features ({self.pool}-pooled)"

    def key(self) -> dict[str, Any]:
        """The spec as the feature cache's key holds it: without ``pyramid`` when there is none, so the entries
        written before the pyramid existed stay valid."""
        return {k: v for k, v in asdict(self).items() if k != "pyramid" or v}


class FrozenExtractor(nn.Module):
    """D without its head, pinned to eval mode and run without gradients."""

    def __init__(self, discriminator: Discriminator, spec: PoolingSpec):
        super().__init__()
        self.discriminator = discriminator.requires_grad_(False)
        self.spec = spec
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenExtractor":
        # Batch norm must keep its frozen statistics: refuse to leave eval mode.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.discriminator.block_outputs(x, self.spec.layers)
        pool = F.adaptive_max_pool2d if self.spec.pool == "max" else F.adaptive_avg_pool2d
        return torch.cat([pool(outputs[name], grid).flatten(1) for name in self.spec.layers
                          for grid in self.spec.grids], dim=1)


class PixelExtractor(nn.Module):
    """The raw-pixels baseline: the image in [-1, 1], flattened (standardised later like any feature)."""

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def extract(extractor: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
            channels_last: bool = True, label: str | None = None,
            allocate: Callable[[tuple[int, int]], np.ndarray] | None = None) -> np.ndarray:
    """Features (N, dim) for uint8 images (N, C, H, W), or float ones already in the model's [-1, 1], in batches,
    written into one preallocated array (at the paper's scale a list of batches plus their concatenation would be
    two copies of 5.7 GB): a float32 array, or whatever ``allocate(shape)`` returns once the width is known
    (``extract``'s memory-mapped ``.npy``, in float32 or float16). NHWC layout is what CPU convolutions prefer.
    With ``label``, a progress bar."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    extractor = extractor.to(device, memory_format=memory_format)
    allocate = allocate or (lambda shape: np.empty(shape, np.float32))
    out = np.zeros((0, 0), np.float32)
    done, started = 0, time.perf_counter()
    rate = lambda: f"{done / max(time.perf_counter() - started, 1e-9):.0f} img/s"  # noqa: E731
    with progress(len(images), label, rate) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            batch = to_model_range(batch) if batch.dtype == torch.uint8 else batch
            batch = batch.contiguous(memory_format=memory_format)
            values = extractor(batch).float().cpu().numpy()
            if start == 0:
                out = allocate((len(images), values.shape[1]))
            out[start:start + len(values)] = values
            done += len(values)
            bar.update(len(values))
    return out


@dataclass(frozen=True)
class FeatureSet:
    """Cached features with the labels and the indices (into the split) of their rows."""

    features: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    cache_hit: bool


def cache_key(checkpoint_sha256: str, spec: PoolingSpec, data: ImageSet, bn_stats: str,
              fisher: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that determines the features, as plain JSON values (so it compares equal once stored); with
    ``fisher``, what defines the Fisher vectors (fisher.py) too, absent for pooled features so older entries hold."""
    key = {"checkpoint_sha256": checkpoint_sha256, "spec": spec.key(), "dataset": data.name, "split": data.split,
           "num_images": len(data), "data_sha256": data.fingerprint(), "bn_stats": bn_stats}
    return json.loads(json.dumps(key | ({"fisher": fisher} if fisher else {})))


def extract_shared(extractor: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
                   label: str | None) -> np.ndarray | None:
    """:func:`extract`, with the rows shared out over the ranks under torchrun (in whole batches, so each rank's
    batches are the one-process pass's) and put back together on rank 0; None on the other ranks."""
    world = current_world()
    if world.size == 1:
        return extract(extractor, images, batch_size, device, label=label)
    start, end = shard_bounds(len(images), world, batch_size)
    mine = extract(extractor, images[start:end], batch_size, device, label=label if world.is_main else None)
    if mine.size == 0:  # a rank with no rows still needs the feature width to take part in the gather
        mine = np.empty((0, extract(extractor, images[:1], 1, device).shape[1]), np.float32)
    return gather_rows(mine, len(images), batch_size)


def cached_features(extractor: nn.Module, data: ImageSet, key: dict[str, Any], cache_dir: str | Path | None,
                    batch_size: int, device: torch.device) -> FeatureSet | None:
    """Load features for ``key`` from ``cache_dir`` if an entry with exactly that key exists, else
    extract and store them. The feature matrix comes back memory-mapped when cached. Under torchrun the ranks
    share the extraction and rank 0 alone reads and writes the cache; the others get None."""
    if data.labels is None:
        raise UserError(f"{data.name} {data.split} has no labels; evaluation needs a labelled dataset")
    label = f"features: {data.name} {data.split}"
    labels = data.labels.numpy()
    if cache_dir is None:
        features = extract_shared(extractor, data.images, batch_size, device, label)
        return FeatureSet(features, labels, np.arange(len(data)), False) if features is not None else None
    entry = Path(cache_dir) / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:ENTRY_NAME_DIGITS]
    world = current_world()
    hit = None
    if world.is_main:
        if entry.parent.is_dir():
            remove_stale_temporaries(entry.parent)
        hit = _read_entry(entry, key)
    if broadcast_flag(hit is not None):
        return hit
    features = extract_shared(extractor, data.images, batch_size, device, label)
    if features is None:
        return None  # another rank than 0: its share went to rank 0
    _write_entry(entry, key, features, labels)
    stored = _read_entry(entry, key)  # memory-mapped like any hit, so the extracted copy is freed on return
    if stored is None:
        return FeatureSet(features, labels, np.arange(len(data)), False)
    return replace(stored, cache_hit=False)


def _read_entry(entry: Path, key: dict[str, Any]) -> FeatureSet | None:
    try:
        stored = json.loads((entry / "key.json").read_text())
        features = np.load(entry / "features.npy", mmap_mode="r")
        labels, indices = np.load(entry / "labels.npy"), np.load(entry / "indices.npy")
    except (OSError, ValueError):
        return None  # absent or damaged: recompute
    if stored != key or features.shape[0] != key["num_images"] or labels.shape[0] != features.shape[0]:
        return None
    try:
        os.utime(entry / "key.json")  # marks it used, for `cache prune --unused-days` (cache_admin.py)
    except OSError:
        pass  # a read-only cache is still a cache
    return FeatureSet(features, labels, indices, True)


def _write_entry(entry: Path, key: dict[str, Any], features: np.ndarray, labels: np.ndarray) -> None:
    """Write the entry in a temporary directory and rename it into place, so it is whole or absent.

    The temporary directory is named after this host and process, so that a later run can tell the
    leftovers of a killed writer (removed by :func:`remove_stale_temporaries`) from a live writer's."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.{_WRITER}."))
    try:
        np.save(tmp / "features.npy", features)
        np.save(tmp / "labels.npy", labels)
        np.save(tmp / "indices.npy", np.arange(len(labels)))
        (tmp / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True))
        _publish(tmp, entry, key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, entry: Path, key: dict[str, Any]) -> None:
    """Rename ``tmp`` to ``entry``. Two processes may publish the same entry at once: whichever renames
    second finds a whole entry with its key already there and keeps it, so both succeed with one entry.
    A stale or damaged entry under the name is first renamed aside (atomically, so no reader ever sees
    half of it), then removed."""
    for _ in range(5):
        try:
            os.rename(tmp, entry)  # refuses to replace a non-empty directory, so a concurrent entry is never lost
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if _read_entry(entry, key) is not None:
            return  # another writer published these very features
        aside = entry.with_name(f".{entry.name}.{_WRITER}.replaced-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(entry, aside)
        except FileNotFoundError:
            continue  # another writer moved it aside first
        shutil.rmtree(aside, ignore_errors=True)
    raise UserError(f"could not write the feature cache entry {entry}: other processes keep replacing it")


_WRITER = f"{socket.gethostname()}.{os.getpid()}"
ENTRY_NAME_DIGITS = 32  # an entry's folder: this many hex digits of its key's sha256 (cache_admin finds them so)


def remove_stale_temporaries(cache_dir: Path) -> list[Path]:
    """Remove the temporary directories that writers killed mid-write (SIGKILL, power loss) left in
    ``cache_dir``: those named after a process of this host that no longer runs. At the paper's scale
    each holds gigabytes. Returns what was removed."""
    host = socket.gethostname()
    removed = []
    for path in Path(cache_dir).glob(".*"):
        parts = path.name.split(".")  # "", entry, host..., pid, random suffix
        if not path.is_dir() or len(parts) < 5 or ".".join(parts[2:-2]) != host or not parts[-2].isdigit():
            continue
        if not _process_alive(int(parts[-2])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True
