"""Feature-extraction throughput: images/s through a frozen, untrained D at 7,168-d (the plain DCGAN,
configs/cifar10_dcgan.toml, the default CPU model when this was measured) and 28,672-d (the paper's ImageNet
model, configs/paper_imagenet32.toml), in NCHW and channels_last layouts, alternating for ``--repeats`` rounds
(median reported).
Writes results/benchmarks/extract_throughput.{md,csv}.

    python benchmarks/extract_throughput.py --data-root /work/data --images 2048 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from dcgan_features.config import load_config
from dcgan_features.data import load_images
from dcgan_features.features import FrozenExtractor, PoolingSpec, extract
from dcgan_features.models import build_models
from dcgan_features.runtime import resolve_device

from common import write_table

CONFIGS = ("configs/cifar10_dcgan.toml", "configs/paper_imagenet32.toml")


def time_extraction(config_path: str, images: torch.Tensor, device: torch.device, channels_last: bool) -> dict:
    config = load_config(config_path)
    torch.manual_seed(0)
    discriminator = build_models(config.model)[1]
    spec = PoolingSpec.from_config(config.features, discriminator)
    extractor = FrozenExtractor(discriminator, spec)
    batch = config.features.batch_size
    extract(extractor, images[:batch], batch, device, channels_last)  # warm-up: allocator, kernel choice
    start = time.perf_counter()
    features = extract(extractor, images, batch, device, channels_last)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"config": config_path, "feature_dim": features.shape[1], "layout": "NHWC" if channels_last else "NCHW",
            "batch": batch, "img_per_s": round(len(images) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--images", type=int, default=2048, help="test images timed per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args()
    device = resolve_device("auto")
    images = load_images(args.dataset, args.data_root, "test", image_size=32, channels=3).images[:args.images]
    rows = [{"round": r, **time_extraction(path, images, device, layout)}
            for r in range(args.repeats) for path in CONFIGS for layout in (False, True)]
    runs = pd.DataFrame(rows)
    table = (runs.groupby(["config", "feature_dim", "layout", "batch"], sort=False)["img_per_s"]
             .agg(median="median", min="min", max="max").reset_index())
    seconds_60k = (60_000 / table["median"]).round(0)
    table["minutes for 60,000 images"] = (seconds_60k / 60).round(1)
    write_table(args.out, "extract_throughput",
                f"Feature-extraction throughput (img/s), {len(images):,} {args.dataset} test images per measurement, "
                f"untrained D in eval mode, max-pooled to 4x4, {args.repeats} alternating rounds, {device}", table,
                "60,000 images is CIFAR-10's train + test, what `evaluate` extracts once per checkpoint.")


if __name__ == "__main__":
    main()
