"""Where a pretraining step's time goes: time and FLOPs per kind of op, our step beside the reference's.

Both steps run on one synthetic batch, with no data loading, so what differs is the step alone: ours
(``train.train_step``: channels_last, D's weights frozen in the G update, fused Adam) against
pytorch/examples' (NCHW, D's weight gradients computed in the G update, default Adam). FLOPs come from
``torch.utils.flop_counter``; times from a dispatch mode that times every aten call, which adds a few
percent, so the untimed step is reported as well. The variants alternate for ``--repeats`` rounds and
each number is the median over rounds. Writes results/benchmarks/step_breakdown.{md,csv}.

    python benchmarks/step_breakdown.py --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from dcgan_features.config import apply_overrides, load_config
from dcgan_features.runtime import resolve_device
from dcgan_features.train import new_state, train_step

from common import write_table
from pretrain_throughput import reference_step, with_default_adam

KINDS = {"aten.convolution": "convolution forward", "aten.convolution_backward": "convolution backward"}


class OpTimer(TorchDispatchMode):
    """Seconds spent in each kind of aten op while active (CPU ops are synchronous, so wall time is theirs)."""

    def __init__(self):
        super().__init__()
        self.seconds = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds[KINDS.get(str(func.overloadpacket), "everything else")] += time.perf_counter() - start
        return out


def measure(step, steps: int) -> dict[str, float]:
    """ms per step (untimed, then per op kind) and GFLOP per step per op kind, after 3 warm-up steps."""
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    row = {"untimed step ms": (time.perf_counter() - start) / steps * 1e3}
    with OpTimer() as timer:
        for _ in range(steps):
            step()
    row |= {f"{kind} ms": s / steps * 1e3 for kind, s in timer.seconds.items()}
    with FlopCounterMode(display=False) as flops:
        step()
    counts = {KINDS.get(str(op), "everything else"): n for op, n in flops.get_flop_counts()["Global"].items()}
    return row | {f"{kind} GFLOP": n / 1e9 for kind, n in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args()
    config = load_config(None, {})
    plain = apply_overrides(config, {"train.channels_last": False})
    bf16 = apply_overrides(config, {"train.bf16": True})
    device = resolve_device("auto")
    real = torch.rand(args.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    real_cl = real.contiguous(memory_format=torch.channels_last)

    def ours(cfg):
        state = new_state(cfg, device)
        return lambda: train_step(state, real_cl, cfg, device)

    def reference():
        state = with_default_adam(new_state(plain, device), plain)
        return lambda: reference_step(state, real, plain, device)

    variants = {"reference step (pytorch/examples)": reference, "dcgan-features step": lambda: ours(config),
                "dcgan-features step, train.bf16 (off by default)": lambda: ours(bf16)}
    rows = [{"round": r, "step": name, **measure(build(), args.steps)}
            for r in range(args.repeats) for name, build in variants.items()]
    table = pd.DataFrame(rows).drop(columns="round").groupby("step").median().reindex(list(variants))
    for kind in KINDS.values():
        table[f"{kind} GFLOP/s"] = table[f"{kind} GFLOP"] / table[f"{kind} ms"] * 1e3
    table.insert(0, "img/s (untimed)", args.batch_size / table["untimed step ms"] * 1e3)
    timed = [f"{kind} ms" for kind in [*KINDS.values(), "everything else"]]
    conv_share = table[timed[:2]].sum(axis=1) / table[timed].sum(axis=1)
    table = table[["img/s (untimed)", "untimed step ms", *timed,
                   *(f"{kind} {unit}" for kind in KINDS.values() for unit in ("GFLOP", "GFLOP/s"))]]
    write_table(args.out, "step_breakdown",
                f"One pretraining step, batch {args.batch_size}, default model, synthetic batch (no data loading), "
                f"{device}: ms and GFLOP per step by kind of op, median of {args.repeats} rounds of {args.steps} steps",
                table.reset_index().round(2),
                "Convolutions' share of the timed step: "
                + ", ".join(f"{name} {share:.0%}" for name, share in conv_share.items()) + ".")


if __name__ == "__main__":
    main()
