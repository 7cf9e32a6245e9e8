"""The training state (``RUN/checkpoint.pt``): what changes as a DCGAN trains, how it is built, restored from a
checkpoint and written. Under torchrun every rank holds the same state (checked at start) and rank 0 writes it,
with every rank's RNG state."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import load_state, save_checkpoint
from .config import Config
from .contrastive import ProjectionHead
from .distributed import check_consistent, current_world, gather_states, globalise_batchnorm
from .errors import UserError
from .losses import RotationHead
from .models import Discriminator, Generator, build_models, sample_noise
from .runtime import seeded_generator

SPEED_KEYS = ("train.channels_last", "train.bf16", "train.compile")


@dataclass
class TrainingState:
    """Everything that changes during training; a checkpoint is exactly this plus the config."""

    generator: Generator
    discriminator: Discriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    noise_rng: torch.Generator
    fixed_noise: torch.Tensor
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed inside the current epoch
    global_step: int = 0
    low_loss_since: int = -1  # global step since which D's loss has stayed below train.collapse_loss
    train_seconds: float = 0.0  # wall time spent training, summed over resumes
    best_probe: float = -1.0  # the best online probe accuracy so far (train.probe_every)
    rotation_head: RotationHead | None = None  # with train.rotation_weight; trained with D, not a feature
    contrastive_head: ProjectionHead | None = None  # with train.contrastive_weight; the same
    discriminator_ema: Discriminator | None = None  # with train.ema_decay: the moving average of D (update_ema)
    provenance: list = field(default_factory=list)  # one entry per process that trained: commit, command, start

    def to_payload(self, config: Config, finished: bool, rank_rng: list[torch.Tensor] | None = None) -> dict:
        """The checkpoint dict; ``rank_rng`` is every rank's torch RNG state (``gather_states``), this one's alone
        in a single process."""
        rank_rng = rank_rng if rank_rng is not None else [torch.get_rng_state()]
        cpu = lambda sd: {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in sd.items()}  # noqa: E731
        return {
            "kind": "training", "config": config.to_dict(), "finished": finished,
            "generator": cpu(self.generator.state_dict()), "discriminator": cpu(self.discriminator.state_dict()),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "epoch": self.epoch, "step": self.step, "global_step": self.global_step,
            "low_loss_since": self.low_loss_since, "train_seconds": round(self.train_seconds, 1),
            "best_probe": self.best_probe,
            **({"rotation_head": cpu(self.rotation_head.state_dict())} if self.rotation_head is not None else {}),
            **({"contrastive_head": cpu(self.contrastive_head.state_dict())}
               if self.contrastive_head is not None else {}),
            **({"discriminator_ema": cpu(self.discriminator_ema.state_dict())}
               if self.discriminator_ema is not None else {}),
            "provenance": self.provenance, "world_size": len(rank_rng),
            "rng": {"noise": self.noise_rng.get_state(), "torch": rank_rng[0], "torch_per_rank": rank_rng},
            "fixed_noise": self.fixed_noise,
        }


def new_state(config: Config, device: torch.device) -> TrainingState:
    """A fresh state from the config's seed. Under a process group, batch norm normalises over the global batch
    (``train.sync_batchnorm``) and the ranks' models are checked to be equal."""
    torch.manual_seed(config.train.seed)  # model initialisation
    g, d = build_models(config.model)
    tc = config.train
    if current_world().size > 1 and tc.sync_batchnorm:
        g, d = globalise_batchnorm(g), globalise_batchnorm(d)
    check_consistent(g, "G")
    check_consistent(d, "D")
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    g, d = g.to(device, memory_format=memory_format), d.to(device, memory_format=memory_format)
    # a copy of the initial D, before compiling; eval mode, as it is only ever read (its statistics are averaged)
    ema = copy.deepcopy(d).requires_grad_(False).eval() if tc.ema_decay > 0 else None
    if tc.compile:  # in place, so state_dict keys stay those of the plain modules
        g.compile()
        d.compile()
    # The fused Adam kernel updates each tensor in one pass over its memory, where the default loop on
    # CPU makes several: the same update, and a visible share of a small model's step time.
    fused = device.type in ("cpu", "cuda")
    channels, size, _ = d.block_shapes[list(d.block_shapes)[-1]]
    head = RotationHead(channels, size).to(device) if tc.rotation_weight > 0 else None
    projection = ProjectionHead(channels).to(device) if tc.contrastive_weight > 0 else None
    d_params = [*d.parameters(), *(p for h in (head, projection) if h is not None for p in h.parameters())]
    return TrainingState(
        generator=g, discriminator=d,
        opt_g=torch.optim.Adam(g.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=fused),
        opt_d=torch.optim.Adam(d_params, lr=tc.lr * tc.d_lr_ratio, betas=(tc.beta1, tc.beta2), fused=fused),
        rotation_head=head, contrastive_head=projection, discriminator_ema=ema,
        noise_rng=seeded_generator(tc.seed, 1),
        fixed_noise=sample_noise(tc.num_samples, config.model, seeded_generator(tc.seed, 2)),
    )


def restore_state(payload: dict, config: Config, device: torch.device, source: str) -> TrainingState:
    state = new_state(config, device)
    load_state(state.generator, payload["generator"], source, "generator")
    load_state(state.discriminator, payload["discriminator"], source, "discriminator")
    if state.rotation_head is not None:
        load_state(state.rotation_head, payload["rotation_head"], source, "rotation head")
    if state.contrastive_head is not None:
        load_state(state.contrastive_head, payload["contrastive_head"], source, "contrastive head")
    if state.discriminator_ema is not None:
        load_state(state.discriminator_ema, payload["discriminator_ema"], source, "moving-average discriminator")
    state.opt_g.load_state_dict(payload["opt_g"])
    state.opt_d.load_state_dict(payload["opt_d"])
    state.noise_rng.set_state(payload["rng"]["noise"])
    world, per_rank = current_world(), payload["rng"].get("torch_per_rank", [payload["rng"]["torch"]])
    torch.set_rng_state(per_rank[world.rank] if len(per_rank) == world.size else payload["rng"]["torch"])
    state.fixed_noise = payload["fixed_noise"]
    state.epoch, state.step, state.global_step = payload["epoch"], payload["step"], payload["global_step"]
    state.low_loss_since = payload.get("low_loss_since", -1)
    state.train_seconds = payload.get("train_seconds", 0.0)
    state.best_probe = payload.get("best_probe", -1.0)
    stored = payload.get("provenance", [])
    state.provenance = [stored] if isinstance(stored, dict) else list(stored)  # older checkpoints held one dict
    return state


@torch.no_grad()
def update_ema(ema: Discriminator, d: Discriminator, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * d`` for every weight and batch-norm statistic (the step counters are
    copied): the moving average is of the whole D that features are read from, its running statistics included,
    so it can be evaluated like any D (or with ``features.bn_stats = "data"``)."""
    for averaged, current in zip(ema.state_dict().values(), d.state_dict().values()):
        if averaged.is_floating_point():
            averaged.lerp_(current.to(averaged.dtype), 1 - decay)
        else:
            averaged.copy_(current)


def write_training_checkpoint(state: TrainingState, config: Config, paths: list[Path]) -> None:
    """Write the state to every path in ``paths`` (``checkpoint.pt``, and an epoch's copy). Called on every rank:
    each contributes its RNG state; rank 0 writes. Non-finite weights stop training instead, keeping the last good
    checkpoint."""
    bad = [n for m in (state.generator, state.discriminator) for n, p in m.named_parameters()
           if not torch.isfinite(p).all()]
    if bad:
        raise UserError(f"training diverged: non-finite weights in {bad[0]} at epoch {state.epoch + 1}; "
                        f"kept the last good checkpoint {paths[0]}")
    rank_rng = gather_states(torch.get_rng_state())
    if current_world().is_main:
        payload = state.to_payload(config, finished=state.epoch >= config.train.epochs, rank_rng=rank_rng)
        for path in paths:
            save_checkpoint(path, payload)


def save_discriminator(path: Path, state: TrainingState, config: Config, discriminator: Discriminator | None = None,
                       **selection) -> None:
    """D's weights and config, where training stands, and how this D was chosen (the final one, the best probe, or
    the moving average, given as ``discriminator``)."""
    d_state = {k: v.detach().cpu() for k, v in (discriminator or state.discriminator).state_dict().items()}
    save_checkpoint(path, {"kind": "discriminator", "config": config.to_dict(), "discriminator": d_state,
                           "epoch": state.epoch, "step": state.step, "global_step": state.global_step,
                           "train_seconds": round(state.train_seconds, 1), "provenance": state.provenance,
                           **selection})


def save_generator(path: Path, state: TrainingState, config: Config) -> None:
    """G and the final D with the config and where training stands: what the analyses need, without the optimisers."""
    cpu = lambda m: {k: v.detach().cpu() for k, v in m.state_dict().items()}  # noqa: E731
    save_checkpoint(path, {"kind": "generator", "config": config.to_dict(), "generator": cpu(state.generator),
                           "discriminator": cpu(state.discriminator), "epoch": state.epoch,
                           "global_step": state.global_step, "train_seconds": round(state.train_seconds, 1),
                           "provenance": state.provenance})


