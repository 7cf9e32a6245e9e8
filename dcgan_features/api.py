"""The toolkit as a Python library: a discriminator's frozen features from images, and an evaluation, in a line.

    import dcgan_features as dcf
    extractor = dcf.load_extractor("results/cifar10_deep/seed0")    # a run folder or a .pt file
    features = extractor(images)     # uint8 (N, C, H, W) or float in [-1, 1], numpy or torch, or PIL images

The extractor is the one ``evaluate`` uses (same checkpoint loading, pooling spec and preprocessing), so its
features equal the evaluation's feature cache (tested). Only the names in ``dcgan_features.__all__`` are promised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifacts import sha256_file
from .checkpoint import load_checkpoint, load_discriminator, resolve_checkpoint
from .config import Config
from .data import fit_to_model
from .errors import UserError
from .evaluate import evaluate_seeds
from .features import FrozenExtractor, PoolingSpec, extract
from .protocols import EvalConfig
from .runtime import resolve_device


class Extractor(nn.Module):
    """A checkpoint's discriminator as a frozen feature extractor: images in, pooled conv features out.

    Eval mode is pinned (batch norm keeps D's running statistics) and no gradient is ever taken. Images are
    fitted to the model's channels and size as ``evaluate`` fits a dataset (shorter side resized, centre crop)
    and fed in batches of ``batch_size`` on ``device``. Features come back as a float32 CPU tensor (N, dim)."""

    def __init__(self, frozen: FrozenExtractor, config: Config, device: torch.device, batch_size: int,
                 sha256: str, source: Path):
        super().__init__()
        self.frozen, self.config, self.device, self.batch_size = frozen.to(device), config, device, batch_size
        self.sha256, self.source = sha256, source
        super().train(False)

    @property
    def spec(self) -> PoolingSpec:
        """Which blocks are pooled, and how: the whole definition of the feature vector."""
        return self.frozen.spec

    @property
    def feature_dim(self) -> int:
        """The length of one image's feature vector."""
        return self.spec.dimension(self.frozen.discriminator)

    def train(self, mode: bool = True) -> "Extractor":
        return super().train(False)  # frozen: batch norm must keep D's running statistics

    @torch.no_grad()
    def forward(self, images: Any) -> torch.Tensor:
        """Features (N, ``feature_dim``) of ``images``: uint8 (N, C, H, W) in [0, 255], float (N, C, H, W) in
        [-1, 1] (the range of G's output), as a torch tensor or numpy array, or a list of PIL images."""
        batch = as_image_tensor(images)
        model = self.config.model
        if batch.dtype == torch.uint8:
            batch = fit_to_model(batch, model.image_size, model.channels)
        elif batch.shape[1:] != (model.channels, model.image_size, model.image_size):
            raise UserError(f"float images must already be {model.channels}x{model.image_size}x{model.image_size} "
                            f"in [-1, 1], got {tuple(batch.shape[1:])}; pass uint8 images to have them fitted")
        elif batch.numel() and (batch.min() < -1 - 1e-6 or batch.max() > 1 + 1e-6):
            raise UserError("float images must lie in [-1, 1] (uint8 images in [0, 255] are converted for you)")
        if not len(batch):
            return torch.empty(0, self.feature_dim)
        return torch.from_numpy(extract(self.frozen, batch, self.batch_size, self.device))


def as_image_tensor(images: Any) -> torch.Tensor:
    """``images`` as one (N, C, H, W) tensor: uint8 stays uint8, floats become float32, PIL images are decoded
    as RGB uint8 (all of one size, or each fitted later by the extractor only if they share one)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise UserError("no images given")
        arrays = [np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
                  for image in images]
        if len({a.shape for a in arrays}) != 1:
            raise UserError("the PIL images differ in size; resize them to one size first")
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    tensor = torch.as_tensor(images) if not isinstance(images, torch.Tensor) else images
    if tensor.ndim != 4:
        raise UserError(f"images must be one batch (N, C, H, W), got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        return tensor.contiguous()
    if not tensor.is_floating_point():
        raise UserError(f"images must be uint8 in [0, 255] or float in [-1, 1], got {tensor.dtype}")
    return tensor.float()


def load_extractor(checkpoint: str | Path, *, device: str = "auto", batch_size: int = 256,
                   select: str = "final", sha256: str | None = None) -> Extractor:
    """The frozen feature extractor of a run folder (its final D; with ``select="best-probe"`` the D its
    online probe chose, with ``select="ema"`` the moving average of its D) or of a checkpoint file. With
    ``sha256``, the file must have that hash (as listed in the table of released discriminators), else it is
    refused."""
    path = resolve_checkpoint(checkpoint, select)
    actual = sha256_file(path)
    if sha256 is not None and actual != sha256.lower():
        raise UserError(f"{path} has sha256 {actual}, not the {sha256} it should have: it is not the released file")
    discriminator, config = load_discriminator(load_checkpoint(path), str(path))
    if config.features.bn_stats != "running":
        raise UserError(f"{path} is evaluated with batch-norm statistics from data (features.bn_stats = "
                        f"{config.features.bn_stats!r}), which need its training images: use `dcgan-features "
                        "evaluate` or `extract` for it")
    spec = PoolingSpec.from_config(config.features, discriminator)
    return Extractor(FrozenExtractor(discriminator, spec), config, resolve_device(device), batch_size, actual, path)


def evaluate(checkpoint: str | Path, *, dataset: str = "", data_root: str = "", protocol: str = "full",
             seed: int = 0, results_dir: str | Path = "results", cache_dir: str | Path | None = None,
             config: str | Path | None = None, overrides: dict[str, Any] | None = None, force: bool = False,
             **settings: Any) -> dict[str, Any]:
    """``dcgan-features evaluate`` from Python: evaluates one seed and returns its result record (also written
    under ``results_dir``, or read back from there when it exists and ``force`` is not given). ``settings`` are
    the other protocol settings of the command (``labels_per_class``, ``draws``, ``knn_k``, ...)."""
    eval_config = EvalConfig(protocol=protocol, seeds=(seed,), dataset=dataset, root=data_root, **settings)
    (result,) = evaluate_seeds(checkpoint, eval_config, config_path=config, overrides=overrides or {},
                               results_dir=results_dir, cache_dir=cache_dir, force=force, echo=lambda line: None)
    return result
