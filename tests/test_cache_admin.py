"""``dcgan-features cache list | prune``: entries found by their key, removed by checkpoint or by age, nothing else
touched, and bad input in one line."""

import json
import os
import time

from click.testing import CliRunner

from dcgan_features.cli import cli

from test_cli import fail, tiny_run  # noqa: F401  (tiny_run is a fixture)


def invoke(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def entries(cache):
    return sorted(p.name for p in cache.iterdir() if (p / "key.json").is_file())


def other_entry(cache, name="f" * 32, age_days=0.0):
    """An entry of another D, last used ``age_days`` ago."""
    entry = cache / name
    entry.mkdir(parents=True)
    (entry / "key.json").write_text(json.dumps({"checkpoint_sha256": "0" * 64, "dataset": "fake", "split": "train",
                                                "spec": {"grid": 4, "pool": "max"}}))
    (entry / "features.npy").write_bytes(b"x" * 1000)
    used = time.time() - age_days * 86_400
    os.utime(entry / "key.json", (used, used))
    return entry.name


def test_prune_removes_one_checkpoints_entries_and_leaves_everything_else(tmp_path, tiny_run):  # noqa: F811
    cache = tmp_path / "cache"
    invoke("evaluate", "--checkpoint", tiny_run, "--protocol", "validation", "--cache-dir", cache,
           "--results-dir", tmp_path / "res", "--set", "svm.c_grid=[1e-2]")
    mine = entries(cache)
    assert len(mine) == 1  # validation reads the training split only
    other = other_entry(cache)
    (cache / "notes.txt").write_text("mine")  # a shared folder's other contents are never touched
    (cache / ("a" * 31)).mkdir()
    listing = invoke("cache", "list", "--cache-dir", cache)
    assert "2 entries" in listing and "D 000000000000" in listing and "fake train  max4" in listing
    dry = invoke("cache", "prune", "--cache-dir", cache, "--checkpoint", tiny_run, "--dry-run")
    assert f"would remove {mine[0]}" in dry and entries(cache) == sorted([*mine, other])
    pruned = invoke("cache", "prune", "--cache-dir", cache, "--checkpoint", tiny_run)
    assert "removed 1 of 2 entries" in pruned and entries(cache) == [other]
    assert (cache / "notes.txt").read_text() == "mine" and (cache / ("a" * 31)).is_dir()


def test_prune_by_age_goes_by_last_use_which_a_cache_hit_renews(tmp_path, tiny_run):  # noqa: F811
    cache = tmp_path / "cache"
    evaluate = ["evaluate", "--checkpoint", tiny_run, "--protocol", "validation", "--cache-dir", cache,
                "--set", "svm.c_grid=[1e-2]"]
    invoke(*evaluate, "--results-dir", tmp_path / "res")
    (mine,) = entries(cache)
    long_ago = time.time() - 10 * 86_400
    os.utime(cache / mine / "key.json", (long_ago, long_ago))
    invoke(*evaluate, "--results-dir", tmp_path / "res2")  # reads the entry again: it is in use
    stale, fresh = other_entry(cache, "e" * 32, age_days=3), other_entry(cache, "d" * 32, age_days=1)
    assert "removed 1 of 3 entries" in invoke("cache", "prune", "--cache-dir", cache, "--unused-days", 2)
    assert entries(cache) == sorted([mine, fresh]) and stale not in entries(cache)
    assert "removed 2 of 2 entries" in invoke("cache", "prune", "--cache-dir", cache, "--all")
    assert entries(cache) == []


def test_cache_commands_answer_bad_input_in_one_line(tmp_path):
    assert "no feature cache at" in fail("cache", "list", "--cache-dir", tmp_path / "none")
    (tmp_path / "cache").mkdir()
    assert "say what to prune" in fail("cache", "prune", "--cache-dir", tmp_path / "cache")
    assert "--unused-days must be 0 or more" in fail("cache", "prune", "--cache-dir", tmp_path / "cache",
                                                     "--unused-days", -1)
    assert "holds no discriminator" in fail("cache", "prune", "--cache-dir", tmp_path / "cache",
                                            "--checkpoint", tmp_path / "cache")
