"""``analyse embedding``: a t-SNE map of D's features for a class-balanced subset of test images, the trained D
beside an untrained D of the same architecture, each with numbers that say how separated the classes are.

A t-SNE map is a picture, not a measurement (its distances are not the features'), so each panel also reports
the classes' separation in the full feature space and in the map: the leave-one-out accuracy of a 10-nearest-
neighbour vote (cosine similarity of standardised features, as the kNN protocol) and the silhouette score
(cosine in the full space, Euclidean in the map). The labels colour the points and score the separation; they
train nothing. Both Ds see the same images with the same batch-norm recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import CLASS_NAMES, ImageSet
from ..features import FrozenExtractor, PoolingSpec, extract
from ..models import Discriminator, build_models, recompute_batchnorm_stats
from .common import pyplot, save_figure

NEIGHBOURS = 10  # the leave-one-out vote's k


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted row indices of ``per_class`` images of every class (all of a class that has fewer), seeded."""
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(rows))


def separation(points: np.ndarray, labels: np.ndarray, metric: str) -> dict[str, float]:
    """Leave-one-out 10-NN accuracy and the silhouette score of ``labels`` among ``points``."""
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import KNeighborsClassifier

    voter = KNeighborsClassifier(NEIGHBOURS + 1, metric=metric).fit(points, labels)
    neighbours = voter.kneighbors(points, return_distance=False)[:, 1:]  # leave each point itself out
    votes = np.array([np.bincount(labels[row], minlength=labels.max() + 1).argmax() for row in neighbours])
    return {"knn_accuracy": float(np.mean(votes == labels)),
            "silhouette": float(silhouette_score(points, labels, metric=metric))}


def embed(features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The 2-d t-SNE map of standardised features (reduced to 50 principal components first, the usual practice
    for speed), and the separation in the full space and in the map."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    scaled = StandardScaler().fit_transform(features)
    reduced = PCA(n_components=min(50, *scaled.shape), random_state=seed).fit_transform(scaled)
    perplexity = min(30.0, (len(features) - 1) / 3)
    mapped = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    return mapped, {"full_space": separation(scaled, labels, "cosine"), "map": separation(mapped, labels, "euclidean")}


def features_of(discriminator: Discriminator, spec: PoolingSpec, images: torch.Tensor, bn_images: torch.Tensor | None,
                device: torch.device) -> np.ndarray:
    """D's pooled features; with ``bn_images``, batch-norm statistics recomputed from them first (bn_stats=data)."""
    if bn_images is not None:
        recompute_batchnorm_stats(discriminator, bn_images, 128, device)
    return extract(FrozenExtractor(discriminator, spec), images, 256, device)


def embedding_figure(trained: Discriminator, config, test: ImageSet, bn_images: torch.Tensor | None,
                     per_class: int, seed: int, out_dir: Path, device: torch.device) -> dict[str, Any]:
    """Both Ds' maps side by side in ``embedding.png``; returns what was measured (for ``embedding.json``)."""
    rows = balanced_subset(test.labels.numpy(), per_class, seed)
    images, labels = test.images[rows], test.labels.numpy()[rows]
    torch.manual_seed(seed)
    untrained = build_models(config.model)[1].eval()
    spec = PoolingSpec.from_config(config.features, trained)
    panels = {name: embed(features_of(d, spec, images, bn_images, device), labels, seed)
              for name, d in (("trained D", trained), ("untrained D", untrained))}
    names = CLASS_NAMES.get(test.name, tuple(str(c) for c in range(labels.max() + 1)))
    draw(panels, labels, names, f"{test.name} {test.split}: {len(rows):,} images, {per_class} per class, "
         f"{spec.dimension(trained):,}-d features", out_dir / "embedding.png")
    return {"dataset": test.name, "split": test.split, "images": int(len(rows)), "per_class": per_class,
            "seed": seed, "feature_dim": spec.dimension(trained), "bn_stats": config.features.bn_stats,
            "neighbours": NEIGHBOURS, "separation": {name: measured for name, (_, measured) in panels.items()},
            "figure": "embedding.png"}


def draw(panels: dict[str, tuple[np.ndarray, dict]], labels: np.ndarray, names: tuple[str, ...], title: str,
         path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 7.6))
    colours = plt.get_cmap("tab10")
    for axis, (name, (mapped, measured)) in zip(axes, panels.items()):
        for c in np.unique(labels):
            here = labels == c
            axis.scatter(mapped[here, 0], mapped[here, 1], s=9, color=colours(int(c) % 10), label=names[int(c)])
        full, flat = measured["full_space"], measured["map"]
        axis.set_title(f"{name}\n{NEIGHBOURS}-NN accuracy {100 * full['knn_accuracy']:.1f}% (features), "
                       f"{100 * flat['knn_accuracy']:.1f}% (map)\nsilhouette {full['silhouette']:.3f} (features, "
                       f"cosine), {flat['silhouette']:.3f} (map)", fontsize=11)
        axis.set_xticks([]), axis.set_yticks([])
    handles, legend_labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, legend_labels, loc="lower center", ncol=min(10, len(handles)), fontsize=10, markerscale=2,
                  frameon=False, bbox_to_anchor=(0.5, -0.02))
    figure.suptitle(f"t-SNE of D's features, coloured by class: {title}", fontsize=12)
    save_figure(figure, path)
