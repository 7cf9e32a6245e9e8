"""The house: results recorded whole whatever the launcher, the report a pure reader, one registry per choice,
one writer per run folder, and a one-line answer to every class of bad input (docs/bad-input.md)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dcgan_features import runlock
from dcgan_features.cli import cli
from dcgan_features.config import DATASETS, DEVICES, GAN_LOSSES, load_config
from dcgan_features.data import READERS
from dcgan_features.errors import UserError
from dcgan_features.losses import LOSSES, discriminator_loss
from dcgan_features.protocols import PROTOCOLS, Protocol, run_full

from test_cli import TINY, fail, tiny_run  # noqa: F401  (tiny_run is a fixture)

RECIPE = '[data]\ndataset = "fake"\n[model]\nwidth = 8\n[train]\nepochs = 1\nbatch_size = 64\nlog_every = 5\n' \
         '[svm]\nc_grid = [1e-3, 1e-1]\n'
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def python_m(*args, cwd) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "dcgan_features", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def torchrun(*args) -> list[str]:
    exe = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    return [exe, "--standalone", "--nproc_per_node=2", "-m", "dcgan_features", *map(str, args)]


def test_rows_are_named_after_the_config_whatever_the_launcher_and_wherever_the_report_runs(tmp_path):
    (tmp_path / "tiny_recipe.toml").write_text(RECIPE)
    python_m("pretrain", "--config", "tiny_recipe.toml", "--out", "runs/m", cwd=tmp_path)
    ddp = subprocess.run(torchrun("pretrain", "--config", "tiny_recipe.toml", "--epochs", "2", "--out", "runs/t"),
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=ENV)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    for run in ("runs/m", "runs/t"):
        python_m("evaluate", "--checkpoint", run, "--results-dir", "res", "--cache-dir", "cache", cwd=tmp_path)
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "res").glob("*.json"))]
    assert {r["recipe"]["name"] for r in results} == {"tiny_recipe.toml"}
    first = [r["pretrain"]["provenance"][0] for r in results]
    assert sorted(entry["launcher"] for entry in first) == ["python -m", "torchrun (2 processes)"]
    assert all(entry["command"].startswith("dcgan-features pretrain --config tiny_recipe.toml") for entry in first)
    assert all(r["argv"][1:3] == ["evaluate", "--checkpoint"] for r in results)
    (tmp_path / "elsewhere").mkdir()  # no config file here, nor beside the results
    python_m("report", tmp_path / "res", "--out", "table", cwd=tmp_path / "elsewhere")
    rows = (tmp_path / "elsewhere" / "table" / "report.md").read_text().splitlines()
    named = [row for row in rows if row.startswith("| fake ")]
    assert rows[0] == (f"Written by `dcgan-features report {tmp_path / 'res'} --out table` from 2 result files under "
                       f"`{tmp_path / 'res'}` (each holds its commit, config, checkpoint sha256, seeds and command).")
    assert len(named) == 2 and all("| tiny_recipe.toml" in row for row in named), rows


def test_a_protocol_added_to_the_registry_alone_is_offered_run_stored_and_reported(tmp_path, tiny_run,  # noqa: F811
                                                                                   monkeypatch):
    toy = Protocol("full-twice", "the full protocol under another name, to test the registry",
                   lambda i, s: run_full(*i.arrays, fit_views=i.fit_views), lambda s: "full-twice",
                   lambda r: f"toy test accuracy {100 * r['test_accuracy']:.2f}%")
    monkeypatch.setitem(PROTOCOLS, toy.name, toy)
    help_text = CliRunner().invoke(cli, ["evaluate", "--help"]).output
    assert "full-twice" in help_text and "to test the registry" in help_text
    done = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(tiny_run), "--protocol", "full-twice",
                                    "--results-dir", str(tmp_path / "res"), "--cache-dir", str(tmp_path / "c")])
    assert done.exit_code == 0, done.output
    assert "toy test accuracy" in done.output
    report = CliRunner().invoke(cli, ["report", str(tmp_path / "res")])
    assert report.exit_code == 0 and "| full-twice " in report.output, report.output


def test_each_choice_has_one_registry_and_an_unknown_name_is_an_error():
    assert set(READERS) == set(DATASETS) and set(LOSSES) == set(GAN_LOSSES)
    assert DEVICES == ("auto", "cpu", "cuda")
    with pytest.raises(UserError, match="unknown GAN loss 'wasserstein'"):
        discriminator_loss("wasserstein", torch.zeros(2), torch.zeros(2))
    with pytest.raises(UserError, match="train.loss must be one of bce, hinge"):
        load_config(None, {"train.loss": "wasserstein"})


def test_the_probe_uses_the_svm_section_with_its_own_tol_and_preconditioner(tiny_config):
    from sklearn.svm import LinearSVC

    from dcgan_features.data import load_images
    from dcgan_features.probe import FeatureProbe

    config = load_config(None, {"data.dataset": "fake", "svm.max_iter": 7, "train.probe_tol": 0.01})
    probe = FeatureProbe(config, load_images("fake", "data", "train", image_size=32, channels=3), torch.device("cpu"))
    solver = probe.classifier(1e-4)
    assert (solver.max_iter, solver.tol, solver.preconditioner_rank, solver.C) == (7, 0.01, 64, 1e-4)
    liblinear = FeatureProbe(load_config(None, {"data.dataset": "fake", "svm.solver": "liblinear"}),
                             load_images("fake", "data", "train", image_size=32, channels=3), torch.device("cpu"))
    assert isinstance(liblinear.classifier(1e-4), LinearSVC)
    from dcgan_features.config import SvmConfig
    from dcgan_features.svm import TorchL2SVM

    assert TorchL2SVM().max_iter == SvmConfig().max_iter and TorchL2SVM().tol == SvmConfig().tol


# ----- one writer per run folder -----

def test_a_second_pretrain_on_a_held_run_folder_is_refused_naming_the_holder(tmp_path):
    held = runlock.acquire(tmp_path / "run", echo=lambda _: None)
    try:
        message = fail("pretrain", "--dataset", "fake", "--out", tmp_path / "run", *TINY)
        assert f"PID {os.getpid()}" in message and "being trained by" in message
        assert not (tmp_path / "run" / "config.json").exists()  # refused before anything was written
    finally:
        held.release()
    assert (tmp_path / "run" / runlock.LOCK_FILE).read_text() == ""  # released: emptied, not removed


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / runlock.LOCK_FILE).write_text(json.dumps({"host": "h", "pid": int(gone.stdout)}) + "\n")
    done = CliRunner().invoke(cli, ["pretrain", "--dataset", "fake", "--epochs", "1", "--out", str(tmp_path / "run"),
                                    *TINY])
    assert done.exit_code == 0, done.output
    assert f"names PID {int(gone.stdout)} on h" in done.output and "taking the run over" in done.output
    assert (tmp_path / "run" / "discriminator.pt").is_file()


def workers_of(run_dir: Path) -> list[int]:
    """PIDs of live processes whose command line names ``run_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(run_dir) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # a zombie has exited
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the worker processes")
def test_workers_exit_when_their_launcher_is_killed_and_the_run_is_taken_over(tmp_path):
    run = tmp_path / "run"
    launcher = subprocess.Popen(torchrun("pretrain", "--dataset", "fake", "--epochs", "200", "--out", run, *TINY),
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                                start_new_session=True)
    try:
        deadline = time.time() + 120
        while not ((run / "metrics.jsonl").is_file() and (run / runlock.LOCK_FILE).read_text().strip()):
            assert time.time() < deadline and launcher.poll() is None, "the run did not start"
            time.sleep(0.5)
        assert len(workers_of(run)) >= 3  # torchrun and its two ranks
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.time() + 30
        while workers_of(run) and time.time() < deadline:
            time.sleep(0.5)
        assert workers_of(run) == [], "worker ranks outlived their launcher"
    finally:
        for pid in workers_of(run):
            os.kill(pid, signal.SIGKILL)
    messages = []  # the folder is free again: rank 0 either released it on its way out or died holding it
    taken = runlock.acquire(run, echo=messages.append)
    taken.release()
    assert messages == [] or (len(messages) == 1 and "gone without releasing it" in messages[0])


# ----- bad input, by class (docs/bad-input.md) -----

@pytest.mark.parametrize("setting, message", [
    ("model.width=0", "model.width must be at least 1"), ("model.z_dim=-3", "model.z_dim must be at least 1"),
    ("model.d_widths=[8,0,16]", "every width"), ("model.bn_eps=0", "model.bn_eps must be a positive number"),
    ("train.lr=-1e-4", "train.lr must be a positive number"), ("train.lr=nan", "train.lr must be a positive"),
    ("train.beta1=1.5", "train.beta1 and train.beta2 must lie in"), ("train.seed=-1", "train.seed must be at least 0"),
    ("train.checkpoint_every=-5", "train.checkpoint_every must be at least 0"),
    ("train.collapse_steps=0", "train.collapse_steps must be at least 1"),
    ("train.probe_tol=0", "train.probe_tol must be a positive number"),
    ("features.batch_size=0", "features.batch_size must be at least 1"),
    ("features.grid=-1", "features.grid must be at least 1"),
    ('features.layers=["conv1","conv1"]', "names a block twice"),
    ("svm.max_iter=0", "svm.max_iter must be at least 1"), ("svm.tol=-1", "svm.tol must be a positive number"),
    ("svm.train_translate=-2", "svm.train_translate must be at least 0"),
    ("train.lr_d=-1e-4", "train.lr_d must be 0 (off) or positive"),
    ("svm.train_translate_views=0", "svm.train_translate_views must be at least 1"),
    ("svm.c_grid=[1e-3,inf]", "every C in svm.c_grid must be positive"),
    ("svm.row_precision=float16", "svm.row_precision"),
])
def test_every_config_key_out_of_range_gets_one_line(tmp_path, setting, message):
    assert message in fail("pretrain", "--dataset", "fake", "--out", tmp_path / "x", "--set", setting)
    assert not (tmp_path / "x").exists()


def test_bad_evaluation_settings_and_devices_get_one_line(tmp_path, tiny_run):  # noqa: F811
    assert "--val-size must be at least 1" in fail("evaluate", "--checkpoint", tiny_run, "--protocol", "svhn-1000",
                                                   "--val-size", "0")
    assert "--draws" in fail("evaluate", "--checkpoint", tiny_run, "--protocol", "per-class", "--draws", "0")
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in fail("analyse", "visualise", tiny_run, "--out", tmp_path / "v", "--device", "cuda")


def test_a_checkpoint_pt_that_is_not_a_training_state_is_refused_on_resume(tmp_path, tiny_run):  # noqa: F811
    run = tmp_path / "copied"
    run.mkdir()
    shutil.copy(tiny_run / "config.json", run / "config.json")
    shutil.copy(tiny_run / "discriminator.pt", run / "checkpoint.pt")
    message = fail("pretrain", "--out", run, "--epochs", "2")
    assert "checkpoint.pt is not a training checkpoint" in message
    assert (run / "checkpoint.pt").read_bytes() == (tiny_run / "discriminator.pt").read_bytes()  # left as it was


def test_a_run_page_of_empty_or_corrupt_metrics_gets_one_line(tmp_path, tiny_run):  # noqa: F811
    metrics = tiny_run / "metrics.jsonl"
    line = metrics.read_text().splitlines()[0]
    metrics.write_text("")
    assert "holds no metrics yet" in fail("analyse", "run-page", tiny_run, "--out", tmp_path / "p1")
    metrics.write_text("\n".join([line, line[:10], line]) + "\n")
    assert "metrics.jsonl line 2 is not JSON" in fail("analyse", "run-page", tiny_run, "--out", tmp_path / "p2")
    metrics.write_text("\n".join([line, line, line[:10]]))  # only the last line cut short, as by a kill: read
    done = CliRunner().invoke(cli, ["analyse", "run-page", str(tiny_run), "--out", str(tmp_path / "p3")])
    assert done.exit_code == 0, done.output


def test_corrupt_numbered_samples_get_one_line(tmp_path, tiny_run):  # noqa: F811
    samples = tmp_path / "s"
    done = CliRunner().invoke(cli, ["analyse", "samples", str(tiny_run), "--n", "4", "--out", str(samples)])
    assert done.exit_code == 0, done.output
    walk = ["analyse", "walk", tiny_run, "--samples", samples, "--pair", "0,1", "--out"]
    (samples / "samples.json").write_text('{"checkpoint_sha256": ')
    assert "samples.json is not readable JSON" in fail(*walk, tmp_path / "w1")
    (samples / "samples.json").write_text("{}")
    (samples / "z.npy").write_bytes(b"\x93NUMPY garbage")
    assert "z.npy is not a readable .npy array" in fail(*walk, tmp_path / "w2")
    np.save(samples / "z.npy", np.array(["a", "b"]))
    assert "not one z vector per row" in fail(*walk, tmp_path / "w3")
