"""Pretraining throughput: this project's loop against a plain reference loop, same model, one run.

The reference follows pytorch/examples `dcgan`: a DataLoader (2 workers, as its default) over a
torchvision-style dataset that builds a PIL image per item and applies ToTensor + Normalize, and the
examples' update order. Ours indexes batches from the in-memory uint8 tensor and scales them on the
device (``train.train_step``). Writes results/benchmarks/pretrain_throughput.{md,csv}.

    python benchmarks/pretrain_throughput.py --data-root /work/data --steps 60
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from dcgan_features.artifacts import git_commit
from dcgan_features.config import load_config
from dcgan_features.data import load_images, to_model_range
from dcgan_features.train import new_state, train_step


class TorchvisionStyleImages(Dataset):
    """What torchvision's CIFAR10.__getitem__ does: HWC uint8 -> PIL image -> transform, per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.data = images.permute(0, 2, 3, 1).numpy()  # N, H, W, C as torchvision keeps CIFAR
        self.targets, self.transform = labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def reference_loop(state, loader, config, device, steps: int) -> float:
    """pytorch/examples dcgan's step: D on real, D on fake (detached), D step; then G step."""
    g, d, n = state.generator, state.discriminator, 0
    start = None
    for i, (real, _) in enumerate(loader):
        if i == 3:  # warm-up (worker start, allocator) excluded
            start, n = time.perf_counter(), 0
        if i == steps + 3:
            break
        real = real.to(device)
        b = real.shape[0]
        d.zero_grad()
        err_real = F.binary_cross_entropy_with_logits(d(real), torch.ones(b, device=device))
        err_real.backward()
        fake = g(torch.randn(b, config.model.z_dim, device=device))
        err_fake = F.binary_cross_entropy_with_logits(d(fake.detach()), torch.zeros(b, device=device))
        err_fake.backward()
        state.opt_d.step()
        g.zero_grad()
        F.binary_cross_entropy_with_logits(d(fake), torch.ones(b, device=device)).backward()
        state.opt_g.step()
        n += b
    return n / (time.perf_counter() - start)


def our_loop(state, data, config, device, steps: int) -> float:
    order = torch.randperm(len(data))
    bs, n, start = config.train.batch_size, 0, None
    for i in range(steps + 3):
        if i == 3:
            start, n = time.perf_counter(), 0
        index = order[i * bs:(i + 1) * bs]
        train_step(state, to_model_range(data.images[index].to(device)), config, device)
        n += len(index)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args()
    config = load_config(None, {"data.dataset": args.dataset, "data.root": args.data_root})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load_images(args.dataset, args.data_root, "train", image_size=32, channels=3)
    normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    loader = DataLoader(TorchvisionStyleImages(data.images, data.labels, normalise), batch_size=128,
                        shuffle=True, num_workers=2, drop_last=True)
    rows = []
    for name, run in (("reference (pytorch/examples style)", lambda s: reference_loop(s, loader, config, device,
                                                                                       args.steps)),
                      ("dcgan-features", lambda s: our_loop(s, data, config, device, args.steps))):
        rows.append({"loop": name, "img_per_s": round(run(new_state(config, device)), 1)})
    table = pd.DataFrame(rows)
    ratio = table["img_per_s"].iloc[1] / table["img_per_s"].iloc[0]
    header = (f"Pretraining throughput, {args.dataset}, default model (D 64-128-256, batch 128), {args.steps} timed "
              f"steps each after 3 warm-up steps, {device}, {torch.get_num_threads()} threads; "
              f"{platform.machine()} {platform.system()}, python {platform.python_version()}, torch "
              f"{torch.__version__}; git {git_commit()}; {datetime.now(timezone.utc).isoformat(timespec='seconds')}.\n\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain_throughput.md").write_text(header + table.to_markdown(index=False) +
                                                f"\n\nRatio (ours / reference): {ratio:.2f}x\n")
    table.assign(ratio=round(ratio, 3), device=str(device)).to_csv(out / "pretrain_throughput.csv", index=False)
    print(header + table.to_markdown(index=False) + f"\n\nratio: {ratio:.2f}x")


if __name__ == "__main__":
    main()
