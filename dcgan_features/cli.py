"""The ``dcgan-features`` command line: a thin layer over train.pretrain, evaluate.evaluate, export (features to
disk) and report.write_report. Mistakes in the input (UserError) print one line and exit with status 2."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import click

from .config import (
    BASELINES,
    BN_STATS,
    DATASETS,
    DEVICES,
    EXPORT_DTYPES,
    SELECTIONS,
    SOLVERS,
    load_config,
    parse_set_option,
)
from .data import SPLITS
from .distributed import shutdown_world
from .errors import UserError
from .protocols import PROTOCOLS, EvalConfig


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dcgan-features"


MACHINE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # a disk full, over quota, or mounted read-only


class Cli(click.Group):
    """Turns UserError and click's usage errors into ``error: <message>`` on stderr and exit status 2,
    one line, without a traceback."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to resume from the last checkpoint", err=True)
            ctx.exit(130)
        except OSError as exc:
            if exc.errno not in MACHINE_ERRNOS:
                raise
            # A full or read-only disk is the machine's state, not a bug: every write is staged and renamed, so
            # what was there before is intact; say where, once.
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"error: {os.strerror(exc.errno).lower()}{where}; nothing earlier was overwritten: free "
                       "space or choose another --out, --cache-dir or --results-dir, and run it again", err=True)
            ctx.exit(2)


def _overrides(pairs: tuple[str, ...], **flags) -> dict:
    """``--set`` pairs first, then the named flags that were given (they win)."""
    overrides = dict(parse_set_option(p) for p in pairs)
    overrides.update({key: value for key, value in flags.items() if value is not None})
    return {key.replace("__", "."): value for key, value in overrides.items()}


set_option = click.option("--set", "set_pairs", multiple=True, metavar="KEY=VALUE",
                          help="Override any config key, e.g. --set train.lr=1e-4 (repeatable).")
cache_dir_option = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                                help="Feature cache [default: $XDG_CACHE_HOME/dcgan-features].")


dataset_option = click.option("--dataset", type=str, default=None,
                              help=f"Dataset name: {', '.join(DATASETS)}.")
download_option = click.option("--download", is_flag=True, default=None,
                               help="Fetch the dataset with torchvision if missing.")
run_data_root_option = click.option("--data-root", type=str, default=None,
                                    help="Folder holding the dataset [default: the run's].")
select_option = click.option("--select", type=click.Choice(SELECTIONS), default=EvalConfig.select, show_default=True,
                             help="Which D of a run directory: the final one, the one its online probe scored best "
                                  "(train.probe_every), or the moving average of its weights (train.ema_decay). "
                                  "What it writes records which.")


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dcgan-features")
def cli() -> None:
    """Train a DCGAN without labels, then evaluate its frozen discriminator as a feature extractor."""


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML config (configs/*.toml); defaults to the run's own config when resuming.")
@dataset_option
@click.option("--data-root", type=str, default=None, help="Folder holding the dataset.")
@download_option
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--device", type=click.Choice(DEVICES), default=None, help="auto uses CUDA when present.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: runs/DATASET-seedSEED]. An existing run is resumed.")
@click.option("--force", is_flag=True, help="Discard an existing run in --out and start over.")
@set_option
def pretrain(config_path, dataset, data_root, download, epochs, batch_size, seed, device, out, force, set_pairs):
    """Train a DCGAN (or resume the run in --out)."""
    from .probe import FeatureProbe
    from .train import pretrain as run_pretrain

    given = config_path
    if config_path is None and out is not None and (Path(out) / "config.json").is_file() and not force:
        config_path = str(Path(out) / "config.json")  # resuming: the run's own config is the base
    overrides = _overrides(set_pairs, data__dataset=dataset, data__root=data_root, data__download=download,
                           train__epochs=epochs, train__batch_size=batch_size, train__seed=seed, train__device=device)
    config = load_config(config_path, overrides)
    out = out or f"runs/{config.data.dataset}-seed{config.train.seed}"
    run_pretrain(config, out, force=force, echo=click.echo, make_probe=FeatureProbe, config_file=given)
    shutdown_world()  # on success only: after a failure a barrier could wait for a rank that is gone


class SeedsCommand(click.Command):
    """Lets ``--seeds 0 1 2`` name several seeds after one flag, as ``--seeds 0 --seeds 1 --seeds 2`` does."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        spread, flag, taken = [], None, 0
        for arg in args:
            if flag and arg.isdigit():
                spread += [flag, arg]
                taken += 1
                continue
            if flag and not taken:
                spread.append(flag)  # no number followed: let click report the missing value
            flag, taken = (arg, 0) if arg in ("--seeds", "--seed") else (None, 0)
            if flag is None:
                spread.append(arg)
        if flag and not taken:
            spread.append(flag)
        return super().parse_args(ctx, spread)


class ProtocolChoice(click.Choice):
    """The protocols of the registry (``protocols.PROTOCOLS``) as they are when the command line is parsed."""

    def __init__(self) -> None:
        super().__init__(list(PROTOCOLS))

    @property
    def choices(self):
        return tuple(PROTOCOLS)

    @choices.setter
    def choices(self, _value) -> None:  # click's __init__ assigns; the registry is the truth
        pass


class EvaluateCommand(SeedsCommand):
    """``evaluate``'s help ends with the registry's protocols, each with its description and default labels."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(p.name, p.help + (f" [default: {p.default_labels} labels per class]" if p.default_labels else "")
                 + ("" if p.reads_test else " (never reads test)")) for p in PROTOCOLS.values()]
        with formatter.section("Protocols"):
            formatter.write_dl(rows)


@cli.command(cls=EvaluateCommand)
@click.option("--checkpoint", type=str, default=None,
              help="A run directory or a checkpoint .pt file (a --baseline may take its architecture from --config).")
@dataset_option
@run_data_root_option
@download_option
@click.option("--protocol", type=ProtocolChoice(), default=EvalConfig.protocol, show_default=True,
              help="The evaluation protocol (each is described under 'Protocols' below).")
@click.option("--labels-per-class", type=int, default=EvalConfig.labels_per_class,
              help="Labelled images per class in each draw [default: the protocol's, listed below].")
@click.option("--draws", type=int, default=EvalConfig.draws, show_default=True,
              help="Class-balanced draws (per-class), or validation draws per C (svhn-1000).")
@click.option("--test-draws", type=int, default=EvalConfig.test_draws, show_default=True,
              help="Test draws (svhn-1000).")
@click.option("--val-size", type=int, default=EvalConfig.val_size, show_default=True,
              help="Validation images taken first from the seed-42 shuffle (svhn-1000).")
@click.option("--knn-k", "knn_k", type=int, multiple=True, default=EvalConfig.knn_k, show_default=True,
              help="knn: a value of k to try on validation (repeat the flag for several).")
@click.option("--knn-temperature", type=float, default=EvalConfig.knn_temperature, show_default=True,
              help="knn: each neighbour votes exp(cosine / temperature).")
@click.option("--baseline", type=click.Choice(BASELINES), default=None,
              help="Evaluate a baseline instead of the checkpoint's D: standardised raw pixels, or a freshly "
                   "initialised D of the checkpoint's architecture (seeded by --seed).")
@click.option("--svm", "solver", type=click.Choice(SOLVERS), default=None,
              help="SVM solver [default: the config's svm.solver].")
@click.option("--bn-stats", type=click.Choice(BN_STATS), default=None,
              help="Batch-norm statistics for extraction: D's running averages, or recomputed from the "
                   "training split's images as the paper's authors did [default: features.bn_stats].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Take [data], [features] and [svm] from this config (the architecture must match); "
                   "flags and --set win over it, and it wins over the checkpoint's own config.")
@click.option("--seeds", "--seed", "seeds", type=click.IntRange(min=0), multiple=True, default=EvalConfig.seeds,
              show_default=True,
              help="Evaluation seeds (validation split, label draws, untrained baseline), e.g. --seeds 0 1 2: "
                   "one result file per seed, then the mean ± std.")
@click.option("--device", type=click.Choice(DEVICES), default=EvalConfig.device, show_default=True)
@select_option
@click.option("--results-dir", type=click.Path(file_okay=False), default="results", show_default=True)
@cache_dir_option
@click.option("--force", is_flag=True, help="Recompute and replace an existing result.")
@set_option
def evaluate(checkpoint, dataset, data_root, download, protocol, labels_per_class, draws, test_draws, val_size,
             knn_k, knn_temperature, baseline, solver, bn_stats, config_path, seeds, device, select, results_dir,
             cache_dir, force, set_pairs):
    """Evaluate a checkpoint's frozen discriminator with an L2-SVM (or, with --protocol knn, weighted kNN)."""
    from .evaluate import evaluate_seeds

    settings = EvalConfig(protocol=protocol, labels_per_class=labels_per_class, draws=draws, test_draws=test_draws,
                          val_size=val_size, baseline=baseline or "", device=device, seeds=tuple(seeds),
                          dataset=dataset or "", root=data_root or "", select=select, knn_k=tuple(knn_k),
                          knn_temperature=knn_temperature)
    overrides = _overrides(set_pairs, data__download=download, svm__solver=solver, features__bn_stats=bn_stats)
    evaluate_seeds(checkpoint, settings, config_path=config_path, overrides=overrides, results_dir=results_dir,
                   cache_dir=cache_dir or default_cache_dir(), force=force, echo=click.echo)
    shutdown_world()


@cli.command()
@click.option("--checkpoint", required=True, type=str, help="A run directory (its final D) or a checkpoint file.")
@dataset_option
@run_data_root_option
@download_option
@click.option("--split", type=click.Choice(SPLITS), default="train", show_default=True)
@click.option("--out", required=True, type=click.Path(), help="Folder to write (features.npy, labels.npy, ...).")
@click.option("--dtype", type=click.Choice(EXPORT_DTYPES), default="float32", show_default=True)
@select_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="A config whose [data] and [features] keys override the checkpoint's.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing export in --out.")
@set_option
def extract(checkpoint, dataset, data_root, download, split, out, dtype, select, config_path, device, force,
            set_pairs):
    """Write a dataset split's frozen-D features to disk for your own classifiers (memory-mapped .npy)."""
    from .export import export_features

    overrides = _overrides(set_pairs, data__download=download)
    export_features(checkpoint, out, split=split, dataset=dataset or "", data_root=data_root or "", dtype=dtype,
                    device=device, select=select, config_path=config_path, overrides=overrides, force=force,
                    echo=click.echo)


@cli.command()
@click.argument("results_dir", type=click.Path(file_okay=False), default="results")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where report.md and report.csv go [default: RESULTS_DIR].")
@click.option("--readme", type=click.Path(dir_okay=False), default=None,
              help="Also render the table into this file between its <!-- report:begin/end --> lines.")
def report(results_dir, out, readme):
    """Aggregate every result under RESULTS_DIR: mean ± std over seeds, and n."""
    from .report import write_report

    if not Path(results_dir).is_dir():
        raise UserError(f"results directory {results_dir} does not exist")
    markdown, md_path, csv_path = write_report(results_dir, out, readme)
    click.echo(markdown)
    click.echo(f"\nwritten: {md_path}, {csv_path}" + (f", {readme}" if readme else ""))


@cli.command()
@click.argument("results_dir", type=click.Path(file_okay=False), default="results")
@click.option("--readme", type=click.Path(dir_okay=False), default=None,
              help="Also render the table into this file between its <!-- released:begin/end --> lines.")
def released(results_dir, readme):
    """Tabulate every discriminator*.pt under RESULTS_DIR: data, recipe, features, test accuracy, sha256."""
    from .released import write_released

    if not Path(results_dir).is_dir():
        raise UserError(f"results directory {results_dir} does not exist")
    markdown, path = write_released(results_dir, readme)
    click.echo(markdown)
    click.echo(f"\nwritten: {path}" + (f", {readme}" if readme else ""))


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--reference", required=True, type=click.Path(dir_okay=False),
              help="The config each row's change is stated against (e.g. configs/cifar10_dcgan.toml).")
@click.option("--out", required=True, type=click.Path(),
              help="Path without suffix: OUT.md and OUT.csv are written (e.g. results/ablations/cifar10, beside the "
                   "folder of the same name).")
def ablations(folder, reference, out):
    """Tabulate the validation-protocol results under FOLDER: one row per recipe, mean ± std over seeds."""
    from .ablations import write_ablations

    if not Path(folder).is_dir():
        raise UserError(f"folder {folder} does not exist")
    markdown, md_path, csv_path = write_ablations(folder, reference, out)
    click.echo(markdown)
    click.echo(f"\nwritten: {md_path}, {csv_path}")


@cli.command("import-dcgan-code")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to create.")
@click.option("--force", is_flag=True, help="Replace an existing import in --out.")
def import_dcgan_code(directory, out, force):
    """Convert the paper authors' released Theano SVHN DCGAN (its .npy files) into a checkpoint."""
    from .dcgan_code import import_dcgan_code as run_import

    if not Path(directory).is_dir():
        raise UserError(f"{directory} is not a directory of the release's .npy files")
    path = run_import(directory, out, force=force)
    click.echo(f"imported {directory} -> {path}; sample grid: {Path(out) / 'samples' / 'imported.png'}")


@cli.group()
def cache() -> None:
    """Look after the feature cache that evaluate fills (entries at the paper's scale are gigabytes each)."""


@cache.command("list")
@cache_dir_option
def cache_list(cache_dir):
    """One line per cached feature matrix, least recently used first, and the total."""
    from .cache_admin import cache_entries, format_size

    entries = cache_entries(cache_dir or default_cache_dir())
    for entry in entries:
        click.echo(entry.describe())
    click.echo(f"{len(entries)} entries, {format_size(sum(e.size_bytes for e in entries))}")


@cache.command("prune")
@cache_dir_option
@click.option("--unused-days", type=float, default=None, help="Remove entries no evaluation has read for N days.")
@click.option("--checkpoint", type=click.Path(exists=True), default=None,
              help="Remove the entries of this D (a checkpoint file, or every discriminator*.pt of a run folder).")
@click.option("--all", "everything", is_flag=True, help="Remove every entry.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def cache_prune(cache_dir, unused_days, checkpoint, everything, dry_run):
    """Remove cached features (they are extracted again when next needed); anything else in the folder stays."""
    from .cache_admin import cache_entries, checkpoint_digests, format_size, prunable, remove_entries

    entries = cache_entries(cache_dir or default_cache_dir())
    digests = checkpoint_digests(checkpoint) if checkpoint else None
    chosen = prunable(entries, unused_days, digests, everything)
    for entry in chosen:
        click.echo(("would remove " if dry_run else "removing ") + entry.describe())
    size = format_size(sum(e.size_bytes for e in chosen))
    if dry_run:
        click.echo(f"{len(chosen)} of {len(entries)} entries would be removed, {size}")
    else:
        click.echo(f"removed {len(chosen)} of {len(entries)} entries, {format_size(remove_entries(chosen))} freed")


def _attach_analyses() -> None:
    from .analysis.commands import analyse

    cli.add_command(analyse)


_attach_analyses()


def main() -> None:
    cli(prog_name="dcgan-features")


if __name__ == "__main__":
    sys.exit(main())
