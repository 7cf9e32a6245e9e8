"""Experiment configuration: frozen dataclasses loaded from TOML, with typed overrides.

A config has five sections (``data``, ``model``, ``train``, ``features``, ``svm``). Every key is
declared below with its type and default; a file or override that names anything else is refused,
so a typo can never silently fall back to a default. Configs are never mutated: overrides build a
new object with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

from .errors import UserError, check_at_least, check_choice, check_off_or_positive, check_positive

# One registry per choice: the config classes below, the CLI's options and the stages that act on a choice
# all read these, so a new dataset, loss or solver is added in one place (data.READERS and losses.LOSSES key
# their code by these names, tested). The protocols' registry is protocols.PROTOCOLS.
DATASETS = ("cifar10", "svhn", "imagenet32", "folder", "digits", "fake")
DEVICES = ("auto", "cpu", "cuda")
BASELINES = ("pixels", "untrained")
SOLVERS = ("torch", "liblinear")
BN_STATS = ("running", "data")
POOLS = ("max", "avg")
GAN_LOSSES = ("bce", "hinge")
AUGMENTATIONS = ("color", "flip", "translation", "cutout")  # DiffAugment's, in augment.py
HESSIAN_PRECISIONS = ("float32", "bfloat16", "auto")  # auto: runtime.settled_hessian_precision
ROW_PRECISIONS = ("float32", "bfloat16")  # svm.row_precision: how the SVM's fitting rows are held
SELECTIONS = ("final", "best-probe", "ema")  # which D of a run: its last, its best probe, its weights' moving average
EXPORT_DTYPES = ("float32", "float16")  # extract: how features.npy stores the features
FEATURE_KINDS = ("pooled", "fisher", "pooled+fisher")  # features.kind: the pooled grid, D's Fisher vector, or both
FISHER_OUTPUTS = ("logit", "sigmoid")  # which output of D the Fisher vector is the gradient of
FISHER_REDUCTIONS = ("sketch", "stride")  # a signed CountSketch of every coordinate, or every k-th coordinate


@dataclass(frozen=True)
class DataConfig:
    """Which images to pretrain on."""

    dataset: str = "digits"
    root: str = "data"
    download: bool = False

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise UserError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")


@dataclass(frozen=True)
class ModelConfig:
    """DCGAN architecture. Empty width tuples mean "derive from ``width`` and ``image_size``"."""

    image_size: int = 32
    channels: int = 3
    z_dim: int = 100
    z_distribution: str = "normal"  # normal | uniform (on [-1, 1], as the paper's ImageNet model)
    kernel_size: int = 4
    width: int = 64  # D's first width; doubles per stride-2 block
    d_widths: tuple[int, ...] = ()
    d_strides: tuple[int, ...] = ()  # empty: every block has stride 2
    d_batchnorm_first: bool = False  # the paper: no batch norm on D's input layer
    d_spectral_norm: bool = False  # spectral normalisation of every conv weight of D (models._spectrally_normalise)
    g_widths: tuple[int, ...] = ()  # G's widths from the 4x4 projection upwards
    # One stride (1 or 2) per transposed conv after the projection, the last making the image; empty: all 2.
    g_strides: tuple[int, ...] = ()
    g_projection: str = "conv"  # conv (4x4 transposed conv) | linear (linear + BN1d, as the authors' code)
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        n = self.image_size
        if n < 16 or n & (n - 1):
            raise UserError(f"model.image_size must be a power of two >= 16, got {n}")
        if self.channels not in (1, 3):
            raise UserError(f"model.channels must be 1 or 3, got {self.channels}")
        check_choice(self, "model", "z_distribution", ("normal", "uniform"))
        check_choice(self, "model", "g_projection", ("conv", "linear"))
        if self.kernel_size < 3:
            raise UserError("model.kernel_size must be at least 3")
        check_at_least(self, "model", ("z_dim", "width"), 1)
        if any(w < 1 for w in (*self.d_widths, *self.g_widths)):
            raise UserError("every width in model.d_widths and model.g_widths must be at least 1")
        check_positive(self, "model", ("bn_eps",))
        strides = self.discriminator_strides
        if len(strides) != len(self.discriminator_widths) or any(s not in (1, 2) for s in strides):
            raise UserError("model.d_strides must give a stride of 1 or 2 for every entry of model.d_widths")
        if 1 in strides and self.kernel_size % 2 == 0:
            raise UserError("stride-1 blocks keep the image size only with an odd model.kernel_size")
        if n % (2 ** strides.count(2)) or n // (2 ** strides.count(2)) < 1:
            raise UserError(f"model.d_strides halve {n}x{n} images below 1x1")
        g_strides = self.generator_strides
        if any(s not in (1, 2) for s in g_strides) or g_strides.count(2) != self.num_upsamplings:
            raise UserError(f"model.g_strides needs {self.num_upsamplings} strides of 2 (and any number of 1) to "
                            f"grow 4x4 to {n}x{n}, got {list(g_strides)}")
        if 1 in g_strides and self.kernel_size % 2 == 0:
            raise UserError("stride-1 transposed convolutions keep the image size only with an odd model.kernel_size")
        if len(self.generator_widths) != len(g_strides):
            raise UserError(f"model.g_widths needs {len(g_strides)} entries (one per transposed convolution) to grow "
                            f"4x4 to {n}x{n}, got {len(self.generator_widths)}")

    @property
    def num_upsamplings(self) -> int:
        return int(math.log2(self.image_size // 4))

    @property
    def discriminator_widths(self) -> tuple[int, ...]:
        return self.d_widths or tuple(self.width * 2**i for i in range(self.num_upsamplings))

    @property
    def discriminator_strides(self) -> tuple[int, ...]:
        return self.d_strides or (2,) * len(self.discriminator_widths)

    @property
    def generator_strides(self) -> tuple[int, ...]:
        return self.g_strides or (2,) * self.num_upsamplings

    @property
    def generator_widths(self) -> tuple[int, ...]:
        """The projection's width, then the input width of every later transposed convolution."""
        return self.g_widths or tuple(reversed(self.discriminator_widths))[: len(self.generator_strides)]


@dataclass(frozen=True)
class TrainConfig:
    """Pretraining optimisation (the paper's defaults: Adam 2e-4, beta1 0.5, batch 128)."""

    epochs: int = 25
    lr_decay_epochs: int = 0  # the last N epochs decay the learning rate linearly towards 0
    batch_size: int = 128
    lr: float = 2e-4
    lr_d: float = 0.0  # D's own rate, for two time-scales (TTUR; AFV: D 4e-4, G 2e-4); 0: train.lr
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0
    device: str = "auto"
    log_every: int = 20  # steps between metrics.jsonl lines
    checkpoint_every: int = 500  # steps between mid-epoch checkpoints (0: at epoch ends only)
    num_samples: int = 64  # fixed-noise images in each epoch's sample grid
    collapse_loss: float = 1e-3  # D loss below this at every log for collapse_steps steps: reported as collapse
    collapse_steps: int = 500
    # Online probe of feature quality (off at 0): every probe_every steps, a linear SVM at C = probe_c is fitted
    # on D's pooled features of half of a fixed, class-balanced subset of probe_images training images and
    # scored on the other half; the D with the best score is kept as discriminator_best_probe.pt.
    probe_every: int = 0
    probe_images: int = 10_000
    probe_c: float = 1e-4
    # The probe's own solver settings (the rest are [svm]'s): it only ranks D's, and these cut its fit from 7.5 to
    # 2.0 s at the same held-out accuracy (results/benchmarks/probe_overhead.md).
    probe_tol: float = 1e-3
    probe_preconditioner_rank: int = 64
    # The objective (losses.py): "bce" (the paper's) or "hinge"; DiffAugment policy on every image D sees (augment.py,
    # e.g. ["translation", "cutout"], or AFV's ["flip", "translation"]); weight of the self-supervised rotation loss
    # on real images (0: off).
    loss: str = "bce"
    diffaugment: tuple[str, ...] = ()
    rotation_weight: float = 0.0
    # ContraD's term on real images (contrastive.py): SimCLR's NT-Xent on two strong views of each real image, through
    # a projection head of D's last map, weighted into D's loss (0: off); its softmax temperature (ContraD's 0.1).
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1
    # An exponential moving average of D's weights and batch-norm statistics, updated after every D step and written
    # as discriminator_ema.pt (evaluate --select ema); 0: off. It never feeds back into training: D trains the same.
    ema_decay: float = 0.0
    mirror_real: bool = False  # StyleGAN2-ADA's --mirror: a random half of each epoch's real images flipped for D
    # Speed only (a resumed run may change them): NHWC tensors, which CPU and GPU convolutions prefer;
    # bf16 autocast (GPUs, or CPUs with bfloat16 instructions) and torch.compile, off by default (GAN D's are known
    # to produce NaNs under mixed precision; compiling costs a minute up front and needs a C++ compiler on CPU).
    # bf16 = "auto": on where bfloat16 runs in hardware (runtime.settled_bf16); pretrain stores what it settled on.
    channels_last: bool = True
    bf16: bool | str = False
    compile: bool = False
    # Under torchrun (more than one process): batch norm normalises over the whole global batch, so N processes
    # train as one would (to float rounding). Off: each process's share is its own batch-norm batch.
    sync_batchnorm: bool = True

    def __post_init__(self) -> None:
        check_choice(self, "train", "device", DEVICES)
        check_at_least(self, "train", ("epochs", "batch_size", "log_every", "num_samples", "collapse_steps"), 1)
        check_at_least(self, "train", ("seed", "checkpoint_every", "probe_preconditioner_rank"), 0)
        check_positive(self, "train", ("lr", "probe_tol"))
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UserError(f"train.beta1 and train.beta2 must lie in [0, 1), got {self.beta1} and {self.beta2}")
        check_off_or_positive(self, "train", ("collapse_loss", "rotation_weight", "lr_d", "contrastive_weight"))
        check_positive(self, "train", ("contrastive_temperature",))
        if not isinstance(self.bf16, bool) and self.bf16 != "auto":
            raise UserError(f'train.bf16 must be true, false or "auto", got {self.bf16!r}')
        if self.probe_every < 0 or self.probe_images < 20 or not self.probe_c > 0:
            raise UserError("train.probe_every must be 0 (off) or a number of steps, train.probe_images at least 20 "
                            "and train.probe_c positive")
        check_choice(self, "train", "loss", GAN_LOSSES)
        unknown = [a for a in self.diffaugment if a not in AUGMENTATIONS]
        if unknown:
            raise UserError(f"train.diffaugment: unknown augmentation {unknown[0]!r}; "
                            f"choose from {', '.join(AUGMENTATIONS)}")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"train.ema_decay must lie in [0, 1) (0: off), got {self.ema_decay}")
        if not 0 <= self.lr_decay_epochs <= self.epochs:
            raise UserError("train.lr_decay_epochs must lie between 0 and train.epochs")

    def lr_at(self, epoch: int) -> float:
        """G's learning rate in (0-based) ``epoch``: constant, then a linear decay over the last ``lr_decay_epochs``
        of the final ``epochs`` (a resume that changes a begun epoch's rate: ``run_folder.check_schedule_so_far``)."""
        decay_start = self.epochs - self.lr_decay_epochs
        return self.lr if epoch < decay_start else self.lr * (self.epochs - epoch) / (self.lr_decay_epochs + 1)

    @property
    def d_lr_ratio(self) -> float:
        """D's learning rate over G's (``train.lr_d``; 1 without it): the decay scales both alike."""
        return self.lr_d / self.lr if self.lr_d else 1.0


@dataclass(frozen=True)
class FeatureConfig:
    """Which discriminator blocks become features, and how they are pooled (VISSL-style spec as data)."""

    layers: tuple[str, ...] = ()  # block names, e.g. ("conv1", "conv2"); empty = every conv block
    grid: int = 4  # each block is max-pooled to grid x grid
    # extra grids each block is also pooled to, after the grid (e.g. [2, 1]); empty: the paper's grid alone
    pyramid: tuple[int, ...] = ()
    pool: str = "max"  # max | avg
    bn_stats: str = "running"  # running (D's averages) | data (recomputed from the training images)
    batch_size: int = 256
    # What a feature is: "pooled" (the grids above), "fisher" (fisher.py: D's per-image gradient with respect to its
    # weights, centred and scaled by its mean and spread over fisher_samples images from the run's G, reduced to
    # fisher_dim coordinates), or "pooled+fisher" (both, side by side). Fisher vectors need the run's generator.pt.
    kind: str = "pooled"
    fisher_output: str = "logit"
    fisher_reduce: str = "sketch"
    fisher_dim: int = 16384
    fisher_samples: int = 1024

    def __post_init__(self) -> None:
        check_choice(self, "features", "pool", POOLS)
        check_choice(self, "features", "bn_stats", BN_STATS)
        check_at_least(self, "features", ("grid", "batch_size", "fisher_dim", "fisher_samples"), 1)
        for key, choices in (("kind", FEATURE_KINDS), ("fisher_output", FISHER_OUTPUTS),
                             ("fisher_reduce", FISHER_REDUCTIONS)):
            check_choice(self, "features", key, choices)
        if min(self.pyramid, default=1) < 1 or len(set(self.pyramid)) != len(self.pyramid):
            raise UserError(f"features.pyramid must hold distinct grid sizes of at least 1, got {list(self.pyramid)}")
        if self.grid in self.pyramid:
            raise UserError(f"features.pyramid repeats features.grid ({self.grid}): list only the extra grids")
        if len(set(self.layers)) != len(self.layers):
            raise UserError(f"features.layers names a block twice: {list(self.layers)}")


@dataclass(frozen=True)
class SvmConfig:
    """The linear probe: an L2-regularised squared-hinge SVM, C chosen on a validation split of train."""

    solver: str = "torch"  # torch (full-batch Newton, float32) | liblinear (scikit-learn LinearSVC)
    c_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    val_fraction: float = 0.1
    standardize: bool = True  # scale features with training-set statistics (the authors' recipe: false)
    # Augment the SVM's fitting rows with the features of the same images flipped left-right (validation and test
    # rows are never flipped): twice the rows, so about twice the SVM time.
    train_hflip: bool = False
    # Also fit on train_translate_views copies of the training images, each shifted by up to train_translate pixels
    # in each direction (zero-filled; a fixed draw per copy, so the cache holds them): (1 + hflip + copies) x rows.
    train_translate: int = 0
    train_translate_views: int = 1
    # Score each validation and test image by the mean SVM decision over it and its mirror (a two-view read-out;
    # the paper scores one view, so the report labels such rows as another read-out). C is chosen the same way.
    score_hflip: bool = False
    # Score each validation and test image also by its train_translate_views shifted copies (the same draw of shifts
    # per copy as the fitting copies'; needs train_translate): the mean decision over every view. Another read-out.
    score_translate: bool = False
    max_iter: int = 1000
    tol: float = 1e-4
    # torch solver: precision of the Hessian products inside CG (bfloat16 halves their memory traffic; objective,
    # gradient and line search stay float32, so the path changes, not the optimum: tests/test_svm.py). "auto":
    # bfloat16 where it runs in hardware; evaluate settles it before anything is stored, so records hold what ran.
    hessian_precision: str = "float32"
    # torch solver: how the standardised fitting rows are held; bfloat16 halves the SVM's largest array (the rows
    # rounded to 8 significant bits, widened a block at a time for the float32 objective and gradient)
    row_precision: str = "float32"
    # torch solver: rank of the randomised Nystrom sketch of X^T X preconditioning CG (0: plain CG); same optimum
    preconditioner_rank: int = 0
    # torch solver, full protocol: start the refit from the sweep's solution at the chosen C (fitted on 90% of the
    # rows) instead of zero: the same optimum in fewer steps; off keeps older results reproducible to the digit.
    warm_refit: bool = False

    def __post_init__(self) -> None:
        check_choice(self, "svm", "solver", SOLVERS)
        check_choice(self, "svm", "hessian_precision", HESSIAN_PRECISIONS)
        check_choice(self, "svm", "row_precision", ROW_PRECISIONS)
        if self.row_precision != "float32" and self.solver != "torch":
            raise UserError(f"svm.row_precision = {self.row_precision} needs svm.solver = torch (liblinear: float64)")
        if self.preconditioner_rank < 0:
            raise UserError("svm.preconditioner_rank must be 0 (plain CG) or a positive rank")
        if not self.c_grid:
            raise UserError("svm.c_grid is empty: give at least one C")
        if any(not c > 0 or math.isinf(c) for c in self.c_grid):
            raise UserError("every C in svm.c_grid must be positive")
        if not 0 < self.val_fraction < 1:
            raise UserError("svm.val_fraction must lie strictly between 0 and 1")
        check_at_least(self, "svm", ("max_iter", "train_translate_views"), 1)
        check_at_least(self, "svm", ("train_translate",), 0)
        if self.score_translate and not self.train_translate:
            raise UserError("svm.score_translate needs svm.train_translate > 0 (the largest shift, in pixels)")
        check_positive(self, "svm", ("tol",))


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    svm: SvmConfig = field(default_factory=SvmConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> "Config":
        """Build a config from nested dicts, refusing unknown sections and keys."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(raw) - set(sections)
        if unknown:
            raise UserError(f"{source}: unknown section(s) {sorted(unknown)}; valid: {sorted(sections)}")
        built = {}
        for name, section_cls in _section_classes().items():
            values = raw.get(name, {})
            if not isinstance(values, Mapping):
                raise UserError(f"{source}: [{name}] must be a table of keys")
            built[name] = _build_section(section_cls, name, values, source)
        return cls(**built)


def _section_classes() -> dict[str, type]:
    return {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
            "features": FeatureConfig, "svm": SvmConfig}


def _build_section(section_cls: type, name: str, values: Mapping[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(section_cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(f'{name}.{k}' for k in sorted(unknown))}; "
                        f"valid keys in [{name}]: {', '.join(sorted(hints))}")
    return section_cls(**{k: _coerce(v, hints[k], f"{name}.{k}", source) for k, v in values.items()})


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check ``value`` against the declared type; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # e.g. bool | str: one of them (a bool is no int here)
        options = typing.get_args(hint)
        if isinstance(value, options) and (bool in options or not isinstance(value, bool)):
            return value
        raise UserError(f"{source}: {key} must be {' or '.join(o.__name__ for o in options)}, got {value!r}")
    if origin is tuple:
        (item_type, _) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{source}: {key} must be a list, got {value!r}")
        return tuple(_coerce(v, item_type, key, source) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool) or hint is int and isinstance(value, bool) \
            or not isinstance(value, hint):
        raise UserError(f"{source}: {key} must be {hint.__name__}, got {value!r}")
    return value


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load ``path`` (TOML, or a run's ``config.json``) over the defaults and apply dotted overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        raw, source = read_config_file(path), str(path)
    return apply_overrides(Config.from_dict(raw, source), overrides or {})


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}") from None


def apply_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """Return a new config with ``{"section.key": value}`` overrides applied (values already typed)."""
    raw = config.to_dict()
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not key or section not in raw:
            raise UserError(f"override {dotted!r} must look like section.key with a section in {sorted(raw)}")
        raw[section][key] = value
    return Config.from_dict(raw, "override")


def parse_set_option(item: str) -> tuple[str, Any]:
    """Parse one ``--set key=value``; the value is read as a TOML value, else taken as a string."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects key=value, got {item!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key.strip(), value
