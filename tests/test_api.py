"""The Python API (``dcgan_features.load_extractor``, ``evaluate``) and ``dcgan-features extract``: the same features
as the evaluation's cache, the README's example as written, and the toolkit's one-line errors."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dcgan_features as dcf
from dcgan_features.cli import cli
from dcgan_features.data import load_images

from test_cli import TINY, fail, tiny_run  # noqa: F401
from test_data import write_png

ROOT = Path(__file__).parents[1]


def cached(cache_dir: Path, split: str) -> np.ndarray:
    (entry,) = [p for p in cache_dir.iterdir() if p.is_dir()
                and json.loads((p / "key.json").read_text())["split"] == split]
    return np.load(entry / "features.npy")


def test_the_extractor_gives_the_evaluations_features_from_any_input_form(tmp_path, tiny_run):  # noqa: F811
    dcf.evaluate(tiny_run, protocol="full", results_dir=tmp_path / "res", cache_dir=tmp_path / "cache",
                 overrides={"svm.c_grid": [1e-2]})
    images = load_images("fake", "x", "test", image_size=32, channels=3).images
    extractor = dcf.load_extractor(tiny_run, device="cpu", batch_size=100)
    features = extractor(images)
    assert extractor.feature_dim == features.shape[1] == 8 * 16 + 16 * 16 + 32 * 16
    np.testing.assert_array_equal(features.numpy(), cached(tmp_path / "cache", "test"))
    # numpy, float in [-1, 1] and PIL images give the same features
    np.testing.assert_array_equal(extractor(images[:5].numpy()), features[:5])
    torch.testing.assert_close(extractor(images[:5].float() / 127.5 - 1), features[:5])
    from PIL import Image

    pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images[:3]]
    np.testing.assert_array_equal(extractor(pil), features[:3])
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.training  # eval mode is pinned


def test_load_extractor_checks_the_sha256_it_is_given(tiny_run):  # noqa: F811
    right = dcf.load_extractor(tiny_run).sha256
    assert dcf.load_extractor(tiny_run, sha256=right.upper()).sha256 == right
    with pytest.raises(dcf.api.UserError, match="not the released file"):
        dcf.load_extractor(tiny_run, sha256="0" * 64)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3, 32, 32), np.int32), "must be uint8 in [0, 255] or float in [-1, 1]"),
    (np.full((2, 3, 32, 32), 2.0, np.float32), "must lie in [-1, 1]"),
    (np.zeros((2, 3, 16, 16), np.float32), "float images must already be 3x32x32"),
    (np.zeros((3, 32, 32), np.uint8), "one batch (N, C, H, W)"),
])
def test_bad_images_are_refused_with_one_line(tiny_run, bad, message):  # noqa: F811
    with pytest.raises(dcf.api.UserError) as error:
        dcf.load_extractor(tiny_run)(bad)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_readme_api_example_runs_as_written(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- api-example:begin -->\n```python\n(.*?)```\n<!-- api-example:end -->", readme, re.S)
    (tmp_path / "results").symlink_to(ROOT / "results")  # the committed checkpoints, as from the repository root
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(block.group(1), "README.md", "exec"), {"print": lambda *a: printed.append(" ".join(map(str, a)))})
    assert printed[0] == "torch.Size([8, 15360]) 15360"
    assert "grid=4" in printed[1] and re.fullmatch(r"\d+\.\d\d% at C=\S+", printed[2])
    assert list((tmp_path / "runs" / "api-example").glob("digits_full_*.json"))


def test_extract_writes_features_labels_indices_and_a_sidecar(tmp_path, tiny_run):  # noqa: F811
    out = tmp_path / "export"
    result = CliRunner().invoke(cli, ["extract", "--checkpoint", str(tiny_run), "--split", "test", "--out", str(out),
                                      "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    features = np.load(out / "features.npy", mmap_mode="r")
    expected = dcf.load_extractor(tiny_run)(load_images("fake", "x", "test", image_size=32, channels=3).images)
    assert features.dtype == np.float16 and features.shape == tuple(expected.shape)
    np.testing.assert_array_equal(features, expected.numpy().astype(np.float16))
    sidecar = json.loads((out / "features.json").read_text())
    assert sidecar["checkpoint_sha256"] == dcf.load_extractor(tiny_run).sha256 and sidecar["split"] == "test"
    assert sidecar["spec"]["grid"] == 4 and sidecar["dataset"] == "fake" and "git_commit" in sidecar
    assert sidecar["selected_by"] == "final"  # --select's choice, as evaluate's results record it
    assert np.load(out / "labels.npy").shape == (len(features),)
    np.testing.assert_array_equal(np.load(out / "indices.npy"), np.arange(len(features)))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no staging folder left
    # an existing export is kept unless --force
    before = (out / "features.json").read_text()
    assert "exists; pass --force" in fail("extract", "--checkpoint", tiny_run, "--split", "test", "--out", out)
    assert (out / "features.json").read_text() == before
    again = CliRunner().invoke(cli, ["extract", "--checkpoint", str(tiny_run), "--out", str(out), "--force"])
    assert again.exit_code == 0 and json.loads((out / "features.json").read_text())["split"] == "train"


def test_extract_from_an_unlabelled_folder_and_its_bad_input(tmp_path, tiny_run):  # noqa: F811
    for i in range(3):
        write_png(tmp_path / "pictures" / f"{i}.png", 40, 48)
    out = tmp_path / "export"
    ok = CliRunner().invoke(cli, ["extract", "--checkpoint", str(tiny_run), "--dataset", "folder",
                                  "--data-root", str(tmp_path / "pictures"), "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert np.load(out / "features.npy").shape[0] == 3 and not (out / "labels.npy").exists()
    assert json.loads((out / "features.json").read_text())["labels"] is False
    assert "has no labels" in fail("evaluate", "--checkpoint", tiny_run, "--dataset", "folder", "--data-root",
                                   tmp_path / "pictures", "--protocol", "validation", "--results-dir", tmp_path / "res")
    assert "'validate' is not one of" in fail("extract", "--checkpoint", tiny_run, "--split", "validate",
                                             "--out", tmp_path / "x")
    torch.save({"format": "dcgan-features/checkpoint/v1", "config": {}}, tmp_path / "no_d.pt")
    assert "lacks its config or discriminator" in fail("extract", "--checkpoint", tmp_path / "no_d.pt",
                                                       "--out", tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    (tmp_path / "file").write_text("")
    assert "is a file" in fail("extract", "--checkpoint", tiny_run, "--out", tmp_path / "file", "--force")
    assert os.path.getsize(tmp_path / "file") == 0


def test_the_released_table_lists_each_discriminator_with_its_results_and_sha256(tmp_path, tiny_run):  # noqa: F811
    results = tmp_path / "results"
    (results / "run").mkdir(parents=True)
    (results / "run" / "discriminator.pt").write_bytes((tiny_run / "discriminator.pt").read_bytes())
    dcf.evaluate(results / "run", protocol="full", results_dir=results / "run", overrides={"svm.c_grid": [1e-2]})
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- released:begin -->\nold\n<!-- released:end -->\nkept\n")
    done = CliRunner().invoke(cli, ["released", str(results), "--readme", str(readme)])
    assert done.exit_code == 0, done.output
    (row,) = [line for line in readme.read_text().splitlines() if "discriminator.pt" in line]
    sha = dcf.load_extractor(results / "run").sha256
    assert f"`{sha}`" in row and re.search(r"\| full \d+\.\d\d ", row) and "| fake " in row
    assert readme.read_text().endswith("<!-- released:end -->\nkept\n") and "old" not in readme.read_text()
    assert (results / "released.md").read_text().startswith(
        f"Written by `dcgan-features released {results} --readme {readme}` from the 1 discriminator file under")
    assert dcf.load_extractor(results / "run" / "discriminator.pt", sha256=sha).feature_dim > 0
    assert "needs one '<!-- released:begin -->'" in fail("released", results, "--readme", tmp_path / "results" /
                                                         "released.md")
