"""Where and how a process runs: the device, and independent seeded random streams. Every stage that
runs models uses these, so a device or seed is chosen the same way everywhere."""

from __future__ import annotations

import contextlib
import platform
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .errors import UserError


@contextlib.contextmanager
def progress(length: int, label: str | None, status: Callable[[], str] | None = None, done: int = 0) -> Iterator:
    """A progress bar with rate and ETA on stderr when it is a terminal; elsewhere (logs, CI) click prints the label
    once, a plain line per stage. ``status`` returns the text shown after the bar; ``label=None`` shows nothing
    (for work done inside a larger stage, such as the online probe's extraction)."""
    import click

    if label is None:
        yield _Silent()
        return
    bar = click.progressbar(length=length, label=label, show_eta=True, show_percent=False, show_pos=True,
                            item_show_func=(lambda _: status()) if status else None, file=sys.stderr)
    bar.pos = done  # work resumed part-way
    with bar:
        yield bar


class _Silent:
    def update(self, n: int, current_item=None) -> None:
        pass


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def seeded_generator(*words: int) -> torch.Generator:
    """An independent CPU generator for one purpose (data order, noise, ...) derived from the seed."""
    # Shift a Python int: NumPy 1.x refuses uint64 >> int (no safe common type).
    seed = int(np.random.SeedSequence(list(words)).generate_state(1, dtype=np.uint64)[0]) >> 1
    return torch.Generator().manual_seed(seed)


# The instruction sets that decide how fast float32 and bfloat16 convolutions run on a CPU. A hypervisor may hide
# some of the host's (a Zen 4 host can show a guest AVX2 only), so they are read from the machine, not assumed.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "asimd", "sve", "bf16")


def cpu_flags() -> tuple[str, ...]:
    """The :data:`SPEED_FLAGS` this CPU reports (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ()
    reported = set()
    for line in lines:
        if line.lower().startswith(("flags", "features")):
            reported.update(line.split(":", 1)[1].split())
    return tuple(flag for flag in SPEED_FLAGS if flag in reported)


def native_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 arithmetic runs in hardware: on a CUDA GPU that supports it, or on a CPU that reports
    AVX512-BF16, AMX or Arm's BF16. Elsewhere PyTorch emulates it, far slower than float32
    (``results/benchmarks/avx2/step_breakdown.md``)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(flag in cpu_flags() for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def settled_hessian_precision(precision: str, device: torch.device) -> str:
    """``svm.hessian_precision`` as it runs on ``device``: ``auto`` is bfloat16 where bfloat16 runs in hardware
    and float32 elsewhere, where emulated bfloat16 products are slower than float32 ones."""
    if precision != "auto":
        return precision
    return "bfloat16" if native_bfloat16(device) else "float32"


def settled_bf16(bf16: bool | str, device: torch.device) -> bool:
    """``train.bf16`` as it runs on ``device``: ``auto`` autocasts to bfloat16 where bfloat16 runs in hardware
    (4-epoch lever runs, two seeds each: no NaN and no loss of validation accuracy; results/ablations/cifar10/)
    and stays in float32 where it is emulated, where a step runs far slower."""
    return native_bfloat16(device) if bf16 == "auto" else bool(bf16)


def peak_resident_gb() -> float | None:
    """This process's peak resident memory so far, in GB (10^9 bytes), as the kernel counts it (the pages of a
    memory-mapped cache it touched included); None where the platform does not say (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return round(peak * (1 if sys.platform == "darwin" else 1024) / 1e9, 2)


def cpu_description() -> str:
    """The CPU's model, the vector unit torch dispatches to and the speed-relevant flags, for provenance."""
    model = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    flags = " ".join(cpu_flags()) or "none"
    return f"{model} (torch dispatch {torch.backends.cpu.get_cpu_capability()}; flags {flags})"
