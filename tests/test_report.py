"""The report: a row only ever holds results that differ in their seeds."""

import copy
import json

import pytest

from dcgan_features.config import Config
from dcgan_features.results import (
    NOT_EXPERIMENT_KEYS,
    SCHEMA,
    config_name,
    load_results,
    report_table,
    write_report,
)


@pytest.fixture(autouse=True)
def away_from_the_repository(tmp_path, monkeypatch):
    """Commands name configs/cifar10.toml; run where no such file is, so the repository's own recipe (which
    changes) never enters a test, except where a test writes one."""
    monkeypatch.chdir(tmp_path)


def result(seed=0, accuracy=0.7, **changes):
    config = Config().to_dict()
    config["data"]["dataset"] = "cifar10"
    record = {"schema": SCHEMA, "seed": seed, "test_accuracy": accuracy, "eval_dataset": "cifar10",
              "protocol": "full", "bn_stats": "running", "feature_dim": 7168, "config": config,
              "command": "dcgan-features evaluate --checkpoint runs/a",
              "pretrain": {"dataset": "cifar10", "architecture": "D64-128-256 k4 32px rgb", "seed": seed, "epochs": 25,
                           "provenance": [{"command": "dcgan-features pretrain --config configs/cifar10.toml"}]},
              "checkpoint": {"kind": "discriminator", "finished": True, "epoch": 25, "step": 0}}
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        target = record
        for part in path:
            target = target[part]
        target[last] = value
    return record


def other_value(value):
    """A different value of the same kind (validity does not matter: the report only compares)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, list):
        return value + value[:1] if value else ["conv1"]
    return f"{value}-other"


def rows(tmp_path, *results):
    for i, r in enumerate(results):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    return report_table(load_results(tmp_path))


EXPERIMENT_KEYS = [f"config__{section}__{key}" for section, values in Config().to_dict().items()
                   if section != "data" for key in values if f"{section}.{key}" not in NOT_EXPERIMENT_KEYS]


@pytest.mark.parametrize("setting", EXPERIMENT_KEYS + ["pretrain__epochs", "pretrain__dataset", "eval_dataset",
                                                       "protocol", "feature_dim"])
def test_results_differing_in_any_one_setting_never_share_a_row(setting, tmp_path):
    base = result(seed=0)
    changed = copy.deepcopy(base)
    *path, last = setting.split("__")
    target = changed
    for part in path:
        target = target[part]
    target[last] = other_value(target[last])
    table = rows(tmp_path, base, {**changed, "seed": 1})
    assert len(table) == 2, setting
    if len(set(map(tuple, table[["pretrain_data", "eval_dataset", "protocol"]].values))) == 1:
        assert table["recipe"].nunique() == 2  # rows that look alike say how they differ


def test_seeds_and_settings_that_change_nothing_share_a_row(tmp_path):
    a = result(seed=0, accuracy=0.70)
    b = result(seed=1, accuracy=0.72, config__train__seed=1, config__train__device="cuda", config__data__root="/x",
               config__train__channels_last=False, config__features__batch_size=17, pretrain__seed=1)
    table = rows(tmp_path, a, b)
    assert len(table) == 1 and table["n"].tolist() == [2] and table["recipe"].tolist() == ["cifar10.toml"]


def test_an_older_config_without_newer_keys_groups_with_their_defaults(tmp_path):
    old = result(seed=0)
    del old["config"]["svm"]["preconditioner_rank"]  # written before the key existed; its default keeps the behaviour
    assert len(rows(tmp_path, old, result(seed=1))) == 1


def test_unfinished_runs_are_marked_in_the_report(tmp_path):
    mid = result(seed=0, checkpoint={"kind": "training", "finished": False, "epoch": 3, "step": 120})
    table = rows(tmp_path, mid, result(seed=1))
    marked = table[table["recipe"].str.contains("UNFINISHED")]
    assert len(table) == 2 and len(marked) == 1 and "epoch 3, step 120" in marked["recipe"].iloc[0]
    markdown, _, _ = write_report(tmp_path)
    assert "UNFINISHED RUN (epoch 3, step 120)" in markdown


def test_a_repeated_measurement_is_refused_and_checks_are_left_out(tmp_path):
    from dcgan_features.errors import UserError

    with pytest.raises(UserError, match="same experiment with the same seeds"):
        rows(tmp_path, result(seed=0, accuracy=0.70), result(seed=0, accuracy=0.71))
    (tmp_path / "r1.json").unlink()
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "rerun.json").write_text(json.dumps(result(seed=0, accuracy=0.71)))
    table = report_table(load_results(tmp_path))
    assert table["n"].tolist() == [1] and table["mean"].tolist() == [70.0]


def test_a_config_file_changed_since_the_run_is_named_with_the_runs_commit(tmp_path):
    (tmp_path / "configs").mkdir()
    recipe = tmp_path / "configs" / "cifar10.toml"
    recipe.write_text('[data]\ndataset = "cifar10"\n')  # what the run used: the defaults
    trained = result()
    trained["pretrain"]["provenance"][0]["git_commit"] = "abc1234def"
    assert config_name(trained) == "cifar10.toml"
    recipe.write_text('[data]\ndataset = "cifar10"\n[model]\nwidth = 96\n')  # the recipe changed since
    assert config_name(trained) == "cifar10.toml as of abc1234"
    (tmp_path / "configs" / "plain.toml").write_text('[data]\ndataset = "cifar10"\n')  # kept under a new name
    assert config_name(trained) == "plain.toml (was cifar10.toml)"
    overridden = result(config__model__width=96)  # the command's own --set made it what the file says now
    overridden["pretrain"]["provenance"][0]["command"] += " --set model.width=96"
    assert config_name(overridden) == "cifar10.toml"
    # the training length alone makes no other recipe (a resumed run may change it)
    longer = result(config__model__width=96, config__train__epochs=40)
    longer["pretrain"]["provenance"][0]["command"] += " --set model.width=96"
    assert config_name(longer) == "cifar10.toml"
    # a file that leaves train.bf16 to the machine matches the bool the run stored (what pretrain settled on)
    recipe.write_text('[data]\ndataset = "cifar10"\n[train]\nbf16 = "auto"\n')
    assert config_name(result()) == "cifar10.toml"
    recipe.write_text('[data]\ndataset = "cifar10"\n[train]\nbf16 = true\n')
    assert config_name(result()) != "cifar10.toml"


def test_a_config_file_renamed_since_the_run_is_named_after_the_file_that_now_holds_it(tmp_path):
    (tmp_path / "configs").mkdir()
    trained = result()  # trained from configs/cifar10.toml, which is gone: its recipe was renamed
    assert config_name(trained) == "cifar10.toml"  # nothing beside it to tell by: the name the command gave
    (tmp_path / "configs" / "other.toml").write_text('[data]\ndataset = "cifar10"\n[model]\nwidth = 96\n')
    assert config_name(trained) == "cifar10.toml"
    (tmp_path / "configs" / "default.toml").write_text('[data]\ndataset = "cifar10"\n')
    assert config_name(trained) == "default.toml (was cifar10.toml)"


def test_a_baseline_evaluated_with_a_config_whose_svm_changed_since_is_named_with_its_commit(tmp_path):
    (tmp_path / "configs").mkdir()
    recipe = tmp_path / "configs" / "cifar10.toml"
    recipe.write_text('[data]\ndataset = "cifar10"\n')
    pixels = result(baseline="pixels", git_commit="abc1234def",
                    command="dcgan-features evaluate --baseline pixels --config configs/cifar10.toml --svm torch")
    assert config_name(pixels) == "cifar10.toml"
    recipe.write_text('[data]\ndataset = "cifar10"\n[model]\nwidth = 96\n')  # a pixel row has no architecture
    assert config_name(pixels) == "cifar10.toml"
    recipe.write_text('[data]\ndataset = "cifar10"\n[svm]\ntrain_hflip = true\n')  # but it has an SVM
    assert config_name(pixels) == "cifar10.toml as of abc1234"
    untrained = result(baseline="untrained", command=pixels["command"].replace("pixels", "untrained"))
    assert config_name(untrained) == "cifar10.toml as of an unknown commit"
    # evaluate's own flags count as the overrides they are
    recipe.write_text('[data]\ndataset = "cifar10"\n[svm]\nsolver = "liblinear"\n')
    assert config_name(pixels) == "cifar10.toml"
    # a precision the file leaves to the machine matches the one the result records it ran with
    recipe.write_text('[data]\ndataset = "cifar10"\n[svm]\nhessian_precision = "auto"\n')
    assert config_name(pixels) == "cifar10.toml"
    recipe.write_text('[data]\ndataset = "cifar10"\n[svm]\nhessian_precision = "bfloat16"\n')
    assert config_name(pixels) == "cifar10.toml as of abc1234"
