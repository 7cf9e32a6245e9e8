"""The report: a row only ever holds results that differ in their seeds."""

import copy
import json

import pandas as pd
import pytest

from dcgan_features.config import Config
from dcgan_features.records import NOT_EXPERIMENT_KEYS, SCHEMA, upgrade
from dcgan_features.report import load_results, report_table, write_report


@pytest.fixture(autouse=True)
def away_from_the_repository(tmp_path, monkeypatch):
    """Commands name configs/cifar10.toml; run where no such file is, so the repository's own recipe (which
    changes) never enters a test, except where a test writes one."""
    monkeypatch.chdir(tmp_path)


def result(seed=0, accuracy=0.7, **changes):
    config = Config().to_dict()
    config["data"]["dataset"] = "cifar10"
    record = {"schema": SCHEMA, "seed": seed, "test_accuracy": accuracy, "eval_dataset": "cifar10",
              "chosen_C": 1e-3, "validation": [{"C": 1e-3, "val_accuracy": accuracy}],
              "protocol": "full", "bn_stats": "running", "feature_dim": 7168, "config": config,
              "command": "dcgan-features evaluate --checkpoint runs/a",
              "pretrain": {"dataset": "cifar10", "architecture": "D64-128-256 k4 32px rgb", "seed": seed, "epochs": 25,
                           "provenance": [{"command": "dcgan-features pretrain --config configs/cifar10.toml"}]},
              "checkpoint": {"kind": "discriminator", "finished": True, "epoch": 25, "step": 0, "sha256": "a" * 64}}
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
    target[last] = "per-class-20x3" if setting == "protocol" else other_value(target[last])  # a protocol it knows
    table = rows(tmp_path, base, {**changed, "seed": 1})
    assert len(table) == 2, setting
    if len(set(map(tuple, table[["pretrain_data", "eval_dataset", "protocol", "read-out"]].values))) == 1:
        assert table["recipe"].nunique() == 2  # rows that look alike say how they differ


@pytest.mark.parametrize("settings, label", [
    ({}, "paper"), ({"grid": 2}, "2x2 pool, 1 view"), ({"pyramid": [2, 1]}, "4x4+2x2+1x1 pool, 1 view"),
    ({"score_hflip": True}, "4x4 pool, 2 views"), ({"pyramid": [1], "score_hflip": True}, "4x4+1x1 pool, 2 views")])
def test_a_read_out_other_than_the_papers_is_labelled_in_its_own_column(settings, label, tmp_path):
    changed = copy.deepcopy(result(seed=0))
    for key, value in settings.items():
        changed["config"]["svm" if key == "score_hflip" else "features"][key] = value
    table = rows(tmp_path, changed)
    assert table["read-out"].tolist() == [label]


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


def test_a_row_is_named_after_the_recipe_its_result_stored_wherever_the_report_runs(tmp_path, monkeypatch):
    stored = result(recipe={"name": "deep.toml", "config_file": "configs/deep.toml"})
    legacy = result(seed=1)  # written before the recipe was stored: its recorded --config names it
    legacy["pretrain"]["provenance"][0]["command"] = "dcgan-features pretrain --config elsewhere/wide.toml --seed 1"
    (tmp_path / "res").mkdir()
    for i, r in enumerate((stored, legacy)):
        (tmp_path / "res" / f"r{i}.json").write_text(json.dumps(r))
    named = []
    for where in (tmp_path, tmp_path / "elsewhere"):  # a config file of that name here changes nothing
        where.mkdir(exist_ok=True)
        (where / "wide.toml").write_text('[model]\nwidth = 96\n')
        monkeypatch.chdir(where)
        named.append(sorted(report_table(load_results(tmp_path / "res"))["recipe"].str.split(";").str[0]))
    assert named[0] == named[1] == ["deep.toml / wide.toml"]  # one experiment: the row names both files


def test_a_baseline_is_named_after_the_config_its_evaluation_was_given(tmp_path):
    pixels = result(baseline="pixels", command="dcgan-features evaluate --baseline pixels --config configs/c.toml")
    untrained = result(baseline="untrained", command="dcgan-features evaluate --baseline untrained --checkpoint r")
    assert upgrade(pixels, "p")["recipe"]["name"] == "c.toml"
    assert upgrade(untrained, "u")["recipe"]["name"] == "defaults"
    imported = result(checkpoint={"kind": "imported", "sha256": "0" * 64})
    assert upgrade(imported, "i")["recipe"]["name"] == "imported"


@pytest.mark.parametrize("damage, message", [
    (lambda r: r.pop("validation"), "lacks validation"),
    (lambda r: r.update(schema="dcgan-features/result/v9"), "cannot read"),
    (lambda r: r.update(protocol="nearest-centroid"), "does not know"),
    (lambda r: r.pop("test_accuracy"), "without its test_accuracy"),
])
def test_a_malformed_result_file_is_an_error_that_names_it(tmp_path, damage, message):
    from dcgan_features.errors import UserError

    broken = result(seed=1)
    damage(broken)
    (tmp_path / "good.json").write_text(json.dumps(result()))
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(UserError, match=f"broken.json.*{message}"):
        load_results(tmp_path)
    (tmp_path / "broken.json").write_text('{"schema": "dcgan-features/result/v1", "eval_')  # cut short
    with pytest.raises(UserError, match="broken.json is not readable JSON"):
        load_results(tmp_path)


def test_a_d_rate_of_zero_is_labelled_as_gs_rate_not_as_a_zero_rate(tmp_path):
    labels = rows(tmp_path, result(config__train__lr_d=0.0), result(seed=1, config__train__lr_d=4e-4))["recipe"]
    assert sorted(label.split("; ")[1] for label in labels) == ["train.lr_d=0.0004", "train.lr_d=train.lr"]
    from dcgan_features.ablations import changes
    from dcgan_features.config import apply_overrides

    mirror = {"config": Config().to_dict(), "checkpoint": {}}  # against a two-time-scale reference, the same label
    assert changes(mirror, apply_overrides(Config(), {"train.lr_d": 4e-4})) == "train.lr_d=train.lr"


def test_a_long_ablation_change_is_named_by_its_base_rows_recipe_and_what_it_adds():
    from dcgan_features.ablations import short_changes

    deep = "model.d_widths=[96,96,192,192,384]; model.kernel_size=3; train.rotation_weight=1.0; svm.train_hflip=true"
    shown = pd.DataFrame({
        "change": [f"{deep}; features.pyramid=[2,1]; svm.score_hflip=true", deep, f"{deep}; best-probe D", "reference"],
        "recipe": ["cifar10_deep.toml", "cifar10.toml (was cifar10_deep.toml)", "x.toml", "cifar10_dcgan.toml"],
        "epochs": [24, 24, 23, 10], "command": ["x --set features.pyramid=[2,1]", "x", "x", "x"]})
    shorts, notes = short_changes(shown)
    assert shorts[0] == "cifar10.toml (was cifar10_deep.toml) + pyramid, score_hflip [1]"  # its base row's recipe
    assert shorts[1] == "d_widths, kernel_size +2 [2]"  # the base itself: the names of its keys, as many as fit
    assert shorts[2].startswith("d_widths, kernel_size") and shorts[3] == "reference"  # other epochs: own base
    assert notes[0] == f"[1] {shown['change'][0]}" and len(notes) == 3
    # a row with fewer changes made with --set (the recipe minus a key) is no base: the recipe as its file has it is
    unhflipped = deep.replace("; svm.train_hflip=true", "")
    with_less = pd.concat([shown, pd.DataFrame({"change": [unhflipped], "recipe": ["cifar10.toml"], "epochs": [24],
                                                "command": ["x --set svm.train_hflip=false"]})], ignore_index=True)
    shorts, _ = short_changes(with_less)
    assert shorts[0].startswith("cifar10.toml (was cifar10_deep.toml) + pyramid, score_hflip")
    assert shorts[-1] == "cifar10.toml (was cifar10_deep.toml) + no train_hflip [4]"  # a key back at the reference's


def test_a_long_ablation_change_is_named_by_the_config_file_it_is_nearest_to(tmp_path):
    from dcgan_features.ablations import changes, config_files_beside, nearest_config_file, short_changes
    from dcgan_features.config import load_config

    (tmp_path / "dcgan.toml").write_text("[model]\nd_widths = [64, 128, 256]\n")
    (tmp_path / "deep.toml").write_text('[model]\nd_widths = [96, 96, 192, 192, 384]\nd_strides = [2, 1, 2, 1, 2]\n'
                                        'kernel_size = 3\n[train]\nbf16 = "auto"\nrotation_weight = 1.0\n')
    (tmp_path / "notes.txt").write_text("not a config")
    files = config_files_beside(tmp_path / "dcgan.toml")
    assert sorted(files) == ["dcgan.toml", "deep.toml"] and config_files_beside(tmp_path / "config.json") == {}
    trained = load_config(tmp_path / "deep.toml", {"train.lr_d": 4e-4, "train.bf16": True}).to_dict()
    result = {"config": trained, "recipe": {"name": "deep.toml"}, "checkpoint": {}}
    long_change = changes(result, files["dcgan.toml"])
    assert "train.bf16=true" in long_change and "train.lr_d=0.0004" in long_change  # the reference fixes bf16
    assert changes(result, files["deep.toml"]) == "train.lr_d=0.0004"  # "auto" matches what the machine chose
    assert nearest_config_file(result, files) == "deep.toml: train.lr_d=0.0004"
    as_is = result | {"config": load_config(tmp_path / "deep.toml", {"train.bf16": False}).to_dict()}
    shown = pd.DataFrame({"change": [long_change, changes(as_is, files["dcgan.toml"]), "model.kernel_size=3"],
                          "nearest": [nearest_config_file(r, files) for r in (result, as_is)] + ["dcgan.toml: x"],
                          "recipe": ["deep.toml"] * 3, "epochs": [4, 4, 4],
                          "command": ["x --set train.lr_d=4e-4", "x", "x"]})
    shorts, notes = short_changes(shown)
    assert shorts == ["deep.toml + lr_d [1]", "deep.toml [2]", "model.kernel_size=3"]  # a short change as it is
    assert notes == [f"[1] {long_change}", f"[2] {shown['change'][1]}"]


def test_an_ablation_row_is_compared_with_its_files_own_d_seed_by_seed_on_the_same_split():
    from dcgan_features.ablations import ablation_rows, render_ablations

    def run(pretrain_seed, eval_seed, accuracy, **config):
        r = result(seed=eval_seed, pretrain__seed=pretrain_seed, validation_accuracy=accuracy,
                   recipe={"name": "base.toml"})
        for dotted, value in config.items():
            section, key = dotted.split("__")
            r["config"][section][key] = value
        return r

    recipe = Config.from_dict({"data": {"dataset": "cifar10"}})
    results = [run(0, 0, 0.70), run(1, 1, 0.72), run(0, 0, 0.73, svm__score_hflip=True),
               run(0, 0, 0.71, train__lr_d=4e-4), run(1, 0, 0.75, train__lr_d=4e-4),  # (1, 0): no pair, other split
               run(0, 0, 0.745, train__lr_d=4e-4, svm__score_hflip=True)]
    shown = render_ablations(ablation_rows(results, recipe, {"base.toml": recipe})).set_index("change")
    paired = shown["vs its file's D"]
    assert paired["train.lr_d=0.0004"] == "+1.00 (1 pair)"  # 0.71 - 0.70; its mean (73.00) would say +2.00
    assert paired["train.lr_d=0.0004; svm.score_hflip=true"] == "+1.50 (1 pair)"  # against the same read-out
    assert paired["reference"] == paired["svm.score_hflip=true"] == ""  # the file's own D, read two ways
    assert shown.loc["train.lr_d=0.0004", "pairs"] == 1 and shown.loc["train.lr_d=0.0004", "n"] == 2
    alone = ablation_rows(results[3:5], recipe, {"base.toml": recipe})  # without the file's own D: nothing to pair
    assert render_ablations(alone)["vs its file's D"].tolist() == [""]


def test_a_d_taken_at_an_epochs_end_of_a_longer_run_without_decay_stands_for_its_files_d_of_as_many_epochs():
    from dcgan_features.ablations import ablation_rows, render_ablations

    def run(accuracy, step=0, decay=0, **model):
        r = result(validation_accuracy=accuracy, recipe={"name": "base.toml"}, pretrain__epochs=4,
                   checkpoint={"kind": "training", "finished": False, "epoch": 4, "step": step})
        r["config"]["train"].update(epochs=24, lr_decay_epochs=decay)
        r["config"]["model"].update(model)
        return r

    def paired(step, decay):  # the file, the wide-G run and the file's longer run all share the decay
        recipe = Config.from_dict({"data": {"dataset": "cifar10"}, "train": {"epochs": 24, "lr_decay_epochs": decay}})
        wide = run(0.74, decay=decay, g_widths=[512, 256, 128]) | {
            "checkpoint": {"kind": "discriminator", "finished": True}}
        shown = render_ablations(ablation_rows([wide, run(0.73, step, decay)], recipe, {"base.toml": recipe}))
        return shown.set_index("change")["vs its file's D"]["model.g_widths=[512,256,128]"]

    assert paired(step=0, decay=0) == "+1.00 (1 pair)"
    assert paired(step=120, decay=0) == ""  # taken mid-epoch: not what a 4-epoch run gives
    assert paired(step=0, decay=12) == ""  # its decay looked ahead to epoch 24: not the file's 4-epoch D either


def test_a_renamed_config_file_is_named_with_its_old_name_when_the_result_is_written(tmp_path):
    from dcgan_features.records import recipe_of

    old, new = tmp_path / "cifar10_deep.toml", tmp_path / "cifar10.toml"
    payload = {"kind": "final", "provenance": [{"config_file": str(old)}]}
    new.write_text("")
    assert recipe_of(payload, new, None)["name"] == "cifar10.toml (was cifar10_deep.toml)"  # old is gone
    old.write_text("")
    assert recipe_of(payload, new, None)["name"] == "cifar10_deep.toml"  # both exist: the one it trained from
    assert recipe_of(payload, None, None)["name"] == "cifar10_deep.toml"
    assert recipe_of(payload, new, "untrained")["name"] == "cifar10.toml"  # a baseline: the evaluation's config


def test_a_config_file_changed_since_training_hands_its_name_to_the_file_that_now_holds_the_recipe(tmp_path):
    from dcgan_features.config import load_config
    from dcgan_features.records import recipe_of

    default = tmp_path / "cifar10.toml"
    default.write_text('[train]\nepochs = 24\nbf16 = "auto"\n')
    argv = ["dcgan-features", "pretrain", "--config", str(default), "--seed", "3", "--data-root", "/data"]
    trained = load_config(default, {"train.seed": 3, "data.root": "/data", "train.bf16": True}).to_dict()
    payload = {"kind": "final", "config": trained, "provenance": [{"config_file": str(default), "argv": argv}]}
    assert recipe_of(payload, None, None)["name"] == "cifar10.toml"  # seed and root set by options, "auto" resolved

    default.write_text('[train]\nepochs = 24\nbf16 = "auto"\nmirror_real = true\n')  # a new recipe, the old name
    assert recipe_of(payload, None, None)["name"] == "cifar10.toml (changed since)"
    (tmp_path / "cifar10_deep.toml").write_text('[train]\nepochs = 24\nbf16 = "auto"\n[svm]\nc_grid = [2.0]\n')
    assert recipe_of(payload, None, None) == {"name": "cifar10_deep.toml (was cifar10.toml)", "config_file":
                                              str(default), "renamed_to": str(tmp_path / "cifar10_deep.toml")}

    # the runs that set by command what the file now says belong to it: a --set key, and an option's key
    mirrored = load_config(default, {"train.seed": 3, "data.root": "/data", "train.bf16": True,
                                     "train.epochs": 48}).to_dict()
    commanded = {"kind": "final", "config": mirrored, "provenance": [
        {"config_file": str(default), "argv": argv + ["--set", "train.mirror_real=true"]},
        {"config_file": str(default), "command": "dcgan-features pretrain --out run --epochs 48"}]}
    assert recipe_of(commanded, None, None)["name"] == "cifar10.toml"
    commanded["provenance"].pop()  # without the resume that set 48 epochs, the file no longer gives the run's config
    assert recipe_of(commanded, None, None)["name"] == "cifar10.toml (changed since)"


def test_of_several_files_that_hold_a_run_the_one_that_needs_no_set_flags_names_it(tmp_path):
    """A run trained as ``--config cifar10.toml --set train.mirror_real=true`` while that file was the deep recipe;
    the file then became the mirror recipe, and later a third one: both the deep and the mirror file give every key
    the command left to the file, but only the mirror file gives the flag's too."""
    from dcgan_features.config import load_config
    from dcgan_features.records import recipe_of

    default, deep, mirror = (tmp_path / name for name in ("cifar10.toml", "cifar10_deep.toml", "cifar10_mirror.toml"))
    deep.write_text("[train]\nepochs = 24\n")
    argv = ["dcgan-features", "pretrain", "--config", str(default), "--set", "train.mirror_real=true"]
    trained = load_config(deep, {"train.mirror_real": True}).to_dict()
    payload = {"kind": "final", "config": trained, "provenance": [{"config_file": str(default), "argv": argv}]}
    default.write_text("[train]\nepochs = 24\nmirror_real = true\nlr_d = 4e-4\n")  # the file moved on twice
    assert recipe_of(payload, None, None)["name"] == "cifar10_deep.toml (was cifar10.toml)"  # the one holder
    mirror.write_text("[train]\nepochs = 24\nmirror_real = true\n")  # sorts after deep.toml
    assert recipe_of(payload, None, None)["name"] == "cifar10_mirror.toml (was cifar10.toml)"
