"""An online probe of feature quality while D trains (``train.probe_every``).

A fixed, class-balanced subset of the *training* split (``train.probe_images``, drawn once from the run's
seed) is cut into two stratified halves. Every probe extracts D's pooled features of both halves (the
evaluation's pooling spec and batch-norm statistics: D in eval mode with its running averages), fits the
L2-SVM of ``[svm]`` at ``train.probe_c`` (with the probe's own tol and preconditioner) on one half and scores it
on the other. It reads no test image, consumes no random numbers and leaves D exactly as it found it (mode,
gradients, memory layout), so a run with the probe trains the same weights as one without it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from .config import Config
from .data import ImageSet
from .errors import UserError
from .features import FrozenExtractor, PoolingSpec, extract
from .models import Discriminator
from .protocols import class_balanced_draw
from .svm import fit_and_score, make_classifier, validation_split


class FeatureProbe:
    """Called with D, returns the held-out accuracy of a linear SVM on D's pooled features."""

    def __init__(self, config: Config, data: ImageSet, device: torch.device):
        if data.labels is None:
            raise UserError(f"train.probe_every needs labels, and {data.name} {data.split} has none; "
                            "set train.probe_every = 0")
        labels = data.labels.numpy()
        classes = len(np.unique(labels))
        per_class = min(config.train.probe_images // classes, int(np.bincount(labels).min()))
        rows = class_balanced_draw(labels, per_class, np.random.default_rng([config.train.seed, 7]))
        fit, held_out = validation_split(labels[rows], 0.5, config.train.seed)
        self.images = {"fit": data.images[rows[fit]], "held_out": data.images[rows[held_out]]}
        self.labels = {"fit": labels[rows[fit]], "held_out": labels[rows[held_out]]}
        self.config, self.device = config, device

    def __call__(self, discriminator: Discriminator) -> float:
        features = self.features(discriminator)
        return fit_and_score(features["fit"], self.labels["fit"], features["held_out"], self.labels["held_out"],
                             self.config.train.probe_c, self.classifier, self.config.svm.standardize)["test_accuracy"]

    def classifier(self, C: float):
        """The evaluation's solver ([svm]) with the probe's own tol and preconditioner (``train.probe_tol``,
        ``train.probe_preconditioner_rank``: why, beside them in config.py)."""
        train = self.config.train
        svm = replace(self.config.svm, tol=train.probe_tol, preconditioner_rank=train.probe_preconditioner_rank)
        return make_classifier(svm, C, device=str(self.device))

    def features(self, discriminator: Discriminator) -> dict[str, np.ndarray]:
        """Both halves' features, with D restored afterwards to its mode and gradient flags."""
        mode, requires_grad = discriminator.training, [p.requires_grad for p in discriminator.parameters()]
        extractor = FrozenExtractor(discriminator, PoolingSpec.from_config(self.config.features, discriminator))
        try:
            return {part: extract(extractor, images, self.config.features.batch_size, self.device,
                                  channels_last=self.config.train.channels_last)  # D's own layout, kept as it is
                    for part, images in self.images.items()}
        finally:
            discriminator.train(mode)
            for parameter, flag in zip(discriminator.parameters(), requires_grad):
                parameter.requires_grad_(flag)
