"""Looking after the feature cache (``dcgan-features cache list | prune``).

Every evaluation stores each split's features under ``--cache-dir`` (features.py), keyed by everything that
determines them; an entry at the paper's scale holds gigabytes, and nothing else ever removes one, so a cache
that served a few dozen checkpoints can fill a disk. An entry is a folder named by 32 hex digits holding
``key.json``; anything else under the cache folder is left alone. Reading an entry marks it used (features.py
touches its ``key.json``), which is what ``--unused-days`` goes by.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .artifacts import sha256_file
from .errors import UserError
from .features import ENTRY_NAME_DIGITS

ENTRY_NAME = re.compile(f"[0-9a-f]{{{ENTRY_NAME_DIGITS}}}")
DAY_S = 86_400


@dataclass(frozen=True)
class CacheEntry:
    """One cached feature matrix: its folder, what it holds (the cache key), its size and when it was last used."""

    path: Path
    key: dict
    size_bytes: int
    last_used: float  # seconds since the epoch

    def describe(self) -> str:
        spec = self.key.get("spec", {})
        pyramid = f"+pyramid{spec['pyramid']}" if spec.get("pyramid") else ""
        kind = "fisher" if self.key.get("fisher") else f"{spec.get('pool', '?')}{spec.get('grid', '?')}{pyramid}"
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.last_used))
        return (f"{self.path.name}  {format_size(self.size_bytes):>9}  used {used}  {self.key.get('dataset', '?')} "
                f"{self.key.get('split', '?')}  {kind}  D {str(self.key.get('checkpoint_sha256', '?'))[:12]}")


def format_size(size_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size_bytes < 1000 or unit == "GB":
            return f"{size_bytes:.0f} {unit}" if unit == "B" else f"{size_bytes:.1f} {unit}"
        size_bytes /= 1000
    raise AssertionError("unreachable")


def cache_entries(cache_dir: str | Path) -> list[CacheEntry]:
    """The whole entries under ``cache_dir``, least recently used first. A folder that is not an entry (another
    name, or no readable key) is skipped: the cache folder may be shared, and nothing here guesses."""
    folder = Path(cache_dir)
    if not folder.is_dir():
        raise UserError(f"no feature cache at {folder} (evaluate --cache-dir names it)")
    entries = []
    for path in folder.iterdir():
        key_file = path / "key.json"
        if not (ENTRY_NAME.fullmatch(path.name) and path.is_dir()):
            continue
        try:
            key, last_used = json.loads(key_file.read_text()), key_file.stat().st_mtime
        except (OSError, ValueError):
            continue
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        entries.append(CacheEntry(path, key, size, last_used))
    return sorted(entries, key=lambda entry: (entry.last_used, entry.path.name))


def checkpoint_digests(path: str | Path) -> set[str]:
    """The sha256 of a checkpoint file, or of every ``discriminator*.pt`` in a run folder (final, best-probe and
    moving-average D): the digests cache keys name their D by."""
    path = Path(path)
    files = sorted(path.glob("discriminator*.pt")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"{path} holds no discriminator*.pt")
    return {sha256_file(file) for file in files}


def prunable(entries: list[CacheEntry], unused_days: float | None = None, checkpoints: set[str] | None = None,
             everything: bool = False, now: float | None = None) -> list[CacheEntry]:
    """The entries a prune removes: all of them, or those unused for ``unused_days``, or those of the D's whose
    sha256 is in ``checkpoints`` (both criteria given: entries meeting both)."""
    if not everything and unused_days is None and checkpoints is None:
        raise UserError("say what to prune: --unused-days N, --checkpoint FILE or --all")
    if unused_days is not None and unused_days < 0:
        raise UserError(f"--unused-days must be 0 or more, got {unused_days:g}")
    now = time.time() if now is None else now
    chosen = []
    for entry in entries:
        old = unused_days is None or now - entry.last_used >= unused_days * DAY_S
        same = checkpoints is None or entry.key.get("checkpoint_sha256") in checkpoints
        if everything or (old and same):
            chosen.append(entry)
    return chosen


def remove_entries(entries: list[CacheEntry]) -> int:
    """Delete the entries' folders; returns the bytes freed. A process reading one at that moment keeps its open
    (memory-mapped) file until it is done, and a later evaluation simply extracts the features again."""
    freed = 0
    for entry in entries:
        shutil.rmtree(entry.path, ignore_errors=True)
        freed += 0 if entry.path.exists() else entry.size_bytes
    return freed
