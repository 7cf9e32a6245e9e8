import dataclasses
import json

import pytest
import torch

import dcgan_features.train as train_module
from dcgan_features.checkpoint import load_checkpoint, load_discriminator, resolve_checkpoint, save_checkpoint
from dcgan_features.config import apply_overrides
from dcgan_features.errors import UserError
from dcgan_features.models import build_models
from dcgan_features.train import pretrain


def weights(run_dir):
    payload = load_checkpoint(run_dir / "checkpoint.pt")
    return {**{f"g.{k}": v for k, v in payload["generator"].items()},
            **{f"d.{k}": v for k, v in payload["discriminator"].items()}}


def test_run_directory_contents(tiny_config, tmp_path):
    run = tmp_path / "run"
    pretrain(tiny_config, run, echo=lambda s: None)
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "discriminator.pt", "generator.pt",
                 "samples/epoch_001.png", "samples/epoch_002.png", "checkpoints/epoch_002.pt"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_d", "loss_g", "d_x", "d_g_z", "img_per_s"} <= set(lines[0])
    assert json.loads((run / "config.json").read_text()) == tiny_config.to_dict()
    payload = load_checkpoint(run / "checkpoint.pt")
    assert {"generator", "discriminator", "opt_g", "opt_d", "epoch", "rng", "config"} <= set(payload)
    assert payload["epoch"] == 2 and payload["finished"]


def test_interrupted_run_resumes_bitwise(tiny_config, tmp_path, interrupted_pretrain):
    config = apply_overrides(tiny_config, {"train.checkpoint_every": 3})
    pretrain(config, tmp_path / "straight", echo=lambda s: None)
    interrupted_pretrain(config, tmp_path / "resumed", at=14)  # mid epoch 2; the last checkpoint was at step 12
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["global_step"] == 12
    pretrain(config, tmp_path / "resumed", echo=lambda s: None)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["global_step"] for line in lines]
    assert steps == sorted(set(steps))  # replayed steps are logged once


def test_resume_with_another_config_is_refused(tiny_config, tmp_path):
    pretrain(tiny_config, tmp_path / "run", echo=lambda s: None)
    with pytest.raises(UserError, match="different config.*model.width"):
        pretrain(apply_overrides(tiny_config, {"model.width": 16}), tmp_path / "run", echo=lambda s: None)


def test_divergence_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    pretrain(apply_overrides(tiny_config, {"train.epochs": 1}), run, echo=lambda s: None)
    good = (run / "checkpoint.pt").read_bytes()
    real_step = train_module.train_step

    def nan_step(*args):
        stats = real_step(*args)
        return {**stats, "loss_d": torch.tensor(float("nan"))}

    monkeypatch.setattr(train_module, "train_step", nan_step)
    with pytest.raises(UserError, match="diverged.*loss_d=nan"):
        pretrain(tiny_config, run, echo=lambda s: None)
    assert (run / "checkpoint.pt").read_bytes() == good


def test_truncated_and_foreign_checkpoints_are_refused(tiny_config, tmp_path):
    pretrain(apply_overrides(tiny_config, {"train.epochs": 1}), tmp_path / "run", echo=lambda s: None)
    data = (tmp_path / "run" / "discriminator.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a dcgan-features checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing.pt")


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_checkpoint_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"format": "dcgan-features/checkpoint/v1", "config": {}, "discriminator": Exploit(marker)},
               tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refusing checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(tiny_config, tmp_path):
    pretrain(apply_overrides(tiny_config, {"train.epochs": 1}), tmp_path / "run", echo=lambda s: None)
    payload = load_checkpoint(tmp_path / "run" / "discriminator.pt")
    payload["config"]["model"]["width"] = 16
    save_checkpoint(tmp_path / "mismatch.pt", payload)
    with pytest.raises(UserError, match="do not fit this architecture"):
        load_discriminator(load_checkpoint(tmp_path / "mismatch.pt"), "mismatch.pt")


def test_collapsed_discriminator_is_reported(tiny_config, tmp_path, monkeypatch):
    real_step = train_module.train_step

    def collapsed_step(*args):
        return {**real_step(*args), "loss_d": torch.tensor(1e-5)}

    monkeypatch.setattr(train_module, "train_step", collapsed_step)
    config = apply_overrides(tiny_config, {"train.collapse_steps": 6})
    pretrain(config, tmp_path / "run", echo=lambda s: None)
    flags = [json.loads(line)["d_collapsed"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert flags[0] is False and flags[-1] is True


def test_same_seed_same_weights_and_accuracy(tiny_config, tmp_path):
    from dcgan_features.evaluate import evaluate

    config = apply_overrides(tiny_config, {"train.epochs": 1})
    pretrain(config, tmp_path / "a", echo=lambda s: None)
    pretrain(config, tmp_path / "b", echo=lambda s: None)
    # the files differ in provenance (timestamps, wall time) and torch's serialization id, not in weights
    a, b = (load_checkpoint(tmp_path / run / "discriminator.pt")["discriminator"] for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    results = [evaluate(tmp_path / run, results_dir=tmp_path / f"res_{run}", cache_dir=None, echo=lambda s: None)
               for run in ("a", "b")]
    assert results[0]["test_accuracy"] == results[1]["test_accuracy"]
    assert results[0]["validation"][0]["val_accuracy"] == results[1]["validation"][0]["val_accuracy"]


def test_provenance_records_each_training_process(tiny_config, tmp_path):
    pretrain(apply_overrides(tiny_config, {"train.epochs": 1}), tmp_path / "run", echo=lambda s: None)
    pretrain(tiny_config, tmp_path / "run", echo=lambda s: None)  # extends to 2 epochs
    history = load_checkpoint(tmp_path / "run" / "discriminator.pt")["provenance"]
    assert [entry["from_epoch"] for entry in history] == [0, 1]
    assert all(entry["git_commit"] and entry["created"] for entry in history)


def test_resume_keeps_provenance_written_as_a_single_dict(tiny_config, tmp_path):
    # checkpoints from commits f733955..99d5805 stored one provenance dict, not a list of processes
    run = tmp_path / "run"
    pretrain(apply_overrides(tiny_config, {"train.epochs": 1}), run, echo=lambda s: None)
    payload = load_checkpoint(run / "checkpoint.pt")
    old = {"git_commit": "f733955", "command": "dcgan-features pretrain", "created": "2026-11-22T16:40:00+00:00"}
    save_checkpoint(run / "checkpoint.pt", {**payload, "provenance": old})
    pretrain(tiny_config, run, echo=lambda s: None)
    history = load_checkpoint(run / "discriminator.pt")["provenance"]
    assert history[0] == old and history[1]["from_epoch"] == 1


def test_memory_format_and_bf16_are_speed_settings_only(tiny_config, tmp_path):
    """channels_last changes tensor strides, not the model: three steps from the same state in both
    layouts give the same weights up to float rounding. With bf16 every convolution of G and D runs in
    bfloat16 (and without it none does), the losses stay finite and the weights stay float32."""
    from dcgan_features.data import load_images, to_model_range

    images = to_model_range(load_images("fake", "", "train", image_size=32, channels=3).images[:64])
    device = torch.device("cpu")
    states, conv_output_dtypes = {}, {}
    for name, overrides in {"nchw": {"train.channels_last": False}, "nhwc": {"train.channels_last": True},
                            "bf16": {"train.bf16": True}}.items():
        config = apply_overrides(tiny_config, overrides)
        state = train_module.new_state(config, device)
        real = images.contiguous(memory_format=torch.channels_last) if config.train.channels_last else images
        seen = conv_output_dtypes.setdefault(name, set())
        convs = [m for model in (state.generator, state.discriminator) for m in model.modules()
                 if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        hooks = [m.register_forward_hook(lambda m, i, out, seen=seen: seen.add(out.dtype)) for m in convs]
        stats = [train_module.train_step(state, real, config, device) for _ in range(3)]
        for hook in hooks:
            hook.remove()
        assert all(torch.isfinite(s["loss_d"]) and torch.isfinite(s["loss_g"]) for s in stats)
        states[name] = {**state.generator.state_dict(),
                        **{f"d.{k}": v for k, v in state.discriminator.state_dict().items()}}
    a, b, low = states["nchw"], states["nhwc"], states["bf16"]
    assert b["d.blocks.conv2.0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert all(v.dtype == torch.float32 for k, v in low.items() if v.is_floating_point())  # float32 master weights
    assert conv_output_dtypes == {"nchw": {torch.float32}, "nhwc": {torch.float32}, "bf16": {torch.bfloat16}}


def test_an_auto_bf16_trains_as_the_machine_allows_and_the_run_records_what_ran(tiny_config, tmp_path, monkeypatch):
    """train.bf16 = "auto" is float32 on a CPU without bfloat16 instructions and bf16 autocast on one with them:
    the same weights, bit for bit, as naming the setting outright, and the run's files store the bool that ran."""
    from dcgan_features import runtime

    config = apply_overrides(tiny_config, {"train.epochs": 1})
    trained = {}
    for flags, expected in ((("avx2",), False), (("avx2", "amx_bf16"), True)):
        monkeypatch.setattr(runtime, "cpu_flags", lambda flags=flags: flags)
        for name, value in (("auto", "auto"), ("set", expected)):
            run = tmp_path / f"{name}-{expected}"
            pretrain(apply_overrides(config, {"train.bf16": value}), run, echo=lambda s: None)
            assert json.loads((run / "config.json").read_text())["train"]["bf16"] is expected
            assert load_checkpoint(run / "discriminator.pt")["config"]["train"]["bf16"] is expected
            trained[name, expected] = weights(run)
        auto, named = trained["auto", expected], trained["set", expected]
        assert all(torch.equal(auto[k], named[k]) for k in auto)
    low, full = trained["auto", True], trained["auto", False]
    assert not all(torch.equal(low[k], full[k]) for k in low)  # bf16 did change the arithmetic


def test_train_step_matches_the_plain_examples_step(tiny_config):
    """Skipping D's weight gradients in the G update and the fused Adam kernel are work saved, not a
    different update: three steps give the weights of pytorch/examples' step, which computes and then
    discards those gradients, with the default Adam."""
    import torch.nn.functional as F

    from dcgan_features.data import load_images, to_model_range

    def examples_step(state, real, config, device):
        g, d, b = state.generator, state.discriminator, real.shape[0]
        fake = g(train_module.sample_noise(b, config.model, state.noise_rng).to(device))
        d.zero_grad()
        (F.binary_cross_entropy_with_logits(d(real), torch.ones(b)) +
         F.binary_cross_entropy_with_logits(d(fake.detach()), torch.zeros(b))).backward()
        state.opt_d.step()
        g.zero_grad()
        F.binary_cross_entropy_with_logits(d(fake), torch.ones(b)).backward()
        state.opt_g.step()

    images = to_model_range(load_images("fake", "", "train", image_size=32, channels=3).images[:64])
    config, device = apply_overrides(tiny_config, {"train.channels_last": False}), torch.device("cpu")
    weights_after = {}
    for name, step in {"ours": train_module.train_step, "examples": examples_step}.items():
        state = train_module.new_state(config, device)
        if name == "examples":
            betas = (config.train.beta1, config.train.beta2)
            state = dataclasses.replace(
                state, opt_g=torch.optim.Adam(state.generator.parameters(), lr=config.train.lr, betas=betas),
                opt_d=torch.optim.Adam(state.discriminator.parameters(), lr=config.train.lr, betas=betas))
        for _ in range(3):
            step(state, images, config, device)
        assert all(p.requires_grad for p in state.discriminator.parameters())
        weights_after[name] = {**state.generator.state_dict(), **state.discriminator.state_dict()}
    ours, theirs = weights_after["ours"], weights_after["examples"]
    assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-6) for k in ours)


def test_extending_a_decaying_run_continues_its_schedule_or_is_refused(tiny_config, tmp_path, interrupted_pretrain):
    """The learning rate depends on the final epoch count: a run stopped before its decay and extended with
    --epochs ends bitwise equal to a run started with the larger count; one whose decay had begun is refused,
    and its config.json is left as it was."""
    from dcgan_features.data import load_images

    def config(epochs):
        return apply_overrides(tiny_config, {"train.epochs": epochs, "train.lr_decay_epochs": 1, "train.lr": 1e-3})

    pretrain(config(3), tmp_path / "straight", echo=lambda s: None)
    steps = len(load_images("fake", "", "train", image_size=32, channels=3)) // tiny_config.train.batch_size
    # [lr, lr/2], stopped before the decay, at the first step of epoch 2: epoch 1's checkpoint is the last
    interrupted_pretrain(config(2), tmp_path / "extended", at=steps + 1)
    pretrain(config(3), tmp_path / "extended", echo=lambda s: None)  # [lr, lr, lr/2], as "straight"
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "extended")
    assert all(torch.equal(a[k], b[k]) for k in a)
    before = (tmp_path / "straight" / "config.json").read_text()
    with pytest.raises(UserError, match="decays over the last 1 .from epoch 3.; 4 epochs would give epoch 3, already"):
        pretrain(config(4), tmp_path / "straight", echo=lambda s: None)
    assert (tmp_path / "straight" / "config.json").read_text() == before


def test_a_finished_constant_rate_run_extended_with_a_decay_equals_a_run_started_with_it(tiny_config, tmp_path):
    """A finished run can be extended and annealed (--epochs N --set train.lr_decay_epochs=K): bitwise the run
    started with that schedule; a decay that would reach into epochs already trained is refused."""
    def config(epochs, decay):
        return apply_overrides(tiny_config, {"train.epochs": epochs, "train.lr_decay_epochs": decay, "train.lr": 1e-3})

    pretrain(config(4, 2), tmp_path / "straight", echo=lambda s: None)  # [lr, lr, 2lr/3, lr/3]
    pretrain(config(2, 0), tmp_path / "extended", echo=lambda s: None)  # [lr, lr], finished
    pretrain(config(4, 2), tmp_path / "extended", echo=lambda s: None)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "extended")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "extended" / "config.json").read_text())["train"]["lr_decay_epochs"] == 2
    with pytest.raises(UserError, match="4 of 4 epochs.*6 epochs would give epoch 3, already begun"):
        pretrain(config(6, 4), tmp_path / "extended", echo=lambda s: None)


def test_the_online_probe_scores_training_images_only_and_leaves_training_as_it_was(tiny_config, tmp_path,
                                                                                     monkeypatch):
    """With train.probe_every the run logs a probe score every N steps and keeps the best-scoring D; the probe
    reads only the training split, and the weights come out bitwise equal to a run without it."""
    from dcgan_features.probe import FeatureProbe

    splits, real = [], train_module.load_images
    monkeypatch.setattr(train_module, "load_images", lambda *a, **k: splits.append(a[2]) or real(*a, **k))
    probed = apply_overrides(tiny_config, {"train.probe_every": 3, "train.probe_images": 200})
    pretrain(probed, tmp_path / "probed", echo=lambda s: None, make_probe=FeatureProbe)
    pretrain(tiny_config, tmp_path / "plain", echo=lambda s: None)
    a, b = weights(tmp_path / "probed"), weights(tmp_path / "plain")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert set(splits) == {"train"}
    lines = [json.loads(line) for line in (tmp_path / "probed" / "metrics.jsonl").read_text().splitlines()]
    probes = [line for line in lines if "probe_accuracy" in line]
    assert [p["global_step"] for p in probes] == list(range(3, lines[-1]["global_step"] + 1, 3))
    assert all(0 <= p["probe_accuracy"] <= 1 and p["probe_s"] > 0 for p in probes)
    best = load_checkpoint(tmp_path / "probed" / "discriminator_best_probe.pt")
    first_best = next(p for p in probes if p["probe_accuracy"] == max(q["probe_accuracy"] for q in probes))
    assert best["selected_by"] == "probe" and best["global_step"] == first_best["global_step"]
    assert best["probe_accuracy"] == pytest.approx(first_best["probe_accuracy"], abs=1e-6)
    assert not (tmp_path / "plain" / "discriminator_best_probe.pt").exists()
    final = load_checkpoint(tmp_path / "probed" / "discriminator.pt")
    assert final["selected_by"] == "final" and final["epochs_done"] == probed.train.epochs
    steps_per_epoch = max(line["step"] for line in lines)
    assert best["epochs_done"] == first_best["epoch"] - (first_best["step"] < steps_per_epoch)


def test_epochs_trained_counts_a_d_saved_at_an_epochs_last_step_as_that_epoch_done():
    from dcgan_features.records import epochs_trained

    assert epochs_trained({"epoch": 18, "step": 390, "global_step": 7410}) == 19  # a probe's D before epochs_done
    assert epochs_trained({"epoch": 18, "step": 100, "global_step": 7120}) == 18
    assert epochs_trained({"epoch": 4, "step": 0, "global_step": 1560}) == 4
    assert epochs_trained({"epoch": 0, "step": 390, "global_step": 390, "epochs_done": 1}) == 1


def test_the_probe_needs_labels(tiny_config):
    from dcgan_features.data import load_images
    from dcgan_features.probe import FeatureProbe

    data = load_images("fake", "", "train", image_size=32, channels=3)
    with pytest.raises(UserError, match="needs labels"):
        FeatureProbe(tiny_config, dataclasses.replace(data, labels=None), torch.device("cpu"))


def test_the_progress_line_keeps_the_probe_score_beside_a_collapse_warning(tiny_config, tmp_path):
    state = train_module.new_state(tiny_config, torch.device("cpu"))
    meter = train_module.ThroughputMeter()
    meter.probe_note = " | probe 50.0% (best 50.0%)"
    state.low_loss_since, state.global_step = 0, tiny_config.train.collapse_steps
    stats = {"loss_d": torch.tensor(0.0), "loss_g": torch.tensor(9.0), "d_x": torch.tensor(1.0),
             "d_g_z": torch.tensor(0.0)}
    train_module.log_step(state, stats, meter, tmp_path, tiny_config.train)
    line = meter.status()
    assert "D collapsed" in line and line.endswith("| probe 50.0% (best 50.0%)")


def test_the_moving_average_of_d_leaves_training_as_it_was_and_resumes_exactly(tiny_config, tmp_path, monkeypatch,
                                                                             interrupted_pretrain):
    """train.ema_decay adds discriminator_ema.pt and changes nothing else: G and D equal a run without it bit for
    bit; the average is the recurrence over D's states after every step; a resumed run's average is the same."""
    ema_config = apply_overrides(tiny_config, {"train.ema_decay": 0.9, "train.checkpoint_every": 3})
    pretrain(tiny_config, tmp_path / "plain", echo=lambda s: None)
    seen, real_update = [], train_module.update_ema
    monkeypatch.setattr(train_module, "update_ema", lambda ema, d, decay: seen.append(
        {k: v.clone() for k, v in d.state_dict().items()}) or real_update(ema, d, decay))
    pretrain(ema_config, tmp_path / "ema", echo=lambda s: None)
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "ema")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    average = load_checkpoint(tmp_path / "ema" / "discriminator_ema.pt")
    steps = load_checkpoint(tmp_path / "ema" / "checkpoint.pt")["global_step"]
    assert average["selected_by"] == "ema" and len(seen) == steps
    torch.manual_seed(tiny_config.train.seed)  # the initial D, as new_state builds it
    expected = {k: v.clone() for k, v in build_models(tiny_config.model)[1].state_dict().items()}
    for state in seen:
        for k, v in state.items():
            expected[k] = 0.9 * expected[k] + 0.1 * v if v.is_floating_point() else v
    assert average["discriminator"].keys() == expected.keys()
    for k, v in average["discriminator"].items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(v, a[f"d.{k}"]) for k, v in average["discriminator"].items())  # not the final D

    monkeypatch.setattr(train_module, "update_ema", real_update)
    interrupted_pretrain(ema_config, tmp_path / "resumed", at=5)  # the last checkpoint was at step 3
    pretrain(ema_config, tmp_path / "resumed", echo=lambda s: None)
    resumed = load_checkpoint(tmp_path / "resumed" / "discriminator_ema.pt")["discriminator"]
    assert all(torch.equal(resumed[k], average["discriminator"][k]) for k in resumed)


def test_ema_decay_outside_zero_to_one_is_refused(tiny_config):
    for bad in (-0.1, 1.0):
        with pytest.raises(UserError, match=r"train.ema_decay must lie in \[0, 1\)"):
            apply_overrides(tiny_config, {"train.ema_decay": bad})
