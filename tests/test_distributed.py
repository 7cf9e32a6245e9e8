"""More than one process on CPU (Gloo), launched by the real torchrun: two ranks train the weights one rank does,
only rank 0 writes, and a rank killed with SIGKILL mid-epoch resumes to the weights of an uninterrupted run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
from dcgan_features.distributed import shutdown_world

kill_at, run, raw = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if kill_at and os.environ.get("RANK") == "1":
    calls, real_step = [0], train.train_step
    def step(*args):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(*args)
    train.train_step = step
train.pretrain(Config.from_dict(json.loads(raw)), run, echo=print)
shutdown_world()
"""


def torchrun() -> list[str]:
    exe = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    return [exe, "--standalone", "--nproc_per_node=2"]


def launch(tmp_path, config, run, ranks: int, kill_at: int = 0) -> subprocess.CompletedProcess:
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER)
    command = (torchrun() if ranks == 2 else [sys.executable]) + [str(helper), str(kill_at), str(run),
                                                                     json.dumps(config.to_dict())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def weights(run):
    payload = load_checkpoint(run / "checkpoint.pt")
    return {f"{part}.{k}": v for part in ("generator", "discriminator") for k, v in payload[part].items()}


@pytest.fixture(scope="module")
def config():
    return load_config(None, {"data.dataset": "fake", "model.width": 8, "train.epochs": 2, "train.batch_size": 64,
                              "train.log_every": 1, "train.checkpoint_every": 3})


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, config):
    tmp = tmp_path_factory.mktemp("ddp")
    done = launch(tmp, config, tmp / "two", ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "two", done


def test_two_ranks_train_the_weights_of_one(tmp_path, config):
    """Two steps of a global batch of 256 (640 fake images): global batch norm and averaged gradients make the
    same update as one process, to float rounding. (Over many steps Adam turns rounding-sized differences in
    near-zero gradients into lr-sized ones, so the comparison is made early.)"""
    short = load_config(None, {"data.dataset": "fake", "model.width": 8, "train.epochs": 1, "train.batch_size": 256,
                               "train.log_every": 1})
    for ranks in (1, 2):
        done = launch(tmp_path, short, tmp_path / f"ranks{ranks}", ranks=ranks)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = weights(tmp_path / "ranks1"), weights(tmp_path / "ranks2")
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, worst
    off = load_config(None, {**flat(short), "train.sync_batchnorm": False})
    done = launch(tmp_path, off, tmp_path / "unsynced", ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    c = weights(tmp_path / "unsynced")
    assert max(float((a[k].float() - c[k].float()).abs().max()) for k in a) > 1e-4  # per-rank batch norm differs


def flat(config) -> dict:
    return {f"{s}.{k}": v for s, section in config.to_dict().items() for k, v in section.items()}


def test_only_rank_0_writes(tmp_path, config, two_ranks):
    two, done = two_ranks
    one = launch(tmp_path, config, tmp_path / "one", ranks=1)
    assert one.returncode == 0, one.stderr[-3000:]
    files = lambda run: sorted(str(p.relative_to(run)) for p in run.rglob("*"))  # noqa: E731
    assert files(two) == files(tmp_path / "one")
    lines = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    steps = [line["global_step"] for line in lines if "loss_d" in line]
    assert steps == sorted(set(steps))  # one line per logged step: rank 1 wrote none
    assert done.stdout.count("complete after 2 epochs") == 1  # and printed nothing
    payload = load_checkpoint(two / "checkpoint.pt")
    assert payload["world_size"] == 2 and len(payload["rng"]["torch_per_rank"]) == 2


def test_a_rank_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, config, two_ranks):
    two, _ = two_ranks
    killed = launch(tmp_path, config, tmp_path / "killed", ranks=2, kill_at=14)  # mid epoch 2 (10 steps each)
    assert killed.returncode != 0
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["global_step"] == 12
    resumed = launch(tmp_path, config, tmp_path / "killed", ranks=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    a, b = weights(two), weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_with_another_number_of_processes_says_so(tmp_path, config, two_ranks):
    two, _ = two_ranks
    run = tmp_path / "run"
    shutil.copytree(two, run)
    longer = load_config(None, {**flat(config), "train.epochs": 3})
    done = launch(tmp_path, longer, run, ranks=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained with 2 process(es) and resumes with 1" in done.stdout


def test_two_rank_evaluate_makes_the_same_cache_entry_and_result(tmp_path, two_ranks):
    two, _ = two_ranks
    exe = shutil.which("dcgan-features") or str(Path(sys.executable).parent / "dcgan-features")
    common = ["evaluate", "--checkpoint", str(two), "--set", "features.batch_size=64", "--set", "svm.c_grid=[0.01]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for name, launcher in (("one", [exe]), ("two", [*torchrun(), "-m", "dcgan_features"])):
        done = subprocess.run([*launcher, *common, "--cache-dir", str(tmp_path / name / "cache"), "--results-dir",
                               str(tmp_path / name / "results")], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("test accuracy at C=") == 1  # rank 0 alone reports
    entries = {name: sorted((tmp_path / name / "cache").iterdir()) for name in ("one", "two")}
    assert [p.name for p in entries["one"]] == [p.name for p in entries["two"]] and len(entries["one"]) == 2
    for a, b in zip(entries["one"], entries["two"]):
        for file in sorted(p.name for p in a.iterdir()):
            assert (a / file).read_bytes() == (b / file).read_bytes(), file
    results = {name: json.loads(next((tmp_path / name / "results").glob("*.json")).read_text()) for name in entries}
    for key in ("test_accuracy", "chosen_C", "feature_dim", "n_train"):
        assert results["one"][key] == results["two"][key], key
    scores = {name: [(row["C"], row["val_accuracy"]) for row in r["validation"]] for name, r in results.items()}
    assert scores["one"] == scores["two"]
