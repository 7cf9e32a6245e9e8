import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from dcgan_features.data import load_array_pickle, load_images
from dcgan_features.errors import UserError


def load(name, root, split="train", size=32, channels=3):
    return load_images(name, root, split, image_size=size, channels=channels)


def test_cifar_reader_reads_official_format(tiny_cifar):
    train, test = load("cifar10", tiny_cifar), load("cifar10", tiny_cifar, "test")
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (20, 3, 32, 32)
    assert train.labels.tolist()[:10] == list(range(10))
    # the pickle's row layout: 1024 red, then green, then blue values, each row-major
    raw = load_array_pickle(tiny_cifar / "cifar-10-batches-py" / "data_batch_1")["data"]
    assert train.images[0, 1, 0, 5].item() == raw[0, 1024 + 5]


def test_cifar_missing_explains_layout_and_download(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py.*--download"):
        load("cifar10", tmp_path)


def test_corrupt_cifar_pickle_is_refused(tiny_cifar):
    path = tiny_cifar / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="test_batch is not a readable"):
        load("cifar10", tiny_cifar, "test")


def test_pickle_with_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Exploit()}, protocol=2))
    with pytest.raises(UserError, match=r"refusing to load global (__builtin__|builtins)\.exec"):
        load("cifar10", tmp_path, "test")
    assert not marker.exists()


def write_svhn(path, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 1..10, 10 meaning digit 0
    savemat(str(path), {"X": x, "y": y})
    return x, y


def test_svhn_reader_reads_official_format(tmp_path):
    x, y = write_svhn(tmp_path / "train_32x32.mat", 30)
    data = load("svhn", tmp_path)
    assert data.images.shape == (30, 3, 32, 32)
    assert data.labels.tolist()[:10] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert data.images[7, 2, 5, 9].item() == x[5, 9, 2, 7]  # X is height x width x channel x N


def test_svhn_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match="train_32x32.mat.*--download"):
        load("svhn", tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 nonsense" * 10)
    with pytest.raises(UserError, match="not a readable SVHN"):
        load("svhn", tmp_path, "test")


def write_png(path, height, width, channels=3, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (height, width, 3) if channels == 3 else (height, width)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)


def test_folder_with_classes_resizes_and_labels(tmp_path):
    write_png(tmp_path / "cats" / "a.png", 40, 60)
    write_png(tmp_path / "dogs" / "b.png", 50, 50, channels=1)  # grayscale for a colour model: converted
    data = load("folder", tmp_path)
    assert data.images.shape == (2, 3, 32, 32) and data.labels.tolist() == [0, 1]


def test_flat_folder_has_no_labels_and_colour_converts_to_gray(tmp_path):
    write_png(tmp_path / "x.png", 64, 64)
    data = load("folder", tmp_path, channels=1)
    assert data.labels is None and data.images.shape == (1, 1, 32, 32)


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="holds no images"):
        load("folder", tmp_path)
    write_png(tmp_path / "cats" / "a.png", 32, 32)
    (tmp_path / "cats" / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="non-image file.*notes.txt"):
        load("folder", tmp_path)
    (tmp_path / "cats" / "notes.txt").unlink()
    (tmp_path / "cats" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png could not be decoded"):
        load("folder", tmp_path)


def test_digits_and_fake_are_deterministic_and_labelled():
    train, test = load("digits", "unused"), load("digits", "unused", "test")
    assert len(train) == 1257 and len(test) == 540 and train.images.shape[1:] == (3, 32, 32)
    assert set(train.labels.tolist()) == set(range(10))
    a, b = load("fake", "unused"), load("fake", "unused")
    assert torch.equal(a.images, b.images) and a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != load("fake", "unused", "test").fingerprint()


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset 'imagenet'"):
        load("imagenet", "x")


def test_imagenet32_reader_reads_its_format(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        with open(tmp_path / name, "wb") as f:
            pickle.dump({"data": data, "labels": [1, 2, 1000, 5], "mean": data.mean(0)}, f)
    train, test = load("imagenet32", tmp_path), load("imagenet32", tmp_path, "test")
    assert train.images.shape == (40, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert test.labels.tolist() == [0, 1, 999, 4]  # 1-based on disk
    (tmp_path / "val_data").unlink()
    with pytest.raises(UserError, match="val_data"):
        load("imagenet32", tmp_path, "test")


def test_cifar_root_one_level_too_deep_names_the_parent(tiny_cifar):
    with pytest.raises(UserError, match="point --data-root at its parent"):
        load("cifar10", tiny_cifar / "cifar-10-batches-py")
