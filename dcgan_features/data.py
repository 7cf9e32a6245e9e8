"""Datasets by name, decoded once into an in-memory uint8 tensor (N, C, H, W).

Nothing here runs per item inside a training loop: loaders return the whole split as one tensor and
:func:`to_model_range` scales a batch to [-1, 1] on the device. Every reader accepts data the user
already has; ``download=True`` asks torchvision's downloaders to fetch the official files first.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

SPLITS = ("train", "test", "extra")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
CIFAR_DIR = "cifar-10-batches-py"
# What a label means, where the dataset says (figures name classes with it); SVHN's and digits' labels are digits.
CLASS_NAMES = {"cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
               "svhn": tuple("0123456789"), "digits": tuple("0123456789")}


@dataclass(frozen=True)
class ImageSet:
    """One split of a dataset: uint8 images (N, C, H, W) and int64 labels (N,) when it has them."""

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str
    split: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def fingerprint(self) -> str:
        """sha256 of the pixels and labels: part of every feature-cache key."""
        digest = hashlib.sha256(self.images.contiguous().numpy().tobytes())
        if self.labels is not None:
            digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()


def load_images(name: str, root: str | Path, split: str, *, image_size: int, channels: int,
                download: bool = False) -> ImageSet:
    """Load one split of the named dataset, converted to ``channels`` and resized to ``image_size``."""
    if name not in READERS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(READERS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    reader = partial(read_folder, image_size=image_size) if name == "folder" else READERS[name]
    images, labels = reader(Path(root), split, download)
    tensor = fit_to_model(torch.from_numpy(np.ascontiguousarray(images)), image_size, channels)
    label_tensor = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return ImageSet(tensor, label_tensor, name, split)


def fit_to_model(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """Convert uint8 (N, C, H, W) images to the model's channel count and size, once, at load time."""
    if images.shape[1] == 3 and channels == 1:
        # ITU-R 601 luma, the same weights PIL uses for convert("L").
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    elif images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = torch.cat([_resize(chunk, image_size) for chunk in images.split(4096)])
    return images.contiguous()


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size`` (antialiased bilinear), then a centre crop."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    out = F.interpolate(images.float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return out[..., top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8)


def to_model_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range of G's tanh output (x / 127.5 - 1)."""
    return batch.float().div_(127.5).sub_(1.0)


# --- CIFAR-10 ------------------------------------------------------------------------------------

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays, and refuses every other global, so a
    crafted file cannot run code. CIFAR-10's batches need nothing more."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def load_array_pickle(path: Path) -> dict:
    """Read a CIFAR-style pickled dict (Python-2 str keys) without executing arbitrary code."""
    try:
        with open(path, "rb") as f:
            raw = _ArrayOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"{path} is not a readable CIFAR-style pickle ({exc}); re-download or re-extract it") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} does not hold a dict of arrays")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def read_cifar10(root: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """The 'CIFAR-10 python version' layout: ROOT/cifar-10-batches-py/data_batch_1..5, test_batch.

    Checksums are not verified when reading, so a losslessly re-written copy loads as well."""
    base = root / CIFAR_DIR
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if split == "extra":
        raise UserError("cifar10 has only the splits train and test")
    if download and not all((base / n).is_file() for n in names):
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=split == "train", download=True)
    missing = [n for n in names if not (base / n).is_file()]
    if missing and (root / names[0]).is_file():
        raise UserError(f"{root} holds the CIFAR-10 batches itself; point --data-root at its parent, {root.parent}")
    if missing:
        raise UserError(f"CIFAR-10 not found: expected {base}/{{{','.join(names)}}} (the 'python version' "
                        f"layout, missing {missing[0]}); point --data-root at its parent or pass --download")
    return read_planar_batches([base / n for n in names], first_label=0)


def read_planar_batches(paths: list[Path], first_label: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate pickled batches of ``data`` (N x 3072: 1024 red, green, blue values) and ``labels``,
    the layout CIFAR-10 and downsampled ImageNet share; labels are shifted to start at 0."""
    images, labels = [], []
    for path in paths:
        batch = load_array_pickle(path)
        try:
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64) - first_label)
        except (KeyError, ValueError) as exc:
            raise UserError(f"{path} is not a batch of 32x32 images with labels ({exc!r}); "
                            "re-extract the archive") from None
    return np.concatenate(images), np.concatenate(labels)


# --- downsampled ImageNet 32x32 -----------------------------------------------------------------

def read_imagenet32(root: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Downsampled ImageNet (Chrabaszcz et al. 2017): ROOT/train_data_batch_1..10 and ROOT/val_data, pickled
    dicts with ``data`` (N x 3072, CIFAR's channel-planar order) and 1-based ``labels``."""
    if download:
        raise UserError("downsampled ImageNet needs a login to download; fetch Imagenet32_train.zip and "
                        "Imagenet32_val.zip yourself and unpack them into --data-root")
    if split == "extra":
        raise UserError("imagenet32 has only the splits train and test (val_data)")
    names = [f"train_data_batch_{i}" for i in range(1, 11)] if split == "train" else ["val_data"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise UserError(f"downsampled ImageNet 32x32 not found: expected {root}/{{train_data_batch_1..10, val_data}}"
                        f" (missing {missing[0]})")
    return read_planar_batches([root / n for n in names], first_label=1)


# --- SVHN ----------------------------------------------------------------------------------------

def read_svhn(root: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """The cropped-digits format: ROOT/{train,test,extra}_32x32.mat with X (32, 32, 3, N), y in 1..10 (10 = 0)."""
    path = root / f"{split}_32x32.mat"
    if download and not path.is_file():
        from torchvision.datasets import SVHN

        SVHN(str(root), split=split, download=True)
    if not path.is_file():
        raise UserError(f"SVHN not found: expected {path} (the cropped-digits .mat format); "
                        "point --data-root at its folder or pass --download")
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
        x, y = mat["X"], np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    except (ValueError, KeyError, TypeError, OSError, NotImplementedError) as exc:
        raise UserError(f"{path} is not a readable SVHN .mat file ({exc}); re-download it") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise UserError(f"{path}: X has shape {x.shape}, expected 32x32x3xN matching y")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise UserError(f"{path}: labels must lie in 1..10")
    y[y == 10] = 0
    return np.transpose(x, (3, 2, 0, 1)).astype(np.uint8), y


# --- image folders -------------------------------------------------------------------------------

def read_folder(root: Path, split: str, download: bool, image_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """ROOT/<class>/* (labelled) or ROOT/* (unlabelled); ROOT/train and ROOT/test give the splits.

    Each image is resized (shorter side) and centre-cropped to ``image_size`` as it is decoded, so a
    large export (CelebA, LSUN) is held only at the model's size."""
    if download:
        raise UserError("the folder dataset reads local images only; --download does not apply")
    base = root / split if (root / "train").is_dir() else root
    if split != "train" and not (root / "train").is_dir():
        raise UserError(f"folder dataset {root} has no {split}/ subfolder; only its images as 'train' are available")
    if not base.is_dir():
        raise UserError(f"image folder {base} does not exist")
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(p, None) for p in sorted(base.iterdir()) if p.is_file() and not p.name.startswith(".")]
    for label, d in enumerate(class_dirs):
        files += [(p, label) for p in sorted(d.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise UserError(f"image folder {base} holds no images (expected {base}/<class>/*.png or {base}/*.jpg)")
    not_images = [p for p, _ in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not_images:
        raise UserError(f"image folder {base} holds {len(not_images)} non-image file(s), first {not_images[0]}; "
                        "remove them or point --data-root at the images only")
    labelled = [lab is not None for _, lab in files]
    if any(labelled) and not all(labelled):
        raise UserError(f"image folder {base} mixes loose images with class subfolders; use one layout")
    stacked = torch.cat([_resize(_decode(p)[None], image_size) for p, _ in files])
    labels = np.array([lab for _, lab in files], dtype=np.int64) if all(labelled) else None
    return stacked.numpy(), labels


def _decode(path: Path) -> torch.Tensor:
    """Decode any Pillow-readable image as RGB uint8 (C, H, W); grayscale is replicated."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{path} could not be decoded as an image ({str(exc).splitlines()[0]})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


# --- embedded and synthetic data -----------------------------------------------------------------

DIGITS_TRAIN = 1257  # of scikit-learn's 1,797 digits; the rest, in their bundled order, are the test split


def read_digits(root: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits (0..16 ink), as uint8; resized by the caller.

    The split is by position: the bundled order groups writers, so train and test mostly have
    different writers, which is the harder and more honest split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]
    part = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    if split == "extra":
        raise UserError("digits has only the splits train and test")
    return images[part], bunch.target[part].astype(np.int64)


FAKE_SIZES = {"train": 640, "test": 320, "extra": 320}


def read_fake(root: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic 32x32 RGB images for tests: ten classes, each a fixed colour pattern plus noise."""
    rng = np.random.default_rng(12345)
    patterns = rng.uniform(40, 215, size=(10, 3, 4, 4))
    rng = np.random.default_rng({"train": 0, "test": 1, "extra": 2}[split])
    n = FAKE_SIZES[split]
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    coarse = patterns[labels].repeat(8, axis=2).repeat(8, axis=3)
    images = np.clip(coarse + rng.normal(0, 30, size=coarse.shape), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


# name -> reader of (images, labels); keyed by config.DATASETS (tested). The folder reader also takes the
# model's image size (load_images binds it).
READERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray | None]]] = {
    "cifar10": read_cifar10, "svhn": read_svhn, "imagenet32": read_imagenet32, "folder": read_folder,
    "digits": read_digits, "fake": read_fake,
}
