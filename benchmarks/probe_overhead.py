"""What the online probe (train.probe_every) costs: seconds per probe beside seconds per training step,
measured in one process on the same data, and the slowdown that gives at a probing interval.

A probe extracts the pooled features of ``train.probe_images`` training images (half to fit, half held out)
and fits the L2-SVM at ``train.probe_c``; a step is one D and one G update. Probes and blocks of steps
alternate for ``--repeats`` rounds and each is reported as its median. The slowdown at an interval of N steps
is probe / (N x step). Writes results/benchmarks/probe_overhead.{md,csv}.

    python benchmarks/probe_overhead.py --data-root /work/data --every 390 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from dcgan_features.config import load_config
from dcgan_features.data import load_images, to_model_range
from dcgan_features.probe import FeatureProbe
from dcgan_features.runtime import resolve_device
from dcgan_features.train import new_state, train_step

from common import write_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cifar10.toml")
    parser.add_argument("--dataset", default=None, help="default: the config's")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--every", type=int, nargs="+", default=[390], help="probing intervals (steps) to report")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per round")
    parser.add_argument("--probe-images", type=int, default=None, help="default: the config's train.probe_images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args()
    overrides = {"data.root": args.data_root, **({"data.dataset": args.dataset} if args.dataset else {}),
                 **({"train.probe_images": args.probe_images} if args.probe_images else {})}
    config = load_config(args.config, overrides)
    device = resolve_device("auto")
    data = load_images(config.data.dataset, config.data.root, "train", image_size=config.model.image_size,
                       channels=config.model.channels)
    state = new_state(config, device)
    probe = FeatureProbe(config, data, device)
    batch = to_model_range(data.images[:config.train.batch_size].to(device))
    batch = batch.contiguous(memory_format=torch.channels_last) if config.train.channels_last else batch
    train_step(state, batch, config, device)  # warm-up
    probe(state.discriminator)
    steps, probes = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(state, batch, config, device)
        steps.append((time.perf_counter() - start) / args.steps)
        start = time.perf_counter()
        probe(state.discriminator)
        probes.append(time.perf_counter() - start)
    step_s, probe_s = statistics.median(steps), statistics.median(probes)
    table = pd.DataFrame([{"probe every (steps)": every, "step s": round(step_s, 4), "probe s": round(probe_s, 3),
                           "slowdown %": round(100 * probe_s / (every * step_s), 2)} for every in args.every])
    write_table(args.out, "probe_overhead",
                f"Online probe cost, {args.config} ({config.data.dataset}, {len(probe.labels['fit']):,} fitting + "
                f"{len(probe.labels['held_out']):,} held-out training images, C = {config.train.probe_c:g}), "
                f"batch {config.train.batch_size}, {device}: medians of {args.repeats} rounds of {args.steps} steps "
                "and one probe", table)


if __name__ == "__main__":
    main()
