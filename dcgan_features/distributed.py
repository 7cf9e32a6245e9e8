"""More than one process: torch.distributed under torchrun, and the world of one that every plain run is.

``torchrun --nproc_per_node=N -m dcgan_features pretrain ...`` starts N processes with ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` set; :func:`init_world` joins them into one process group (NCCL on CUDA, Gloo on CPU). A run
without torchrun is a world of one and goes through the same code, where every collective is a no-op.

What a user can predict (the same as the single-process run, to float rounding):

* ``train.batch_size`` is the global batch. Each step, every rank takes the global batch of the (seed, epoch)
  permutation and keeps its own contiguous share (:func:`shard`), and the z vectors likewise, so the data seen per
  step does not depend on the number of processes.
* Gradients are averaged over ranks after each backward (:func:`average_gradients`), as DistributedDataParallel
  does. D runs forward twice (real, then fake) before its backward, which DDP's module wrapper does not allow
  with batch-norm buffers (pytorch issue 22095), so the averaging is done directly on the gradients, as in
  StyleGAN2-ADA's training loop.
* With ``train.sync_batchnorm`` (the default), batch norm normalises with the statistics of the whole global
  batch (:class:`GlobalBatchNorm`, which also runs on CPU, where ``torch.nn.SyncBatchNorm`` does not).
* Rank 0 alone writes files.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun (or another launcher that sets WORLD_SIZE) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (a world of one without it); on CUDA each process takes the GPU
    of its local rank. Returns the world and the device this process computes on."""
    if not launched():
        return World(), device
    exit_with_launcher()
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Long: under evaluate the other ranks wait while rank 0 fits the SVM (an hour at the paper's scale).
        # A failed process does not leave the others waiting that long: torchrun stops them all.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=6))
    return world, device


def exit_with_launcher(poll_s: float = 1.0) -> None:
    """End this worker when the process that launched it (torchrun) is gone. A SIGKILL gives torchrun no chance to
    stop its workers; they would wait in a collective for hours (the timeout above), holding the run folder. Once
    the parent dies the worker is re-parented, which ``os.getppid`` shows."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        print(f"error: the launcher of this worker (PID {parent}) is gone; stopping rank "
              f"{os.environ.get('RANK', '?')}", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-launcher", daemon=True).start()


def shutdown_world() -> None:
    """Leave the process group at the end of a command, all ranks together (a rank leaving alone can hang or
    abort at exit, as Gloo's threads of torch 2.4 did), so no rank exits with the group's threads running."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def current_world() -> World:
    """The world this process belongs to now (one, outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def shard(rows: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous share of a global batch (of row indices or of z vectors)."""
    if len(rows) % world.size:
        raise UserError(f"the global batch of {len(rows)} does not split evenly over {world.size} processes; "
                        f"choose a train.batch_size divisible by {world.size}")
    share = len(rows) // world.size
    return rows[world.rank * share:(world.rank + 1) * share]


def average_gradients(*modules: nn.Module) -> None:
    """Replace every gradient by its mean over the ranks (one all-reduce of all of them, flattened)."""
    if current_world().size == 1:
        return
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scalars averaged over the ranks (for logging the global batch's losses)."""
    if current_world().size == 1:
        return values
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(values, stacked))


def _on_backend_device(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` where the process group's backend can move it: NCCL moves CUDA tensors only, Gloo any."""
    if dist.get_backend() == "nccl":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor


def gather_states(state: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a (same-shaped) tensor, in rank order: e.g. each rank's RNG state, for rank 0 to save."""
    if current_world().size == 1:
        return [state]
    home = state.device
    state = _on_backend_device(state)
    out = [torch.empty_like(state) for _ in range(dist.get_world_size())]
    dist.all_gather(out, state)
    return [t.to(home) for t in out]


def on_main(work, *args, **kwargs):
    """Run ``work`` on rank 0 only and tell the other ranks how it went: they raise the same one-line UserError
    when it raised one (rather than waiting forever for a rank that stopped). Returns its result on rank 0, None
    elsewhere."""
    world = current_world()
    if world.size == 1:
        return work(*args, **kwargs)
    outcome, result = [None], None
    if world.is_main:
        try:
            result = work(*args, **kwargs)
        except UserError as exc:
            outcome = [str(exc)]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise UserError(outcome[0])
    return result


def broadcast_flag(value: bool) -> bool:
    """Rank 0's ``value`` on every rank."""
    if current_world().size == 1:
        return value
    flag = [value]
    dist.broadcast_object_list(flag, src=0)
    return bool(flag[0])


def shard_bounds(n: int, world: World, multiple: int) -> tuple[int, int]:
    """This rank's contiguous rows [start, end) of ``n``, cut at multiples of ``multiple`` (a batch size), so that
    every rank's batches are batches of the one-process pass over the same rows."""
    blocks = -(-n // multiple)
    first, last = (blocks * world.rank) // world.size, (blocks * (world.rank + 1)) // world.size
    return min(first * multiple, n), min(last * multiple, n)


def gather_rows(rows: np.ndarray, n: int, multiple: int) -> np.ndarray | None:
    """Every rank's rows (from :func:`shard_bounds`) put together in order on rank 0; None on the others."""
    world = current_world()
    if world.size == 1:
        return rows
    shares = [shard_bounds(n, World(r, world.size), multiple) for r in range(world.size)]
    longest = max(end - start for start, end in shares)
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=torch.from_numpy(rows).dtype)
    padded[:len(rows)] = torch.from_numpy(rows)
    home = padded.device
    padded = _on_backend_device(padded)
    received = [torch.empty_like(padded) for _ in range(world.size)] if world.is_main else None
    dist.gather(padded, received, dst=0)
    if not world.is_main:
        return None
    return torch.cat([t[:end - start].to(home) for t, (start, end) in zip(received, shares)]).numpy()


def barrier() -> None:
    if current_world().size > 1:
        dist.barrier()


def check_consistent(module: nn.Module, what: str) -> None:
    """Refuse to go on when the ranks' copies of ``module`` differ (they must start, and stay, equal)."""
    if current_world().size == 1:
        return
    values = [t.detach().double().sum() for t in module.state_dict().values() if t.is_floating_point()]
    total = torch.stack(values).sum()
    totals = gather_states(total.reshape(1).to(next(module.parameters()).device))
    if any(not torch.equal(t, totals[0]) for t in totals):
        raise UserError(f"the processes' copies of {what} differ ({[float(t) for t in totals]}); "
                        "every rank must build the same model from the same seed")


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is the all-reduce of the gradient: each rank's share of a global sum gets
    the gradient of every rank's loss through it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm that, in training under a process group, normalises with the mean and variance of the whole
    global batch (sums all-reduced over the ranks, differentiably), and updates its running averages with them;
    elsewhere (one process, or eval mode) it is exactly the batch norm it replaced. Works for 1-d and 2-d inputs,
    on CPU and CUDA."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 4):
            raise ValueError(f"expected 2-d or 4-d input, got {input.dim()}-d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or current_world().size == 1:
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        local = torch.cat([x.float().sum(dims), (x.float() ** 2).sum(dims), count])
        total = _SumOverRanks.apply(local)
        channels = x.shape[1]
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels:2 * channels] / n - mean**2).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - momentum).add_(momentum * mean)
            self.running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1))
        y = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def globalise_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm1d/2d inside ``module`` for a :class:`GlobalBatchNorm` with the same parameters and
    buffers (so state dicts keep their keys and checkpoints their meaning)."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            swapped = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats, device=child.running_mean.device)
            swapped.load_state_dict(child.state_dict())
            setattr(module, name, swapped)
        else:
            globalise_batchnorm(child)
    return module
