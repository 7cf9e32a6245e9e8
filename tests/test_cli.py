"""The real console script end to end, and the one-line answers to bad input."""

import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dcgan_features.cli import cli
from dcgan_features.errors import UserError

ROOT = Path(__file__).parents[1]
TINY = ["--set", "model.width=8", "--set", "train.log_every=5"]


def run_cli(*args, cwd):
    exe = shutil.which("dcgan-features") or str(Path(sys.executable).parent / "dcgan-features")
    done = subprocess.run([exe, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("dataset,extra", [("fake", ["--epochs", "2"]),
                                           ("digits", ["--config", ROOT / "configs" / "digits.toml", "--epochs", "2"])])
def test_pretrain_evaluate_report_end_to_end(dataset, extra, tmp_path):
    run_cli("pretrain", "--dataset", dataset, "--out", "runs/a", "--batch-size", "64", *extra, *TINY, cwd=tmp_path)
    assert (tmp_path / "runs/a/discriminator.pt").is_file()
    evaluate = ["evaluate", "--checkpoint", "runs/a", "--dataset", dataset, "--results-dir", "res",
                "--cache-dir", "cache", "--svm", "torch", "--seeds", "0", "1", "--set", "svm.c_grid=[1e-3, 1e-1]"]
    out = run_cli(*evaluate, cwd=tmp_path)
    assert "chosen on validation" in out and "test accuracy" in out and "(mean ± sample std, n=2)" in out
    result_files = sorted((tmp_path / "res").glob("*.json"))
    assert [p.name[-10:] for p in result_files] == ["seed0.json", "seed1.json"]  # one file per seed
    result, other = (json.loads(p.read_text()) for p in result_files)
    assert (result["seed"], other["seed"]) == (0, 1) and "--seeds 0 1" in other["command"]
    assert other["cache_hit"] == {"train": True, "test": True}  # the second seed reuses the features
    assert result["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    assert result["chosen_C"] in (1e-3, 1e-1) and len(result["validation"]) == 2
    assert result["checkpoint"]["sha256"] and result["git_commit"] and result["command"].startswith("dcgan-features")
    assert result["config"]["model"]["width"] == 8 and result["timings"]["total_s"] > 0
    assert 0.05 < result["timings"]["peak_rss_gb"] < 100  # the process's peak resident memory, torch and all
    # a second evaluate reuses the result instead of overwriting it
    again = run_cli(*evaluate, cwd=tmp_path)
    assert again.count("already evaluated") == 2
    (tmp_path / "README.md").write_text("# Runs, between `<!-- report:begin -->` lines\n<!-- report:begin -->\n"
                                        "old table\n<!-- report:end -->\nkept\n")
    report = run_cli("report", "res", "--readme", "README.md", cwd=tmp_path)
    assert dataset in report and (tmp_path / "res/report.csv").is_file()
    readme = (tmp_path / "README.md").read_text()
    assert "old table" not in readme and readme.startswith("# Runs, between `<!-- report:begin -->` lines\n")
    assert readme.endswith("<!-- report:end -->\nkept\n")
    row = next(line for line in readme.splitlines() if line.startswith(f"| {dataset} "))
    assert "| 2 " in row and "| 0 / 0,1 " in row  # n and seeds (pretrain / eval)


def fail(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    # The error is one line, the last; progress labels of stages that ran before it may precede it.
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert all(line.startswith(PROGRESS_LABELS) for line in lines[:-1]), result.output
    assert "Traceback" not in result.output
    return lines[-1]


PROGRESS_LABELS = ("features: ", "SVM: ", "epoch ")


@pytest.fixture
def tiny_run(tmp_path):
    CliRunner().invoke(cli, ["pretrain", "--dataset", "fake", "--epochs", "1", "--out", str(tmp_path / "run"), *TINY],
                       catch_exceptions=False)
    return tmp_path / "run"


def test_bad_input_gets_one_line(tmp_path, tiny_run):
    assert "unknown dataset 'imagenet'" in fail("pretrain", "--dataset", "imagenet", "--out", tmp_path / "x")
    assert "unknown dataset" in fail("evaluate", "--checkpoint", tiny_run, "--dataset", "imagenet")
    assert "--download" in fail("pretrain", "--dataset", "cifar10", "--data-root", tmp_path / "nothing",
                                "--out", tmp_path / "y")
    assert "--download" in fail("evaluate", "--checkpoint", tiny_run, "--dataset", "svhn",
                                "--data-root", tmp_path / "nothing", "--cache-dir", tmp_path / "c")
    assert "unknown key" in fail("pretrain", "--set", "train.lr_decay=3", "--out", tmp_path / "z")
    assert "must be int" in fail("pretrain", "--set", "train.epochs=many", "--out", tmp_path / "z")
    assert "config file" in fail("pretrain", "--config", tmp_path / "missing.toml")
    assert "does not exist" in fail("evaluate", "--checkpoint", tmp_path / "missing.pt")
    assert "model.width: 64 in the file, 8 in the checkpoint" in fail("evaluate", "--checkpoint", tiny_run, "--config",
                                                                ROOT / "configs" / "cifar10_dcgan.toml")
    assert "c_grid is empty" in fail("evaluate", "--checkpoint", tiny_run, "--set", "svm.c_grid=[]")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "readme.txt").write_text("not an image")
    assert "non-image" in fail("pretrain", "--dataset", "folder", "--data-root", tmp_path / "imgs",
                               "--out", tmp_path / "f")
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in fail("pretrain", "--device", "cuda", "--dataset", "fake", "--out", tmp_path / "g")


def test_corrupt_checkpoint_gets_one_line(tmp_path, tiny_run):
    data = (tiny_run / "discriminator.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:1000])
    assert "truncated or corrupt" in fail("evaluate", "--checkpoint", tmp_path / "cut.pt")


def test_report_aggregates_seeds_and_marks_transfer(tmp_path):
    from dcgan_features.records import SCHEMA
    from dcgan_features.report import write_report

    def result(seed, accuracy, pretrain="cifar10", evaluated="cifar10"):
        return {"schema": SCHEMA, "seed": seed, "test_accuracy": accuracy, "eval_dataset": evaluated,
                "protocol": "full", "bn_stats": "running", "feature_dim": 7168, "chosen_C": 1e-3, "validation": [],
                "pretrain": {"dataset": pretrain, "architecture": "D64-128-256 k4 32px rgb", "seed": seed},
                "checkpoint": {"kind": "discriminator", "sha256": "0" * 64}}

    for i, (seed, acc, pre) in enumerate([(0, 0.70, "cifar10"), (1, 0.72, "cifar10")]):
        (tmp_path / f"r{i}.json").write_text(json.dumps(result(seed, acc, pre)))
    # an imported model: its config claims pretraining seed 0, but nobody here knows the seed it was trained with
    imported = {**result(0, 0.60, "svhn"), "checkpoint": {"kind": "imported"}}
    (tmp_path / "imported.json").write_text(json.dumps(imported))
    pixels = {**result(0, 0.40, "none (pixels baseline)"), "baseline": "pixels"}
    (tmp_path / "pixels.json").write_text(json.dumps(pixels))
    (tmp_path / "unrelated.json").write_text(json.dumps({"not": "a result"}))
    markdown, md_path, csv_path = write_report(tmp_path)
    rows = {line.split("|")[1].strip(): line for line in markdown.splitlines()[2:] if "PAPER" not in line}
    assert sum("PAPER (reference, not run here)" in line for line in markdown.splitlines()) == 3
    assert "71.00 ± 1.41" in rows["cifar10"] and "| 2 " in rows["cifar10"]
    assert "yes" in rows["svhn"] and "| 60.00 " in rows["svhn"]  # two decimals kept
    assert "| 0,1 / 0,1 " in rows["cifar10"] and "| - / 0 " in rows["svhn"]  # seeds (pretrain / eval)
    pixel_cells = [cell.strip() for cell in rows["none (pixels baseline)"].split("|")]
    assert pixel_cells[4:10] == ["-", "full", "-", "-", "defaults", "40.00"]  # transfer, protocol, read-out, bn
    assert md_path.is_file() and csv_path.read_text().count("\n") == 4
    assert "needs one '<!-- report:begin -->'" in fail("report", tmp_path, "--readme", md_path)


def test_evaluate_seeds_option_takes_several_numbers(tmp_path):
    cmd = cli.commands["evaluate"]

    def seeds(*args):
        ctx = click.Context(cmd)
        cmd.parse_args(ctx, ["--checkpoint", "x", *args])
        return ctx.params["seeds"]

    assert seeds() == (0,)
    assert seeds("--seeds", "0", "1", "2", "--dataset", "fake") == (0, 1, 2)
    assert seeds("--seed", "3") == seeds("--seeds", "3") == (3,)
    assert seeds("--seeds", "4", "--seeds", "5") == (4, 5)
    assert "is not in the range" in fail("evaluate", "--checkpoint", tmp_path, "--seeds", "-1")
    assert "'--seeds'" in fail("evaluate", "--checkpoint", tmp_path, "--seeds", "--dataset", "fake")
    assert "given twice" in fail("evaluate", "--checkpoint", tmp_path, "--seeds", "1", "1")


def test_per_class_protocol_end_to_end_and_its_bad_input(tmp_path, tiny_run):
    from dcgan_features.evaluate import evaluate
    from dcgan_features.protocols import EvalConfig

    result = evaluate(tiny_run, EvalConfig(protocol="per-class", labels_per_class=20, draws=3),
                      results_dir=tmp_path / "res",
                      cache_dir=None, overrides={"svm.c_grid": [1e-3, 1e-1]}, echo=lambda s: None)
    assert result["protocol"] == "per-class-20x3" and len(result["test_accuracy_per_draw"]) == 3
    assert "more than class" in fail("evaluate", "--checkpoint", tiny_run, "--protocol", "per-class",
                                     "--labels-per-class", "100", "--results-dir", tmp_path / "r2")


def test_baselines_run_through_the_same_pipeline(tmp_path, tiny_run):
    from dcgan_features.evaluate import evaluate
    from dcgan_features.protocols import EvalConfig

    common = dict(results_dir=tmp_path / "res", cache_dir=tmp_path / "cache", overrides={"svm.c_grid": [1e-2]},
                  echo=lambda s: None)
    pixels = evaluate(tiny_run, EvalConfig(baseline="pixels"), **common)
    untrained = evaluate(tiny_run, EvalConfig(baseline="untrained"), **common)
    trained = evaluate(tiny_run, **common)
    assert pixels["feature_dim"] == 3 * 32 * 32 and pixels["pretrain"]["dataset"] == "none (pixels baseline)"
    assert untrained["feature_dim"] == trained["feature_dim"] == 896
    assert untrained["checkpoint"]["sha256"] != trained["checkpoint"]["sha256"]
    assert len(list((tmp_path / "res").glob("*.json"))) == 3  # three distinct result files
    with pytest.raises(UserError, match="unknown baseline"):
        evaluate(tiny_run, EvalConfig(baseline="noise"), **common)
    # a baseline can take its architecture from a config instead of a checkpoint
    (tmp_path / "tiny.toml").write_text('[data]\ndataset = "fake"\n[model]\nwidth = 8\n')
    from_config = evaluate(None, EvalConfig(baseline="untrained"), config_path=tmp_path / "tiny.toml",
                           **{**common, "results_dir": tmp_path / "res2"})
    assert from_config["test_accuracy"] == untrained["test_accuracy"]  # same architecture, same seed
    assert from_config["feature_dim"] == 896
    assert "--checkpoint is required" in fail("evaluate", "--dataset", "fake")


def test_usage_errors_are_one_line_too():
    assert "'noise' is not one of" in fail("evaluate", "--checkpoint", "x", "--baseline", "noise")
    assert "No such option" in fail("pretrain", "--epoch", "3")
    assert "not a valid integer" in fail("pretrain", "--epochs", "three")
    assert CliRunner().invoke(cli, ["--help"]).exit_code == 0


def test_data_batchnorm_stats_are_recorded_and_cached_apart(tmp_path, tiny_run):
    from dcgan_features.evaluate import evaluate

    common = dict(cache_dir=tmp_path / "cache", overrides={"svm.c_grid": [1e-2]}, echo=lambda s: None)
    running = evaluate(tiny_run, results_dir=tmp_path / "a", **common)
    data = evaluate(tiny_run, results_dir=tmp_path / "b", **{**common, "overrides": {
        "svm.c_grid": [1e-2], "features.bn_stats": "data"}})
    assert (running["bn_stats"], data["bn_stats"]) == ("running", "data")
    assert not data["cache_hit"]["train"] and not data["cache_hit"]["test"]  # never the running-stats features
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 4


def test_svhn_protocol_end_to_end_on_official_mat_files(tmp_path, tiny_run):
    from test_data import write_svhn

    write_svhn(tmp_path / "train_32x32.mat", 400, seed=0)
    write_svhn(tmp_path / "test_32x32.mat", 100, seed=1)
    out = run_cli("evaluate", "--checkpoint", tiny_run, "--dataset", "svhn", "--data-root", tmp_path,
                  "--protocol", "svhn-1000", "--labels-per-class", "10", "--draws", "2", "--test-draws", "3",
                  "--val-size", "100", "--set", "svm.c_grid=[1e-3, 1e-2]", "--results-dir", tmp_path / "res",
                  "--cache-dir", tmp_path / "cache", cwd=tmp_path)
    assert "1.96 x std" in out
    (path,) = (tmp_path / "res").glob("svhn_svhn-10pc-2x3-val100_*.json")
    result = json.loads(path.read_text())
    assert len(result["test_error_per_draw"]) == 3 and result["feature_dim"] == 896


def test_an_unfinished_run_is_evaluated_with_a_warning_and_marked(tmp_path, tiny_run):
    from dcgan_features.checkpoint import load_checkpoint, save_checkpoint
    from dcgan_features.report import write_report

    payload = load_checkpoint(tiny_run / "checkpoint.pt")
    (tiny_run / "discriminator.pt").unlink()  # as if the run were killed in its first epoch
    save_checkpoint(tiny_run / "checkpoint.pt", {**payload, "finished": False, "epoch": 0, "step": 5})
    result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(tiny_run), "--results-dir", str(tmp_path / "res"),
                                      "--set", "svm.c_grid=[1e-2]"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "unfinished run (epoch 0, step 5)" in result.output
    (path,) = (tmp_path / "res").glob("*.json")
    record = json.loads(path.read_text())["checkpoint"]
    assert (record["kind"], record["finished"], record["epoch"], record["step"]) == ("training", False, 0, 5)
    assert "UNFINISHED RUN (epoch 0, step 5)" in write_report(tmp_path / "res")[0]


def test_evaluate_takes_data_from_flags_then_config_then_checkpoint(tmp_path, tiny_run):
    (tmp_path / "digits.toml").write_text('[data]\ndataset = "digits"\n[model]\nwidth = 8\n')
    (tmp_path / "no_data.toml").write_text('[model]\nwidth = 8\n[svm]\nc_grid = [1e-2]\n')

    def evaluated(*args):
        result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(tiny_run), "--set", "svm.c_grid=[1e-2]",
                                          "--results-dir", str(tmp_path / "res"), "--force", *map(str, args)],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        (path,) = [line[len("result: "):] for line in result.output.splitlines() if line.startswith("result: ")]
        record = json.loads(Path(path).read_text())
        assert record["config"]["data"]["dataset"] == record["eval_dataset"]  # the file says what was used
        return record["eval_dataset"]

    assert evaluated() == "fake"  # the checkpoint's
    assert evaluated("--config", tmp_path / "no_data.toml") == "fake"  # a config without [data] keeps it
    assert evaluated("--config", tmp_path / "digits.toml") == "digits"  # the config's [data] wins over it
    assert evaluated("--config", tmp_path / "digits.toml", "--dataset", "fake") == "fake"  # the flag wins
    assert evaluated("--set", "data.dataset=digits") == "digits"


def test_svhn_protocol_takes_data_statistics_as_the_authors_did(tmp_path, tiny_run, monkeypatch):
    """Under svhn-1000 the recomputed batch-norm statistics come from the images outside the validation split,
    in the order of the seed-42 shuffle, with the last partial batch counted (the authors' SVHN script); other
    protocols use every training image in file order and drop the partial batch."""
    evaluate_module = importlib.import_module("dcgan_features.evaluate")  # the stage module, not the API function
    from dcgan_features.data import load_images
    from dcgan_features.protocols import EvalConfig, svhn_shuffle

    from test_data import write_svhn

    write_svhn(tmp_path / "train_32x32.mat", 400, seed=0)
    write_svhn(tmp_path / "test_32x32.mat", 100, seed=1)
    calls, real = [], evaluate_module.recompute_batchnorm_stats

    def recording(model, images, batch_size, device, keep_partial=False):
        calls.append((images.clone(), keep_partial))
        return real(model, images, batch_size, device, keep_partial)

    monkeypatch.setattr(evaluate_module, "recompute_batchnorm_stats", recording)
    common = dict(overrides={"svm.c_grid": [1e-2], "features.bn_stats": "data"}, cache_dir=tmp_path / "cache",
                  echo=lambda s: None)
    svhn = EvalConfig(protocol="svhn-1000", labels_per_class=10, draws=2, test_draws=2, val_size=100,
                      dataset="svhn", root=str(tmp_path))
    evaluate_module.evaluate(tiny_run, svhn, results_dir=tmp_path / "a", **common)
    evaluate_module.evaluate(tiny_run, EvalConfig(dataset="svhn", root=str(tmp_path)), results_dir=tmp_path / "b",
                             **common)
    train = load_images("svhn", tmp_path, "train", image_size=32, channels=3).images
    (pool, partial), (everything, dropped) = calls
    assert torch.equal(pool, train[torch.from_numpy(svhn_shuffle(400, 100)[100:])]) and partial
    assert torch.equal(everything, train) and not dropped


def test_validation_protocol_never_reads_the_test_split_and_stays_out_of_the_report(tmp_path, tiny_run, monkeypatch):
    evaluate_module = importlib.import_module("dcgan_features.evaluate")  # the stage module, not the API function
    from dcgan_features.protocols import EvalConfig
    from dcgan_features.report import write_report

    splits, real = [], evaluate_module.load_images
    monkeypatch.setattr(evaluate_module, "load_images", lambda *a, **k: splits.append(a[2]) or real(*a, **k))
    common = dict(overrides={"svm.c_grid": [1e-3, 1e-1]}, results_dir=tmp_path / "res", cache_dir=None,
                  echo=lambda s: None)
    chosen = evaluate_module.evaluate(tiny_run, EvalConfig(protocol="validation"), **common)
    assert splits == ["train"] and chosen["test_accuracy"] is None and chosen["n_test"] == 0
    assert chosen["validation_accuracy"] == max(r["val_accuracy"] for r in chosen["validation"])
    full = evaluate_module.evaluate(tiny_run, **common)
    assert [r["val_accuracy"] for r in full["validation"]] == [r["val_accuracy"] for r in chosen["validation"]]
    markdown = write_report(tmp_path / "res")[0]
    assert "| validation " not in markdown and "| full " in markdown


def test_evaluate_selects_the_final_the_best_probe_or_the_moving_average_d_and_records_which(tmp_path):
    def ok(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    ok("pretrain", "--dataset", "fake", "--epochs", "1", "--out", tmp_path / "run", *TINY,
       "--set", "train.probe_every=3", "--set", "train.probe_images=200", "--set", "train.ema_decay=0.9")
    common = ["evaluate", "--checkpoint", tmp_path / "run", "--results-dir", tmp_path / "res",
              "--set", "svm.c_grid=[1e-2]"]
    ok(*common)
    ok(*common, "--select", "best-probe")
    ok(*common, "--select", "ema")
    records = [json.loads(p.read_text())["checkpoint"] for p in sorted((tmp_path / "res").glob("*.json"))]
    assert sorted(r["selected_by"] for r in records) == ["ema", "final", "probe"]
    assert len({r["sha256"] for r in records}) == 3
    assert next(r for r in records if r["selected_by"] == "probe")["probe_accuracy"] is not None
    report = ok("report", tmp_path / "res")
    assert all(f'pretrain.selected_by="{which}"' in report for which in ("probe", "final", "ema"))
    ok("pretrain", "--dataset", "fake", "--epochs", "1", "--out", tmp_path / "plain", *TINY)
    for select, name in (("best-probe", "discriminator_best_probe.pt"), ("ema", "discriminator_ema.pt")):
        assert f"holds no {name}" in fail("evaluate", "--checkpoint", tmp_path / "plain", "--select", select)
    assert "picks a file of a run directory" in fail("evaluate", "--checkpoint", tmp_path / "plain" /
                                                     "discriminator.pt", "--select", "ema")


def test_evaluate_extracts_flipped_training_images_for_train_hflip(tmp_path, tiny_run):
    from dcgan_features.evaluate import evaluate
    from dcgan_features.protocols import EvalConfig

    common = dict(cache_dir=tmp_path / "cache", results_dir=tmp_path / "res", echo=lambda s: None)
    plain = evaluate(tiny_run, EvalConfig(protocol="validation"), overrides={"svm.c_grid": [1e-2]}, **common)
    flipped = evaluate(tiny_run, EvalConfig(protocol="validation"),
                       overrides={"svm.c_grid": [1e-2], "svm.train_hflip": True}, **common)
    assert flipped["config"]["svm"]["train_hflip"] and "features_train_mirrored_s" in flipped["timings"]
    assert flipped["n_fit"] == plain["n_fit"] * 2 and flipped["n_val"] == plain["n_val"]
    keys = [json.loads((p / "key.json").read_text()) for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert sorted(k["split"] for k in keys) == ["train", "train-hflip"]


def test_a_full_disk_is_one_line_and_leaves_no_result_or_cache_entry(tmp_path, tiny_run, monkeypatch):
    import errno
    import os

    def full(entry, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(entry))

    monkeypatch.setattr("dcgan_features.features._write_entry", full)
    message = fail("evaluate", "--checkpoint", tiny_run, "--protocol", "validation", "--cache-dir", tmp_path / "c",
                   "--results-dir", tmp_path / "res")
    assert message.startswith("error: no space left on device (") and "nothing earlier was overwritten" in message
    assert not list((tmp_path / "c").rglob("key.json")) and not (tmp_path / "res").exists()


def test_evaluate_fits_on_shifted_copies_of_the_training_images_for_train_translate(tmp_path, tiny_run):
    """svm.train_translate=2 with 2 copies beside the mirror: four times the fitting rows, the same validation
    rows, each copy's features cached under its own split; a shift as large as the image is one line of error."""
    from dcgan_features.evaluate import evaluate
    from dcgan_features.protocols import EvalConfig

    common = dict(cache_dir=tmp_path / "cache", results_dir=tmp_path / "res", echo=lambda s: None)
    plain = evaluate(tiny_run, EvalConfig(protocol="validation"), overrides={"svm.c_grid": [1e-2]}, **common)
    shifted = evaluate(tiny_run, EvalConfig(protocol="validation"), force=True, **common,
                       overrides={"svm.c_grid": [1e-2], "svm.train_hflip": True, "svm.train_translate": 2,
                                  "svm.train_translate_views": 2})
    assert shifted["n_fit"] == plain["n_fit"] * 4 and shifted["n_val"] == plain["n_val"]
    keys = [json.loads((p / "key.json").read_text()) for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert sorted(k["split"] for k in keys) == ["train", "train-hflip", "train-shift2-0", "train-shift2-1"]
    assert len({k["data_sha256"] for k in keys}) == 4
    assert "svm.train_translate must be below the image size (32), got 32" in fail(
        "evaluate", "--checkpoint", tiny_run, "--protocol", "validation", "--cache-dir", tmp_path / "cache",
        "--results-dir", tmp_path / "res2", "--set", "svm.train_translate=32")


def test_evaluate_holds_the_fitting_rows_in_bfloat16_under_row_precision(tmp_path, tiny_run, monkeypatch):
    """svm.row_precision=bfloat16 reaches the solver as a bfloat16 tensor in every protocol that fits an SVM, is
    recorded (its own result file and report row), and moves accuracy by rounding only."""
    from dcgan_features import svm
    from dcgan_features.evaluate import evaluate
    from dcgan_features.protocols import EvalConfig

    fitted = []
    original = svm.TorchL2SVM.fit
    monkeypatch.setattr(svm.TorchL2SVM, "fit", lambda self, X, y: fitted.append(X.dtype) or original(self, X, y))
    common = dict(cache_dir=tmp_path / "cache", results_dir=tmp_path / "res", echo=lambda s: None)
    plain = evaluate(tiny_run, EvalConfig(protocol="full"), overrides={"svm.c_grid": [1e-2]}, **common)
    assert set(fitted) == {np.dtype(np.float32)}
    fitted.clear()
    narrow = evaluate(tiny_run, EvalConfig(protocol="full"), **common,
                      overrides={"svm.c_grid": [1e-2], "svm.row_precision": "bfloat16", "svm.train_hflip": True})
    per_class = evaluate(tiny_run, EvalConfig(protocol="per-class", labels_per_class=20, draws=2), **common,
                         overrides={"svm.c_grid": [1e-2], "svm.row_precision": "bfloat16"})
    assert fitted == [torch.bfloat16] * 6  # full: sweep and refit; per-class: each draw's sweep and refit
    assert narrow["config"]["svm"]["row_precision"] == "bfloat16" and len(list((tmp_path / "res").glob("*.json"))) == 3
    assert abs(narrow["test_accuracy"] - plain["test_accuracy"]) < 0.1 and per_class["test_accuracy"] > 0.2


def test_an_auto_hessian_precision_is_stored_as_the_precision_that_ran(tmp_path, tiny_run, monkeypatch):
    from dcgan_features import runtime
    from dcgan_features.evaluate import evaluate
    from dcgan_features.protocols import EvalConfig

    common = dict(cache_dir=tmp_path / "cache", echo=lambda s: None)
    ran = {}
    for flags, precision in ((("avx2",), "float32"), (("avx2", "avx512_bf16"), "bfloat16")):
        monkeypatch.setattr(runtime, "cpu_flags", lambda flags=flags: flags)
        auto = evaluate(tiny_run, EvalConfig(protocol="validation"), results_dir=tmp_path / precision,
                        overrides={"svm.c_grid": [1e-2], "svm.hessian_precision": "auto"}, **common)
        explicit = evaluate(tiny_run, EvalConfig(protocol="validation"), results_dir=tmp_path / f"{precision}-set",
                            overrides={"svm.c_grid": [1e-2], "svm.hessian_precision": precision}, **common)
        assert auto["config"]["svm"]["hessian_precision"] == precision
        # the same settings as naming the precision outright: one file name, one report row
        assert [p.name for p in (tmp_path / precision).glob("*.json")] == \
            [p.name for p in (tmp_path / f"{precision}-set").glob("*.json")]
        ran[precision] = auto["validation"][0]["val_accuracy"], explicit["validation"][0]["val_accuracy"]
    assert ran["float32"][0] == ran["float32"][1]
    assert abs(ran["bfloat16"][0] - ran["bfloat16"][1]) < 1e-9
    from dcgan_features.config import SvmConfig
    from dcgan_features.svm import make_classifier
    assert make_classifier(SvmConfig(hessian_precision="auto"), 1.0).hessian_precision == "bfloat16"  # direct use


def test_ablation_table_states_each_rows_change_from_the_reference(tmp_path, tiny_run):
    from dcgan_features.evaluate import evaluate
    from dcgan_features.protocols import EvalConfig

    common = dict(results_dir=tmp_path / "abl", cache_dir=tmp_path / "cache", echo=lambda s: None)
    for extra in ({}, {"svm.train_hflip": True}):
        for seed in (0, 1):
            evaluate(tiny_run, EvalConfig(protocol="validation"), seed=seed, overrides={"svm.c_grid": [1e-2], **extra},
                     **common)
    out = tmp_path / "table"
    args = ["ablations", str(tmp_path / "abl"), "--reference", str(tiny_run / "config.json"), "--out", str(out)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| ")][1:]
    changes = sorted(row.split("|")[1].strip() for row in rows)
    assert changes == ["reference", "svm.c_grid=[0.01]; svm.train_hflip=true"] or \
        changes == ["svm.c_grid=[0.01]", "svm.c_grid=[0.01]; svm.train_hflip=true"]
    csv = out.with_suffix(".csv").read_text()
    assert csv.count("0 / 0,1") == 2 and csv.count(",2,") == 2  # each row: two results (evaluation seeds 0, 1)
    table = out.with_suffix(".md").read_text()
    command = re.match(r"Written by `dcgan-features (.+?)` from 4 validation result files under", table)
    out.with_suffix(".md").unlink()
    assert CliRunner().invoke(cli, shlex.split(command.group(1))).exit_code == 0
    assert out.with_suffix(".md").read_text() == table  # the command it names remakes it
    shutil.copy(next((tmp_path / "abl").glob("*seed0.json")), tmp_path / "abl" / "copy.json")
    assert "repeat the same experiment" in fail(*args)


def test_evaluate_shows_a_line_per_stage_off_a_terminal_and_a_bar_with_eta_on_one(tmp_path, tiny_run, monkeypatch):
    import io
    import sys

    result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(tiny_run), "--protocol", "per-class",
                                      "--labels-per-class", "20", "--draws", "2", "--set", "svm.c_grid=[0.01, 0.1]",
                                      "--results-dir", str(tmp_path / "res"), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[:3] == ["features: fake train", "features: fake test", "SVM: C sweep on each of 2 draws"]
    assert len(lines) == 4 and lines[3].startswith("SVM: refit each draw at C=")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    from dcgan_features.runtime import progress

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress(4, "SVM: C sweep", lambda: "C=0.1: 50.00% on validation") as bar:
        for _ in range(4):
            bar.update(1)
    shown = terminal.getvalue()
    assert "SVM: C sweep" in shown and "4/4" in shown and "C=0.1: 50.00% on validation" in shown
