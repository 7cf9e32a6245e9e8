"""Files that are either complete or absent: every artefact is written to a temporary file in the
target directory, flushed to disk, and renamed into place (atomic on POSIX)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide shared results from other users
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, payload: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc}); it may be truncated") from None


def append_jsonl(path: str | Path, record: dict) -> None:
    """One JSON object per line; a line is written with a single write call."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_commit(src: Path | None = None) -> str:
    """The commit of the code that produced an artefact (this package's checkout, or ``src``'s), with
    ``+dirty`` if tracked files outside ``results/`` had changes: results are what runs write, so a
    benchmark that rewrites its committed table does not make the next one's code look modified."""
    src = src or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)results"], cwd=src, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance() -> dict[str, Any]:
    """Where an artefact comes from: the commit checked out now, the command, the time, the library versions
    and the machine. Read it when a process starts, so it names the code that ran."""
    import numpy
    import sklearn
    import torch

    from .runtime import cpu_description

    return {
        "git_commit": git_commit(),
        **launch(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                     "scikit-learn": sklearn.__version__, "numpy": numpy.__version__},
        "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} threads",
        "cpu": cpu_description(),
    }


def launch() -> dict[str, Any]:
    """How this process was started: its argv, the launcher, and the command as a user would type it. The console
    script, ``python -m dcgan_features`` and torchrun (either way) all run the same program, so each is recorded as
    ``dcgan-features ...``; a process that is not the command line (a library call) records no command."""
    program = Path(sys.argv[0])
    ours = program.name == "dcgan-features" or (program.name, program.parent.name) == ("__main__.py", "dcgan_features")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = ("torchrun" if "TORCHELASTIC_RUN_ID" in os.environ or world > 1 else
                "python -m" if program.name == "__main__.py" else "console script" if ours else "python")
    return {"command": "dcgan-features " + shlex.join(sys.argv[1:]) if ours else None, "argv": list(sys.argv),
            "launcher": launcher + (f" ({world} processes)" if world > 1 else "")}


def write_image_grid(images, path: str | Path, nrow: int) -> None:
    """Images in [-1, 1] (N, C, H, W) as one PNG grid of ``nrow`` per row, written atomically."""
    from torchvision.utils import save_image

    with atomic_path(path) as tmp:
        save_image(images.detach().float().cpu(), tmp, format="png", nrow=nrow, normalize=True, value_range=(-1, 1))
