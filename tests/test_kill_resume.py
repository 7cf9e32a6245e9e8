"""A pretraining process killed with SIGKILL at any point resumes to weights bitwise equal to an
uninterrupted run. Kills are injected at chosen points (a training step, or halfway through writing
a checkpoint) so every case is exercised on every run."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from dcgan_features.checkpoint import load_checkpoint
from dcgan_features.config import load_config

HELPER = r"""
import json, os, signal, sys
import torch
torch.set_num_threads(1)
import dcgan_features.train as train
from dcgan_features.config import Config

mode, n, run, raw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
calls = [0]
if mode == "step":
    real_step = train.train_step
    def step(*args):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(*args)
    train.train_step = step
elif mode == "save":
    import pathlib
    real_write = pathlib.Path.write_bytes
    def write_bytes(self, data):
        if ".pt." in self.name:  # the temporary file a checkpoint is written to
            calls[0] += 1
            if calls[0] == n:
                with open(self, "wb") as fh:
                    fh.write(bytes(data)[: len(data) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        return real_write(self, data)
    pathlib.Path.write_bytes = write_bytes
train.pretrain(Config.from_dict(json.loads(raw)), run, echo=lambda s: None)
"""


def run_helper(mode, n, run_dir, config):
    return subprocess.run([sys.executable, "-c", HELPER, mode, str(n), str(run_dir), json.dumps(config.to_dict())],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def config():
    # fake: 640 images, batch 64 -> 10 steps an epoch; a checkpoint every 3 steps and at epoch ends
    return load_config(None, {"data.dataset": "fake", "model.width": 8, "train.epochs": 2, "train.batch_size": 64,
                              "train.log_every": 2, "train.checkpoint_every": 3})


@pytest.fixture(scope="module")
def straight(config, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    done = run_helper("none", 0, run, config)
    assert done.returncode == 0, done.stderr
    return load_checkpoint(run / "checkpoint.pt")


# checkpoint writes in order: step 3, 6, 9 checkpoints (1-3), epoch 1's checkpoint.pt (4) and epoch_001.pt (5), ...
@pytest.mark.parametrize("mode,n", [("step", 2), ("step", 5), ("step", 14), ("save", 2), ("save", 4), ("save", 8)],
                         ids=["before-first-checkpoint", "epoch1-step5", "epoch2-step4", "writing-step6-checkpoint",
                              "writing-epoch-end-checkpoint", "writing-epoch2-checkpoint"])
def test_sigkill_then_resume_is_bitwise_equal(mode, n, config, straight, tmp_path):
    run = tmp_path / "run"
    killed = run_helper(mode, n, run, config)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_helper("none", 0, run, config)
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(run / "checkpoint.pt")
    for part in ("generator", "discriminator"):
        assert final[part].keys() == straight[part].keys()
        assert all(torch.equal(final[part][k], straight[part][k]) for k in final[part]), part
    assert final["global_step"] == straight["global_step"] == 20
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]
