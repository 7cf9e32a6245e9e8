"""Import the paper authors' released Theano DCGAN (github.com/Newmu/dcgan_code, SVHN model) into a
normal project checkpoint (``dcgan-features import-dcgan-code``).

Only the ``.npy`` files are read, with ``allow_pickle=False``; the ``.jl`` joblib pickles beside
them are never opened. Theano's ``dnn_conv`` defaults to a true convolution, so every kernel is
flipped in both spatial axes to become a PyTorch (cross-correlation) kernel; the transposed
convolutions are the input-gradients of those convolutions, which ``ConvTranspose2d`` computes from
the same flipped weight.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .artifacts import provenance, sha256_file, write_image_grid, write_json
from .checkpoint import DISCRIMINATOR_FILE, save_checkpoint
from .config import Config
from .errors import UserError
from .models import Discriminator, Generator, recompute_batchnorm_stats, sample_noise

# The released model's training and the authors' feature recipe (see configs/svhn_paper.toml).
SVHN_PAPER = {
    "data": {"dataset": "svhn"},
    "model": {"image_size": 32, "channels": 3, "z_dim": 100, "z_distribution": "normal", "kernel_size": 5,
              "d_widths": [64, 128, 256], "g_widths": [256, 128, 64], "g_projection": "linear", "bn_eps": 1e-8},
    "train": {"batch_size": 64, "lr": 5e-4, "beta1": 0.5},
    "features": {"layers": ["conv1", "conv2", "conv3"], "grid": 4, "pool": "max", "bn_stats": "data"},
    "svm": {"solver": "liblinear", "c_grid": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2], "standardize": False},
}

DISCRIMINATOR_SHAPES = [(64, 3, 5, 5), (128, 64, 5, 5), (128,), (128,), (256, 128, 5, 5), (256,), (256,), (4096, 1)]
GENERATOR_SHAPES = [(100, 4096), (4096,), (4096,), (256, 128, 5, 5), (128,), (128,), (128, 64, 5, 5), (64,), (64,),
                    (64, 3, 5, 5)]


def read_params(directory: str | Path, which: str, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The ``*_{which}_params.jl_NN.npy`` arrays in order, checked against the released shapes."""
    directory = Path(directory)
    files = sorted(directory.glob(f"*_{which}_params.jl_*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if len(files) != len(shapes):
        raise UserError(f"{directory} should hold {len(shapes)} files *_{which}_params.jl_NN.npy, found {len(files)}")
    arrays = []
    for path, shape in zip(files, shapes):
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"{path} is not a readable .npy array ({exc})") from None
        if array.shape != shape:
            raise UserError(f"{path} has shape {array.shape}, expected {shape} for the released SVHN DCGAN")
        arrays.append(array.astype(np.float32))
    return arrays


def _kernel(array: np.ndarray, flip: bool) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array[:, :, ::-1, ::-1] if flip else array))


def _set(module: torch.nn.Module, weight: np.ndarray | torch.Tensor, bias: np.ndarray | None = None) -> None:
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(weight).reshape(module.weight.shape))
        if bias is not None:
            module.bias.copy_(torch.as_tensor(bias))


def build_discriminator(params: list[np.ndarray], config: Config, flip: bool = True) -> Discriminator:
    """conv1 -> LReLU; conv2 -> BN -> LReLU; conv3 -> BN -> LReLU; linear 4096 -> 1 (as a 4x4 conv)."""
    w1, w2, g2, b2, w3, g3, b3, w_out = params
    d = Discriminator(config.model)
    _set(d.blocks["conv1"][0], _kernel(w1, flip))
    _set(d.blocks["conv2"][0], _kernel(w2, flip))
    _set(d.blocks["conv2"][1], g2, b2)
    _set(d.blocks["conv3"][0], _kernel(w3, flip))
    _set(d.blocks["conv3"][1], g3, b3)
    _set(d.head, w_out[:, 0])  # Theano flattened (256, 4, 4) in C order: the conv kernel's own layout
    return d


def build_generator(params: list[np.ndarray], config: Config, flip: bool = True) -> Generator:
    """linear 100 -> 4096 -> BN -> ReLU -> (256, 4, 4); then deconv/BN/ReLU twice; deconv -> tanh."""
    w1, g1, b1, w2, g2, b2, w3, g3, b3, w4 = params
    g = Generator(config.model)
    _set(g.project[1], w1.T)
    _set(g.project[2], g1, b1)
    _set(g.upsample[0], _kernel(w2, flip))
    _set(g.upsample[1], g2, b2)
    _set(g.upsample[3], _kernel(w3, flip))
    _set(g.upsample[4], g3, b3)
    _set(g.upsample[6], _kernel(w4, flip))
    return g


def import_dcgan_code(directory: str | Path, out: str | Path, *, force: bool = False, flip: bool = True,
                      num_noise_batches: int = 50, seed: int = 0) -> Path:
    """Convert the release in ``directory`` into ``out/discriminator.pt`` (+ G), ``config.json`` and a sample grid.

    The release holds no batch-norm statistics. G's are recomputed the authors' way, averaging the
    statistics of ``num_noise_batches`` batches of 128 noise vectors; D's are recomputed from data at
    evaluation time (``features.bn_stats = "data"``)."""
    out = Path(out)
    if (out / DISCRIMINATOR_FILE).exists() and not force:
        raise UserError(f"{out / DISCRIMINATOR_FILE} exists; pass --force to replace it")
    config = Config.from_dict(SVHN_PAPER, "the released SVHN DCGAN's config")
    d = build_discriminator(read_params(directory, "discrim", DISCRIMINATOR_SHAPES), config, flip)
    g = build_generator(read_params(directory, "gen", GENERATOR_SHAPES), config, flip)
    noise = sample_noise(128 * num_noise_batches, config.model, torch.Generator().manual_seed(seed))
    recompute_batchnorm_stats(g, noise, 128, torch.device("cpu"))
    sources = {p.name: sha256_file(p) for p in sorted(Path(directory).glob("*.npy"))}
    write_json(out / "config.json", config.to_dict())
    save_checkpoint(out / DISCRIMINATOR_FILE, {
        "kind": "imported", "config": config.to_dict(), "discriminator": d.state_dict(), "generator": g.state_dict(),
        "epoch": 200, "provenance": {**provenance(), "source": str(directory), "source_sha256": sources,
                                     "kernels_flipped": flip}})
    save_sample_grid(g.eval(), config, out / "samples" / "imported.png", seed)
    return out / DISCRIMINATOR_FILE


@torch.no_grad()
def save_sample_grid(generator: Generator, config: Config, path: Path, seed: int, n: int = 100) -> None:
    images = generator(sample_noise(n, config.model, torch.Generator().manual_seed(seed + 1)))
    write_image_grid(images, path, nrow=10)
