from pathlib import Path

import pytest

import dcgan_features.config as config_module
from dcgan_features.config import Config, apply_overrides, load_config, parse_set_option
from dcgan_features.errors import UserError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))


def test_defaults_round_trip_through_dict():
    config = Config()
    assert Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_unknown_key_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepoch = 3\n")
    with pytest.raises(UserError, match="unknown key.*train.epoch"):
        load_config(path)


def test_unknown_section_and_override_are_refused():
    with pytest.raises(UserError, match="unknown section"):
        Config.from_dict({"optimiser": {}})
    with pytest.raises(UserError, match="unknown key"):
        apply_overrides(Config(), {"train.learning_rate": 1e-3})


def test_wrong_type_is_refused():
    with pytest.raises(UserError, match="train.epochs must be int"):
        apply_overrides(Config(), {"train.epochs": "ten"})
    with pytest.raises(UserError, match="must be bool"):
        apply_overrides(Config(), {"data.download": 1})


def test_set_option_values_are_typed():
    assert parse_set_option("train.lr=1e-3") == ("train.lr", 1e-3)
    assert parse_set_option("features.layers=['conv1','conv3']") == ("features.layers", ["conv1", "conv3"])
    assert parse_set_option("data.root=/tmp/x") == ("data.root", "/tmp/x")
    config = apply_overrides(Config(), dict([parse_set_option("train.lr=1")]))
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


def test_every_config_section_is_frozen_and_overrides_build_a_new_config():
    import dataclasses

    sections = [f.type for f in dataclasses.fields(Config)]
    assert all(dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
               for cls in [Config, *(getattr(config_module, name) for name in sections)])
    base = Config()
    changed = apply_overrides(base, {"train.epochs": 3, "svm.c_grid": [1.0]})
    assert base == Config() and (changed.train.epochs, changed.svm.c_grid) == (3, (1.0,))


def test_empty_c_grid_and_bad_architecture_are_refused():
    with pytest.raises(UserError, match="c_grid is empty"):
        apply_overrides(Config(), {"svm.c_grid": []})
    with pytest.raises(UserError, match="power of two"):
        apply_overrides(Config(), {"model.image_size": 48})
    with pytest.raises(UserError, match="hessian_precision must be one of float32, bfloat16, auto"):
        apply_overrides(Config(), {"svm.hessian_precision": "float16"})
    assert apply_overrides(Config(), {"svm.hessian_precision": "auto"}).svm.hessian_precision == "auto"


def test_bf16_is_true_false_or_auto():
    assert apply_overrides(Config(), {"train.bf16": "auto"}).train.bf16 == "auto"
    assert apply_overrides(Config(), {"train.bf16": True}).train.bf16 is True
    with pytest.raises(UserError, match='train.bf16 must be true, false or "auto"'):
        apply_overrides(Config(), {"train.bf16": "yes"})
    with pytest.raises(UserError, match="train.bf16 must be bool or str, got 1"):
        apply_overrides(Config(), {"train.bf16": 1})


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_linear_learning_rate_decay():
    train = apply_overrides(Config(), {"train.epochs": 4, "train.lr_decay_epochs": 2, "train.lr": 1.0}).train
    assert [train.lr_at(e) for e in range(4)] == [1.0, 1.0, 2 / 3, 1 / 3]
    assert Config().train.lr_at(10) == Config().train.lr  # no decay by default


def test_evaluation_settings_hold_their_defaults_once_and_refuse_bad_values():
    from dcgan_features.protocols import EvalConfig

    assert EvalConfig().protocol_name == "full" and EvalConfig().seeds == (0,)
    assert EvalConfig(protocol="per-class").protocol_name == "per-class-400x10"
    assert EvalConfig(protocol="svhn-1000", draws=3).protocol_name == "svhn-100pc-3x100-val10000"
    assert EvalConfig(protocol="per-class", labels_per_class=20, draws=4).protocol_name == "per-class-20x4"
    for bad, message in [({"protocol": "loo"}, "unknown protocol"), ({"baseline": "noise"}, "unknown baseline"),
                         ({"dataset": "mnist"}, "unknown dataset"), ({"draws": 0}, "at least 1"),
                         ({"seeds": (1, 1)}, "given twice"), ({"device": "tpu"}, "--device")]:
        with pytest.raises(UserError, match=message):
            EvalConfig(**bad)
