"""DCGAN pretraining (``dcgan-features pretrain``).

A run directory holds::

    config.json            the resolved config (the run's identity: a resume must match it)
    run.lock               who trains here now (runlock: one writer per run folder)
    metrics.jsonl          one JSON line per logged step and per epoch
    samples/epoch_NNN.png  the fixed-noise sample grid after each epoch
    checkpoint.pt          the latest full training state (also written every train.checkpoint_every steps)
    checkpoints/epoch_NNN.pt  the full training state after each epoch
    discriminator.pt       D's weights and config, written when the run finishes
    discriminator_best_probe.pt  D at the step with the best online probe (with train.probe_every)
    discriminator_ema.pt   the moving average of D's weights (with train.ema_decay), written with discriminator.pt

The epoch's data order is a pure function of (seed, epoch) and the noise generator's state is
checkpointed, so a run resumed from any checkpoint replays exactly the steps it would have taken.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .artifacts import append_jsonl, atomic_path, provenance, write_image_grid
from .augment import diff_augment
from .checkpoint import (
    BEST_PROBE_FILE,
    DISCRIMINATOR_FILE,
    EMA_FILE,
    GENERATOR_FILE,
    TRAINING_FILE,
    load_checkpoint,
)
from .config import Config, TrainConfig
from .contrastive import contrastive_loss
from .data import ImageSet, load_images, to_model_range
from .distributed import (
    World,
    average_gradients,
    barrier,
    current_world,
    init_world,
    mean_over_ranks,
    on_main,
    shard,
)
from .errors import UserError
from .losses import discriminator_loss, generator_loss, rotation_loss
from .models import Discriminator, sample_noise
from .run_folder import check_run_folder, prepare_run
from .runlock import acquire as acquire_run_lock
from .runtime import progress, resolve_device, seeded_generator, settled_bf16
from .training_state import (
    TrainingState,
    new_state,
    restore_state,
    save_discriminator,
    save_generator,
    update_ema,
    write_training_checkpoint,
)

Echo = Callable[[str], None]


# Scores D's features during training (probe.FeatureProbe): built from the config, the training images and the
# device, called with D, returns an accuracy in [0, 1]. Passed in, so training never imports a later stage.
ProbeFactory = Callable[[Config, ImageSet, torch.device], Callable[[Discriminator], float]]


def pretrain(config: Config, run_dir: str | Path, *, force: bool = False, echo: Echo = print,
             make_probe: ProbeFactory | None = None, config_file: str | Path | None = None) -> Path:
    """Train (or resume) a DCGAN in ``run_dir``; returns the path of the final ``discriminator.pt``.
    With ``train.probe_every`` and ``make_probe``, D's features are probed as it trains. ``config_file`` is the
    config file the command was given (its name becomes the recipe's in every result of this run). Under torchrun
    every rank runs this; rank 0 alone writes and prints (``distributed``) and holds the run folder's lock."""
    run_dir = Path(run_dir)
    started = {**provenance(), "config_file": None if config_file is None else str(config_file)}  # the code now
    world, device = init_world(resolve_device(config.train.device))
    # settled before anything is written, so the run's config, checkpoints and results record what ran
    config = replace(config, train=replace(config.train, bf16=settled_bf16(config.train.bf16, device)))
    echo = echo if world.is_main else (lambda _: None)
    if config.train.batch_size % world.size:
        raise UserError(f"train.batch_size {config.train.batch_size} (the global batch) does not split evenly over "
                        f"{world.size} processes")
    on_main(check_run_folder, run_dir)
    lock = on_main(acquire_run_lock, run_dir, echo)  # before anything in the folder is read, cleared or written
    try:
        return train_run(config, run_dir, world, device, started, force, echo, make_probe)
    finally:
        if lock is not None:
            lock.release()


def train_run(config: Config, run_dir: Path, world: World, device: torch.device, started: dict, force: bool,
              echo: Echo, make_probe: ProbeFactory | None) -> Path:
    """:func:`pretrain`'s work, with the run folder held: prepare or resume the run, train, finish."""
    payload = on_main(prepare_run, run_dir, config, force)  # rank 0 reads the checkpoint while checking it
    barrier()  # the run directory is ready (and a --force has cleared it) before any rank reads it
    if not world.is_main and (run_dir / TRAINING_FILE).exists():
        payload = load_checkpoint(run_dir / TRAINING_FILE)
    data = load_images(config.data.dataset, config.data.root, "train", image_size=config.model.image_size,
                       channels=config.model.channels, download=config.data.download)
    steps_per_epoch = len(data) // config.train.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"{config.data.dataset} has {len(data)} training images, fewer than one batch "
                        f"of {config.train.batch_size}; lower --batch-size")
    state = resume(payload, config, device, run_dir, world, echo)
    trained = state.epoch < config.train.epochs
    if trained:
        echo(f"pretraining on {config.data.dataset} ({len(data):,} images, {steps_per_epoch} steps/epoch) "
             f"on {device}{f' x {world.size} processes' if world.size > 1 else ''}, {config.train.epochs} epochs "
             f"-> {run_dir}")
        state.provenance.append({**started, "from_epoch": state.epoch, "from_step": state.step,
                                 "world_size": world.size})
    probe = make_probe(config, data, device) if (make_probe and config.train.probe_every and trained
                                                 and world.is_main) else None
    while state.epoch < config.train.epochs:
        train_epoch(state, data, config, device, run_dir, steps_per_epoch, probe)
        end_epoch(state, config, run_dir)
    path = on_main(finish_run, state, config, run_dir, echo, rewrite=trained)
    barrier()
    return path or run_dir / DISCRIMINATOR_FILE


def resume(payload: dict | None, config: Config, device: torch.device, run_dir: Path, world: World,
           echo: Echo) -> TrainingState:
    """A fresh state, or the checkpoint's, saying where it resumes; a different number of processes is allowed,
    with a warning of what that changes."""
    if payload is None:
        return new_state(config, device)
    state = restore_state(payload, config, device, str(run_dir / TRAINING_FILE))
    if world.is_main:
        _truncate_metrics(run_dir / "metrics.jsonl", state.global_step)
    trained_with = payload.get("world_size", 1)
    if trained_with != world.size and state.epoch < config.train.epochs:
        echo(f"warning: {run_dir} was trained with {trained_with} process(es) and resumes with {world.size}: the "
             "global batch and its data order are unchanged, but each process now holds another share of it"
             + ("" if config.train.sync_batchnorm else ", and batch norm (train.sync_batchnorm off) sees other "
                "batches"))
    if state.epoch < config.train.epochs:
        echo(f"resuming {run_dir} at epoch {state.epoch + 1}, step {state.step}")
    else:
        echo(f"run {run_dir} already has {state.epoch} epochs; pass --epochs N to extend it, or --force to start over")
    return state


def train_epoch(state: TrainingState, data: ImageSet, config: Config, device: torch.device,
                run_dir: Path, steps_per_epoch: int, probe: Callable[[Discriminator], float] | None = None) -> None:
    """Run the remaining steps of epoch ``state.epoch`` (from ``state.step``, so resumes are exact). Each rank
    trains on its share of every global batch; losses are logged as their mean over the ranks."""
    tc, world = config.train, current_world()
    order = torch.randperm(len(data), generator=seeded_generator(tc.seed, 0, state.epoch))
    # train.mirror_real: which images D sees flipped this epoch, a function of (seed, epoch) like the order.
    flipped = torch.rand(len(data), generator=seeded_generator(tc.seed, 5, state.epoch)) < 0.5 \
        if tc.mirror_real else None
    for group in state.opt_g.param_groups:
        group["lr"] = tc.lr_at(state.epoch)
    for group in state.opt_d.param_groups:
        group["lr"] = tc.lr_at(state.epoch) * tc.d_lr_ratio
    meter = ThroughputMeter()
    if state.best_probe >= 0:
        meter.probe_note = f" | best probe {state.best_probe:.1%}"
    started = time.perf_counter()
    label = f"epoch {state.epoch + 1}/{tc.epochs}" if world.is_main else None
    with progress(steps_per_epoch, label, meter.status, done=state.step) as bar:
        while state.step < steps_per_epoch:
            index = shard(order[state.step * tc.batch_size:(state.step + 1) * tc.batch_size], world)
            real = to_model_range(data.images[index].to(device, non_blocking=True))
            if flipped is not None:
                real = torch.where(flipped[index].view(-1, 1, 1, 1).to(device), real.flip(-1), real)
            if tc.channels_last:
                real = real.contiguous(memory_format=torch.channels_last)
            stats = train_step(state, real, config, device)
            state.step += 1
            state.global_step += 1
            meter.update(len(index) * world.size)
            state.train_seconds += time.perf_counter() - started
            started = time.perf_counter()
            bar.update(1)
            if state.global_step % tc.log_every == 0 or state.step == steps_per_epoch:
                log_step(state, mean_over_ranks(stats), meter, run_dir, tc)
            if probe is not None and state.global_step % tc.probe_every == 0:
                probe_step(state, probe, config, run_dir, meter, state.epoch + (state.step == steps_per_epoch))
            if tc.checkpoint_every and state.global_step % tc.checkpoint_every == 0:
                write_training_checkpoint(state, config, [run_dir / TRAINING_FILE])


def train_step(state: TrainingState, real: torch.Tensor, config: Config, device: torch.device) -> dict:
    """One discriminator and one generator update with ``train.loss`` (the paper's non-saturating BCE by default),
    D's inputs augmented by ``train.diffaugment`` and D's loss joined by the rotation task and the contrastive term
    when configured."""
    g, d, tc = state.generator, state.discriminator, config.train
    # The global batch's z, of which this rank takes its share: the same draws whatever the number of processes.
    z = shard(sample_noise(real.shape[0] * current_world().size, config.model, state.noise_rng),
              current_world()).to(device)
    augment = lambda x: diff_augment(x, tc.diffaugment, state.noise_rng)  # noqa: E731
    precision = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settled_bf16(tc.bf16, device))
    with precision:
        fake = g(z)
        # D sees real and fake in separate batches, so each gets its own batch-norm statistics.
        logits_real, logits_fake = d(augment(real)), d(augment(fake.detach()))
        loss_d = discriminator_loss(tc.loss, logits_real.float(), logits_fake.float())
        if state.rotation_head is not None:
            loss_d = loss_d + tc.rotation_weight * rotation_loss(d, state.rotation_head, real, state.noise_rng)
        if state.contrastive_head is not None:
            loss_d = loss_d + tc.contrastive_weight * contrastive_loss(
                d, state.contrastive_head, real, state.noise_rng, tc.contrastive_temperature)
    state.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    average_gradients(d, *(h for h in (state.rotation_head, state.contrastive_head) if h is not None))
    state.opt_d.step()
    if state.discriminator_ema is not None:
        update_ema(state.discriminator_ema, d, tc.ema_decay)
    state.opt_g.zero_grad(set_to_none=True)
    # G's loss needs gradients through D, not of D's weights: D is zero-graded before its next update
    # anyway, so skipping its weight gradients here changes nothing but the work done.
    d.requires_grad_(False)
    try:
        with precision:
            logits_g = d(augment(fake))
        loss_g = generator_loss(tc.loss, logits_g.float())
        loss_g.backward()
    finally:
        d.requires_grad_(True)
    average_gradients(g)
    state.opt_g.step()
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "d_x": torch.sigmoid(logits_real).mean().detach(),
            "d_g_z": torch.sigmoid(logits_fake).mean().detach()}


class ThroughputMeter:
    """Images per second since the last report, and the total rate for the progress bar."""

    def __init__(self) -> None:
        self.start = self.mark = time.perf_counter()
        self.images = self.images_since_mark = 0
        self.note = ""  # a warning shown on the progress line
        self.probe_note = ""  # the latest online probe score, shown beside it

    def update(self, n: int) -> None:
        self.images += n
        self.images_since_mark += n

    def rate(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def status(self) -> str:
        """What the progress line shows after the bar: the rate, then any warning, then the probe score."""
        return f"{self.rate():.0f} img/s{self.note}{self.probe_note}"

    def rate_since_mark(self) -> float:
        now = time.perf_counter()
        rate = self.images_since_mark / max(now - self.mark, 1e-9)
        self.mark, self.images_since_mark = now, 0
        return rate


def log_step(state: TrainingState, stats: dict, meter: ThroughputMeter, run_dir: Path, tc: TrainConfig) -> None:
    """Append a metrics line; stop on non-finite losses; flag a collapsed discriminator."""
    values = {k: float(v) for k, v in stats.items()}
    if not all(np.isfinite(v) for v in values.values()):
        raise UserError(f"training diverged at epoch {state.epoch + 1}, step {state.step} "
                        f"({', '.join(f'{k}={v:.4g}' for k, v in values.items())}); "
                        f"the last good checkpoint is {run_dir / TRAINING_FILE}")
    if values["loss_d"] >= tc.collapse_loss:
        state.low_loss_since = -1
    elif state.low_loss_since < 0:
        state.low_loss_since = state.global_step
    collapsed = state.low_loss_since >= 0 and state.global_step - state.low_loss_since >= tc.collapse_steps
    meter.note = f" | D collapsed: loss_d < {tc.collapse_loss:g} since step {state.low_loss_since}" if collapsed else ""
    if not current_world().is_main:
        return
    append_jsonl(run_dir / "metrics.jsonl", {
        "epoch": state.epoch + 1, "step": state.step, "global_step": state.global_step,
        **{k: round(v, 6) for k, v in values.items()}, "img_per_s": round(meter.rate_since_mark(), 1),
        "d_collapsed": collapsed, "time": round(time.time(), 3)})


def probe_step(state: TrainingState, probe: Callable[[Discriminator], float], config: Config, run_dir: Path,
               meter: ThroughputMeter, epochs_done: int) -> None:
    """Probe D's features; log the score, show it on the progress line, keep D if it is the best so far."""
    started = time.perf_counter()
    accuracy = probe(state.discriminator)
    seconds = time.perf_counter() - started
    append_jsonl(run_dir / "metrics.jsonl", {"epoch": state.epoch + 1, "step": state.step,
                                             "global_step": state.global_step, "probe_accuracy": round(accuracy, 6),
                                             "probe_s": round(seconds, 3), "time": round(time.time(), 3)})
    if accuracy > state.best_probe:
        state.best_probe = accuracy
        save_discriminator(run_dir / BEST_PROBE_FILE, state, config, selected_by="probe", probe_accuracy=accuracy,
                           epochs_done=epochs_done)
    meter.probe_note = f" | probe {accuracy:.1%} (best {state.best_probe:.1%})"


def _truncate_metrics(path: Path, global_step: int) -> None:
    """Drop log lines written after the checkpoint we resume from; those steps are replayed."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("global_step", 0) <= global_step:
                kept.append(line)
        except ValueError:
            pass  # a line cut short by a kill
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


def end_epoch(state: TrainingState, config: Config, run_dir: Path) -> None:
    state.epoch, state.step = state.epoch + 1, 0
    if current_world().is_main:
        save_samples(state, run_dir / "samples" / f"epoch_{state.epoch:03d}.png")
    write_training_checkpoint(state, config, [run_dir / TRAINING_FILE,
                                              run_dir / "checkpoints" / f"epoch_{state.epoch:03d}.pt"])


@torch.no_grad()
def save_samples(state: TrainingState, path: Path) -> None:
    """The fixed-noise grid, drawn with G in eval mode so sampling never touches its BN statistics."""
    g = state.generator
    g.eval()
    images = g(state.fixed_noise.to(next(g.parameters()).device))
    g.train()
    write_image_grid(images, path, nrow=8)


def finish_run(state: TrainingState, config: Config, run_dir: Path, echo: Echo, rewrite: bool) -> Path:
    path = run_dir / DISCRIMINATOR_FILE
    if rewrite or not path.exists():
        save_discriminator(path, state, config, selected_by="final", epochs_done=state.epoch)
    if state.discriminator_ema is not None and (rewrite or not (run_dir / EMA_FILE).exists()):
        save_discriminator(run_dir / EMA_FILE, state, config, state.discriminator_ema, selected_by="ema",
                           epochs_done=state.epoch)
    if rewrite or not (run_dir / GENERATOR_FILE).exists():
        save_generator(run_dir / GENERATOR_FILE, state, config)
    echo(f"run {run_dir} complete after {state.epoch} epochs; discriminator: {path}")
    return path
