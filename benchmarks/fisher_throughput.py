"""Fisher-vector extraction throughput (issue 27): images/s of D's per-image gradient reduced to
``features.fisher_dim`` (CountSketch, and every k-th coordinate as AFV's ``--sample``) beside the pooled 4x4 grid,
through the default CIFAR-10 D (configs/cifar10.toml, untrained: speed does not depend on the weights), in alternating
rounds (median reported). The mean and scale over generated images are left out of the timing (once per checkpoint;
their cost is one more pass over ``features.fisher_samples`` images).
Writes results/benchmarks/fisher_throughput.{md,csv}.

    python benchmarks/fisher_throughput.py --data-root /work/data --images 512 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import pandas as pd
import torch

from dcgan_features.config import load_config
from dcgan_features.data import load_images
from dcgan_features.features import FrozenExtractor, PoolingSpec, extract
from dcgan_features.fisher import FisherExtractor
from dcgan_features.models import build_models
from dcgan_features.runtime import resolve_device

from common import write_table

KINDS = (("pooled", "sketch"), ("fisher", "sketch"), ("fisher", "stride"))


def time_kind(config, kind: str, reduce: str, images: torch.Tensor, device: torch.device, dim: int) -> dict:
    torch.manual_seed(0)
    discriminator = build_models(config.model)[1].eval()
    spec = PoolingSpec.from_config(config.features, discriminator)
    extractor = FrozenExtractor(discriminator, spec)
    if kind == "fisher":
        shapes = {name: p.shape for name, p in discriminator.named_parameters()}
        mean = {name: torch.zeros(shape) for name, shape in shapes.items()}
        std = {name: torch.ones(shape) for name, shape in shapes.items()}
        cfg = replace(config.features, kind=kind, fisher_reduce=reduce, fisher_dim=dim)
        extractor = FisherExtractor(discriminator, mean, std, cfg)
    batch = config.features.batch_size
    extract(extractor, images[:64], batch, device)  # warm-up: allocator, kernel choice
    start = time.perf_counter()
    features = extract(extractor, images, batch, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"features": kind if kind == "pooled" else f"fisher ({reduce})", "feature_dim": features.shape[1],
            "img_per_s": round(len(images) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--config", default="configs/cifar10.toml")
    parser.add_argument("--set-width", type=int, default=0, help="model.width override (tests: a tiny D)")
    parser.add_argument("--images", type=int, default=512, help="test images timed per measurement")
    parser.add_argument("--dim", type=int, default=16384, help="features.fisher_dim")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args()
    overrides = {"model.width": args.set_width, "model.d_widths": [], "model.d_strides": [],
                 "model.g_widths": []} if args.set_width else {}
    config = load_config(args.config, overrides)
    device = resolve_device("auto")
    images = load_images(args.dataset, args.data_root, "test", image_size=32, channels=3).images[:args.images]
    rows = [{"round": r, **time_kind(config, kind, reduce, images, device, args.dim)}
            for r in range(args.repeats) for kind, reduce in KINDS]
    table = (pd.DataFrame(rows).groupby(["features", "feature_dim"], sort=False)["img_per_s"]
             .agg(median="median", min="min", max="max").reset_index())
    table["minutes for 110,000 images"] = (110_000 / table["median"] / 60).round(1)
    write_table(args.out, "fisher_throughput",
                f"Fisher-vector extraction throughput (img/s) beside the pooled grid, {len(images):,} {args.dataset} "
                f"test images per measurement, {args.config}'s D (untrained) in eval mode, {args.repeats} alternating "
                f"rounds, {device}", table,
                "110,000 images is what one evaluation with mirrored fitting rows extracts (train, its mirror, test).")


if __name__ == "__main__":
    main()
