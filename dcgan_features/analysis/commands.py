"""``dcgan-features analyse ...``: the command line of the analyses, a thin layer over their modules (the main
CLI attaches this group; its errors get the toolkit's one-line treatment there)."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import DEVICES
from ..errors import UserError

OUTPUTS = {"samples": ["samples.png", "z.npy", "samples.json"], "walk": ["walk.png", "walk.json"],
           "arithmetic": ["arithmetic.png", "arithmetic.json"],
           "memorisation": ["memorisation.png", "memorisation.json"],
           "embedding": ["embedding.png", "embedding.json"],
           "visualise": ["filters.png", "filters_untrained.png", "guided_backprop.png", "visualise.json"],
           "run-page": ["index.html", "index.md", "page.json"]}


def prepare_out(out: str, analysis: str, force: bool) -> Path:
    """The output folder, refusing to overwrite an earlier analysis of the same kind there without --force."""
    out_dir = Path(out)
    existing = [name for name in OUTPUTS[analysis] if (out_dir / name).exists()]
    if existing and not force:
        raise UserError(f"{out_dir / existing[0]} exists; choose another --out or pass --force to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def numbers(text: str, what: str) -> list[int]:
    """``"3,17,5"`` -> [3, 17, 5], with a one-line error for anything else."""
    try:
        found = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--{what} expects sample numbers separated by commas, got {text!r}") from None
    if not found:
        raise UserError(f"--{what} is empty: give at least one sample number")
    return found


def models_on(checkpoint: str, device: str):
    from ..runtime import resolve_device
    from .common import load_models

    return load_models(checkpoint, resolve_device(device))


checkpoint_argument = click.argument("checkpoint", type=click.Path())
out_option = click.option("--out", required=True, type=click.Path(), help="Folder for the figure and its JSON.")
force_option = click.option("--force", is_flag=True, help="Replace this analysis's earlier files in --out.")
device_option = click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                             help="auto uses CUDA when present; cuda without a GPU is an error.")


@click.group()
def analyse() -> None:
    """The paper's analyses of a trained run (any checkpoint with a generator), and a page per run."""


@analyse.command()
@checkpoint_argument
@click.option("--n", default=64, show_default=True, help="How many samples.")
@click.option("--seed", default=0, show_default=True, help="Seed of their z vectors.")
@out_option
@force_option
@device_option
def samples(checkpoint, n, seed, out, force, device):
    """Numbered samples, their z saved beside them (z.npy) so other commands can name them by number."""
    from .samples import write_samples

    record = write_samples(models_on(checkpoint, device), n, seed, prepare_out(out, "samples", force))
    click.echo(f"{record['n']} numbered samples: {Path(out) / record['grid']} (z vectors: {Path(out) / record['z']})")


@analyse.command()
@checkpoint_argument
@click.option("--samples", "samples_dir", type=click.Path(), default=None,
              help="Folder of numbered samples (analyse samples); endpoints are then named with --pair.")
@click.option("--pair", "pairs", multiple=True, metavar="A,B", help="Walk from sample A to sample B (repeatable).")
@click.option("--rows", default=6, show_default=True, help="Random walks when no --pair is given.")
@click.option("--steps", default=10, show_default=True, help="Images per walk, both ends included.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random endpoints.")
@out_option
@force_option
@device_option
def walk(checkpoint, samples_dir, pairs, rows, steps, seed, out, force, device):
    """Walks in the latent space, and how smooth they are in pixels and in D's features (walk.json)."""
    import torch

    from .common import check_handles_match, read_handles
    from .latent import random_endpoints
    from .latent import walk as run_walk

    if steps < 2:
        raise UserError("--steps must be at least 2 (the two endpoints)")
    models = models_on(checkpoint, device)
    if pairs:
        if samples_dir is None:
            raise UserError("--pair names numbered samples: give their folder with --samples")
        check_handles_match(samples_dir, models)
        chosen = [numbers(p, "pair") for p in pairs]
        if any(len(p) != 2 for p in chosen):
            raise UserError("--pair takes two sample numbers, A,B")
        endpoints = torch.stack([read_handles(samples_dir, p) for p in chosen])
        origin = f"sample pairs {' '.join(pairs)} of {samples_dir}"
    else:
        if rows < 1:
            raise UserError("--rows must be at least 1")
        endpoints, origin = random_endpoints(models, rows, seed), f"random, seed {seed}"
    summary = run_walk(models, endpoints, steps, prepare_out(out, "walk", force), origin)
    click.echo(f"{summary['rows']} walks of {steps} steps: largest step / mean step "
               f"{summary['mean_pixel_max_over_mean']:.2f} in pixels, {summary['mean_feature_max_over_mean']:.2f} "
               f"in D's features -> {Path(out) / 'walk.png'}")


@analyse.command()
@checkpoint_argument
@click.option("--samples", "samples_dir", type=click.Path(), required=True, help="Folder of numbered samples.")
@click.option("--a", "group_a", required=True, metavar="N,N,N", help="Sample numbers of group A.")
@click.option("--b", "group_b", required=True, metavar="N,N,N", help="Sample numbers of group B (subtracted).")
@click.option("--c", "group_c", required=True, metavar="N,N,N", help="Sample numbers of group C (added).")
@click.option("--seed", default=0, show_default=True, help="Seed of the noise around the result.")
@out_option
@force_option
@device_option
def arithmetic(checkpoint, samples_dir, group_a, group_b, group_c, seed, out, force, device):
    """Vector arithmetic on z: mean(A) - mean(B) + mean(C), beside the same arithmetic on images."""
    from .common import check_handles_match, read_handles
    from .latent import arithmetic as run_arithmetic

    models = models_on(checkpoint, device)
    check_handles_match(samples_dir, models)
    groups = {name: read_handles(samples_dir, numbers(text, name.lower()), f"--{name.lower()}")
              for name, text in (("A", group_a), ("B", group_b), ("C", group_c))}
    summary = run_arithmetic(models, groups, prepare_out(out, "arithmetic", force), seed)
    click.echo(f"A - B + C -> {Path(out) / summary['figure']}")


@analyse.command()
@checkpoint_argument
@click.option("--dataset", default=None, help="Whose test images are mapped [default: the run's].")
@click.option("--data-root", default=None, help="Folder holding the dataset [default: the run's].")
@click.option("--per-class", default=100, show_default=True, help="Test images of each class in the map.")
@click.option("--seed", default=0, show_default=True, help="Seed of the subset, the untrained D and t-SNE.")
@out_option
@force_option
@device_option
def embedding(checkpoint, dataset, data_root, per_class, seed, out, force, device):
    """t-SNE of D's features for a class-balanced subset of test images, the trained D beside an untrained D of the
    same architecture, with the classes' separation (10-NN accuracy, silhouette) in the features and in the map."""
    from ..data import load_images
    from ..runtime import resolve_device
    from .common import load_discriminator_only, write_record
    from .embedding import embedding_figure

    if per_class < 2:
        raise UserError("--per-class must be at least 2")
    torch_device = resolve_device(device)
    models = load_discriminator_only(checkpoint, torch_device)
    config = models.config
    name, root = dataset or config.data.dataset, data_root or config.data.root
    load = lambda split: load_images(name, root, split, image_size=config.model.image_size,  # noqa: E731
                                     channels=config.model.channels)
    test = load("test")
    if test.labels is None:
        raise UserError(f"{name} test has no labels to colour the map by")
    bn_images = load("train").images if config.features.bn_stats == "data" else None
    out_dir = prepare_out(out, "embedding", force)
    summary = embedding_figure(models.discriminator, config, test, bn_images, per_class, seed,
                               out_dir, torch_device)
    write_record(out_dir / "embedding.json", models, **summary)
    trained, untrained = (summary["separation"][k]["full_space"]["knn_accuracy"] for k in ("trained D", "untrained D"))
    click.echo(f"10-NN accuracy in D's features: trained {100 * trained:.1f}%, untrained {100 * untrained:.1f}% "
               f"-> {Path(out) / 'embedding.png'}")


def _images(dataset, data_root, split, models):
    from ..data import load_images

    config = models.config
    return load_images(dataset or config.data.dataset, data_root or config.data.root, split,
                       image_size=config.model.image_size, channels=config.model.channels)


@analyse.command()
@checkpoint_argument
@click.option("--dataset", default=None, help="Training images to compare with [default: the run's].")
@click.option("--data-root", default=None, help="Folder holding the dataset [default: the run's].")
@click.option("--n", default=1000, show_default=True, help="Generated samples (and held-out images) compared.")
@click.option("--seed", default=0, show_default=True)
@out_option
@force_option
@device_option
def memorisation(checkpoint, dataset, data_root, n, seed, out, force, device):
    """Generated samples beside their nearest training images, and how close they are compared with held-out
    images (the test split's images; its labels are never read)."""
    from ..runtime import resolve_device
    from .memorisation import memorisation_check

    if n < 2:
        raise UserError("--n must be at least 2")
    models = models_on(checkpoint, device)
    train, held_out = _images(dataset, data_root, "train", models), _images(dataset, data_root, "test", models)
    summary = memorisation_check(models, train, held_out, n, seed, prepare_out(out, "memorisation", force),
                                 device=resolve_device(device))
    for space in ("pixels", "features"):
        m = summary[space]
        click.echo(f"{space}: {100 * m['fraction_nearer_than_held_out']:.1f}% of generated samples are nearer a "
                   f"training image than the {summary['percentile']:g}th percentile of held-out images")
    click.echo(("FLAGGED: the generator may copy training images" if summary["flagged"] else "not flagged") +
               f" -> {Path(out) / summary['figure']}")


@analyse.command()
@checkpoint_argument
@click.option("--dataset", default=None, help="Real images to explain [default: the run's].")
@click.option("--data-root", default=None, help="Folder holding the dataset [default: the run's].")
@click.option("--images", "n_images", default=256, show_default=True, help="Real images searched for the "
              "most active features (the first of the test split).")
@click.option("--seed", default=0, show_default=True, help="Seed of the untrained D.")
@out_option
@force_option
@device_option
def visualise(checkpoint, dataset, data_root, n_images, seed, out, force, device):
    """D's first-layer filters and guided backpropagation, trained D beside an untrained one."""
    from .visualise import visualise as run_visualise

    if n_images < 1:
        raise UserError("--images must be at least 1")
    models = models_on(checkpoint, device)
    images = _images(dataset, data_root, "test", models).images[:n_images]
    summary = run_visualise(models, images, prepare_out(out, "visualise", force), seed)
    click.echo(f"figures: {', '.join(str(Path(out) / name) for name in summary['figures'])}")


@analyse.command("run-page")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--results", "results_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Folders searched for evaluation results of this run (repeatable) [default: results].")
@out_option
@force_option
def run_page(run_dir, results_dirs, out, force):
    """One page per run (index.html, self-contained, and index.md): curves, samples, config, results."""
    from .run_page import write_run_page

    if not Path(run_dir).is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    made = write_run_page(run_dir, prepare_out(out, "run-page", force),
                          [p for p in (results_dirs or ("results",)) if Path(p).is_dir()])
    click.echo(f"run page: {Path(out) / 'index.html'} ({len(made['images'])} images, {made['results']} results)")
