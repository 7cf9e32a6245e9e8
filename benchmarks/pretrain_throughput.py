"""Pretraining throughput: this project's loop against a plain reference loop, same model, one run.

The reference follows pytorch/examples `dcgan`: a DataLoader (2 workers, as its default) over a
torchvision-style dataset that builds a PIL image per item and applies ToTensor + Normalize, and the
examples' update order. Ours indexes batches from the in-memory uint8 tensor and scales them on the
device (``train.train_step``: channels_last layout, fused Adam, no weight gradients for D in the G
update). The reference keeps PyTorch's default NCHW layout and the default Adam. The loops alternate
for ``--repeats`` rounds (reversed on odd rounds), so a busy spell on the machine hits all of them; the
ratio is of the medians. Two ablations are reported beside it and not counted: our loop with the default
Adam, and with ``train.bf16`` (off in the dataclass; the recipe's ``"auto"`` turns it on), the latter only where
bfloat16 runs in hardware (``--bf16 on`` forces it: emulated, a step takes about 50 times as long).
``--compile`` adds the recipe as trained under ``train.compile`` (``torch.compile`` of G and D); compiling falls
in each round's warm-up steps, which the rate excludes, so the row shows the steady state a long run reaches.

The model is the one ``--config`` builds (the default recipe, ``configs/cifar10.toml``). The loops compared
all train it with the plain GAN objective, the reference's; the config's own extras (the rotation loss,
DiffAugment, another loss) are timed in one more row, not counted in the ratio, so their cost shows apart
from the loop's.
Writes results/benchmarks/pretrain_throughput.{md,csv}.

    python benchmarks/pretrain_throughput.py --data-root /work/data --steps 100 --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from dcgan_features.config import apply_overrides, load_config
from dcgan_features.data import load_images, to_model_range
from dcgan_features.records import architecture_name
from dcgan_features.runtime import native_bfloat16, resolve_device
from dcgan_features.train import new_state, train_step

from common import write_table


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
    """pytorch/examples dcgan's step: D on real, D on fake (detached), D step; then G step, with the
    examples' optimisers (torch.optim.Adam with its default implementation)."""
    state = with_default_adam(state, config)
    n, start = 0, None
    for i, (real, _) in enumerate(loader):
        if i == 3:  # warm-up (worker start, allocator) excluded
            start, n = time.perf_counter(), 0
        if i == steps + 3:
            break
        reference_step(state, real.to(device), config, device)
        n += real.shape[0]
    return n / (time.perf_counter() - start)


def reference_step(state, real, config, device) -> None:
    """One step of pytorch/examples dcgan: D's weights get gradients in the G update too."""
    g, d, b = state.generator, state.discriminator, real.shape[0]
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


def with_default_adam(state, config):
    """The state with torch.optim.Adam's default implementation in place of the fused one."""
    betas = (config.train.beta1, config.train.beta2)
    return dataclasses.replace(
        state, opt_g=torch.optim.Adam(state.generator.parameters(), lr=config.train.lr, betas=betas),
        opt_d=torch.optim.Adam(state.discriminator.parameters(), lr=config.train.lr, betas=betas))


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


def run_rounds(loops: dict, repeats: int) -> list[dict]:
    """Every loop once per round; odd rounds run the loops in reverse, so no loop always goes first."""
    rows = []
    for r in range(repeats):
        names = list(loops) if r % 2 == 0 else list(loops)[::-1]
        rows += [{"round": r, "loop": name, "img_per_s": round(loops[name](), 1)} for name in names]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cifar10.toml", help="the model and recipe to time")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per loop and round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds, each running both loops")
    parser.add_argument("--out", default="results/benchmarks")
    parser.add_argument("--compile", action="store_true",
                        help="time the recipe as trained under train.compile too (needs a C++ compiler on CPU)")
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                        help="time the train.bf16 row: auto where bfloat16 runs in hardware (emulated, it takes hours)")
    args = parser.parse_args()
    recipe = load_config(args.config, {"data.dataset": args.dataset, "data.root": args.data_root})
    # the reference's objective on the recipe's model: what the loops are compared on
    # (in float32: the recipe's train.bf16 = "auto" has its own row below)
    config = apply_overrides(recipe, {"train.loss": "bce", "train.diffaugment": [], "train.rotation_weight": 0.0,
                                      "train.bf16": False})
    plain = apply_overrides(config, {"train.channels_last": False})  # the reference's default layout
    bf16 = apply_overrides(config, {"train.bf16": True})
    device = resolve_device("auto")
    data = load_images(args.dataset, args.data_root, "train", image_size=32, channels=3)
    normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    loader = DataLoader(TorchvisionStyleImages(data.images, data.labels, normalise), batch_size=128,
                        shuffle=True, num_workers=2, drop_last=True)
    loops = {"reference (pytorch/examples style)": lambda: reference_loop(new_state(plain, device), loader, plain,
                                                                           device, args.steps),
             "dcgan-features": lambda: our_loop(new_state(config, device), data, config, device, args.steps),
             # ablations, not counted in the ratio: the examples' default Adam (what the fused kernel buys), and
             # bf16 autocast (what a CPU with bf16 instructions gains at lower precision; the recipe's "auto"),
             # timed where bfloat16 runs in hardware
             "dcgan-features, default Adam": lambda: our_loop(with_default_adam(new_state(config, device), config),
                                                             data, config, device, args.steps)}
    timed_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native_bfloat16(device))
    if timed_bf16:
        loops["dcgan-features, train.bf16"] = lambda: our_loop(new_state(bf16, device), data, bf16, device,
                                                               args.steps)
    if recipe != config:
        loops[f"dcgan-features, {Path(args.config).name} as trained (its extra losses, its train.bf16)"] = (
            lambda: our_loop(new_state(recipe, device), data, recipe, device, args.steps))
    if args.compile:
        compiled = apply_overrides(recipe, {"train.compile": True})
        loops[f"dcgan-features, {Path(args.config).name} as trained, train.compile"] = (
            lambda: our_loop(new_state(compiled, device), data, compiled, device, args.steps))
    runs = pd.DataFrame(run_rounds(loops, args.repeats))
    medians = runs.groupby("loop")["img_per_s"].agg(["median", "min", "max"]).reindex(list(loops)).reset_index()
    medians["ratio to reference"] = (medians["median"] / medians["median"].iloc[0]).round(2)
    ratio = medians["median"].iloc[1] / medians["median"].iloc[0]
    per_round = runs.pivot(index="round", columns="loop", values="img_per_s")
    round_ratios = per_round["dcgan-features"] / per_round["reference (pytorch/examples style)"]
    write_table(args.out, "pretrain_throughput",
                f"Pretraining throughput (img/s), {args.dataset}, {Path(args.config).name}'s model "
                f"({architecture_name(config.model)}, batch {config.train.batch_size}), plain GAN objective, "
                f"{args.steps} timed steps per loop after 3 warm-up steps, {args.repeats} alternating rounds, {device}",
                medians.rename(columns={"median": "median img/s", "min": "min", "max": "max"}),
                f"Ratio of medians (ours / reference): {ratio:.2f}x. Per-round ratios: "
                f"{', '.join(f'{r:.2f}' for r in round_ratios)}."
                + ("" if timed_bf16 else " The train.bf16 row is left out: bfloat16 is emulated on this machine "
                                         "(no avx512_bf16, amx_bf16 or bf16 flag); --bf16 on times it anyway."))
    runs.to_csv(f"{args.out}/pretrain_throughput_rounds.csv", index=False)


if __name__ == "__main__":
    main()
