"""Result files and the report table.

A result is one JSON file per (checkpoint, evaluation dataset, protocol, feature/SVM settings, seed),
named from that identity, so the same evaluation is never counted twice and never overwritten
without ``--force``. Each records what is needed to trust and rerun it: the command, git commit,
config, checkpoint sha256, seed, versions and wall time.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .artifacts import atomic_path, read_json, write_json
from .config import Config, ModelConfig, load_config, parse_set_option
from .errors import UserError

SCHEMA = "dcgan-features/result/v1"
GROUP_COLUMNS = ["pretrain_data", "architecture", "eval_dataset", "transfer", "protocol", "bn_stats"]
# Config keys that cannot change what was learnt or measured: where the data lives, the device, logging and
# checkpoint cadence, the memory layout and compilation (equal to float rounding, tested), the extraction
# batch size, and the online probe (it leaves training as it was, tested; its keys count where a result
# evaluates the D it chose). Every other key, present or future, separates two results into two report rows.
PROBE_KEYS = frozenset({"train.probe_every", "train.probe_images", "train.probe_c"})
# Keys a config may leave to the machine ("auto"); evaluate (the SVM's) and pretrain (train.bf16) store what they
# settled to, which is what counts.
MACHINE_SETTLED_KEYS = frozenset({"svm.hessian_precision", "train.bf16"})
NOT_EXPERIMENT_KEYS = frozenset({
    "data.root", "data.download", "train.seed", "train.device", "train.log_every", "train.checkpoint_every",
    "train.num_samples", "train.collapse_loss", "train.collapse_steps", "train.channels_last", "train.compile",
    "features.batch_size", *PROBE_KEYS})


def architecture_name(model: ModelConfig) -> str:
    """A short, stable label such as ``D64-128-256 k4 32px rgb``."""
    widths = "-".join(str(w) for w in model.discriminator_widths)
    strides = "" if set(model.discriminator_strides) == {2} else " s" + "".join(map(str, model.discriminator_strides))
    return f"D{widths} k{model.kernel_size}{strides} {model.image_size}px {'rgb' if model.channels == 3 else 'gray'}"


def settings_hash(config: Config) -> str:
    """Hash of the settings that change an evaluation's outcome besides checkpoint, data and seed."""
    relevant = {k: config.to_dict()[k] for k in ("features", "svm")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:8]


def result_path(results_dir: str | Path, *, eval_dataset: str, protocol: str, pretrain_dataset: str,
                checkpoint_sha256: str, config: Config, seed: int) -> Path:
    name = (f"{eval_dataset}_{protocol}_{pretrain_dataset}-{checkpoint_sha256[:10]}"
            f"_{settings_hash(config)}_seed{seed}.json")
    return Path(results_dir) / name


def write_result(path: Path, result: dict[str, Any], force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"result {path} exists; pass --force to replace it")
    write_json(path, result)


def format_result(result: dict[str, Any]) -> str:
    """The C sweep and the single test score, as a small readable table."""
    lines = [f"{result['eval_dataset']} ({result['protocol']}), checkpoint {result['checkpoint']['sha256'][:12]}, "
             f"{result['feature_dim']:,} features, seed {result['seed']}",
             f"  {'C':>10}  {'val acc':>8}"]
    for row in result["validation"]:
        mark = "  <- chosen on validation" if row["C"] == result["chosen_C"] else ""
        lines.append(f"  {row['C']:>10.0e}  {100 * row['val_accuracy']:>7.2f}%{mark}")
    if result["protocol"] == "validation":
        lines.append(f"  validation accuracy at C={result['chosen_C']:.0e}: {100 * result['validation_accuracy']:.2f}% "
                     f"({result['n_fit']:,} fitting / {result['n_val']:,} validation images; test never read)")
    elif result["protocol"].startswith("svhn-"):
        lines.append(f"  test error at C={result['chosen_C']:.0e} over {result['test_draws']} draws of "
                     f"{result['labels_per_class']} labels per class: {100 * result['test_error']:.2f}% "
                     f"± {100 * result['test_error_ci95']:.2f} (1.96 x std)  ({result['n_test']:,} test images)")
    elif result["protocol"].startswith("per-class-"):
        lines.append(f"  test accuracy at C={result['chosen_C']:.0e}, each of {result['draws']} draws of "
                     f"{result['labels_per_class']} labels per class refit: {100 * result['test_accuracy']:.2f}% "
                     f"± {100 * result['test_accuracy_std']:.2f}  ({result['n_test']:,} test images)")
    else:
        lines.append(f"  test accuracy at C={result['chosen_C']:.0e}, refit on all {result['n_train']:,} "
                     f"training images: {100 * result['test_accuracy']:.2f}%  ({result['n_test']:,} test images)")
    return "\n".join(lines)


def flat_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored config as ``{"section.key": value}``, with keys added since it was written filled in by their
    defaults (which keep the old behaviour), so that an older file and a newer one compare equal."""
    try:
        raw = Config.from_dict(raw, "stored config").to_dict()
    except UserError:
        pass  # a config this version cannot read is compared as it was stored
    return {f"{section}.{key}": value for section, values in raw.items() for key, value in values.items()}


def epochs_trained(payload: dict[str, Any]) -> int | None:
    """Whole epochs of training behind a checkpoint. ``epoch`` counts the epochs finished before the one under way
    and ``step`` the steps taken in it, so a D saved at an epoch's last step (where the online probe runs) has
    finished ``epoch + 1``. Newer D files record the count as ``epochs_done``; older ones are read off their step
    counters (``global_step`` is ``epoch`` whole epochs plus ``step``), which cannot tell within the first epoch."""
    if "epochs_done" in payload:
        return payload["epochs_done"]
    epoch, step, global_step = payload.get("epoch"), payload.get("step") or 0, payload.get("global_step")
    if epoch and step and global_step == (epoch + 1) * step:  # the steps under way make a whole epoch
        return epoch + 1
    return epoch


def result_epochs(result: dict[str, Any]) -> int | None:
    """The whole epochs behind a result's D. Results written before D files recorded ``epochs_done`` stored
    ``epoch``, one short for a D saved at an epoch's last step; their checkpoint record still tells."""
    known = [e for e in (result["pretrain"].get("epochs"), epochs_trained(result.get("checkpoint") or {}))
             if e is not None]
    return max(known, default=None)


def experiment_identity(result: dict[str, Any]) -> dict[str, Any]:
    """Everything that defines the experiment a result belongs to, except its seeds: what D was trained on,
    how and for how long (or which baseline), and how it was evaluated. Two results share a report row only
    when these are equal."""
    config = flat_config(result.get("config", {}))
    checkpoint, baseline = result.get("checkpoint", {}), result.get("baseline")
    identity: dict[str, Any] = {"eval.dataset": result["eval_dataset"], "eval.protocol": result["protocol"],
                                "eval.feature_dim": result["feature_dim"], "baseline": baseline}
    identity.update({k: v for k, v in config.items() if k.split(".")[0] in ("features", "svm")
                     and k not in NOT_EXPERIMENT_KEYS})
    if baseline == "pixels":
        return identity | {k: config.get(k) for k in ("model.image_size", "model.channels")}
    identity.update({k: v for k, v in config.items() if k.startswith("model.")})
    if baseline:
        return identity
    selected_by = checkpoint.get("selected_by", "final")
    identity.update({k: v for k, v in config.items() if k.startswith("train.")
                     and (k not in NOT_EXPERIMENT_KEYS or (selected_by == "probe" and k in PROBE_KEYS))})
    return identity | {"pretrain.dataset": result["pretrain"]["dataset"],
                       "pretrain.epochs_done": result_epochs(result),
                       "pretrain.unfinished": unfinished(checkpoint),
                       "pretrain.selected_by": selected_by}


def unfinished(checkpoint: dict[str, Any]) -> str | None:
    """``"epoch E, step S"`` when the evaluated file is a training checkpoint of a run that had not finished."""
    if checkpoint.get("kind") == "training" and not checkpoint.get("finished", False):
        return f"epoch {checkpoint.get('epoch')}, step {checkpoint.get('step')}"
    return None


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]


CHECKS_DIR = "checks"  # reruns that check a committed result: they repeat its seeds, so the report leaves them out


def result_files(folder: str | Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every result file under ``folder`` (other JSON files skipped), with its path, in path order, except those
    under a ``checks/`` folder; a file that is not readable JSON is an error, not a silent gap."""
    for path in sorted(Path(folder).rglob("*.json")):
        if CHECKS_DIR in path.relative_to(folder).parts[:-1]:
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            raise UserError(f"{path} is not readable JSON; it may be truncated") from None
        if isinstance(result, dict) and result.get("schema") == SCHEMA:
            yield path, result


def load_results(results_dir: str | Path) -> pd.DataFrame:
    """Every result JSON under ``results_dir`` as one row, except those under a ``checks/`` folder and those of
    the validation protocol (they choose recipes; the report holds test accuracy only)."""
    rows = []
    for path, result in result_files(results_dir):
        if result["protocol"] != "validation":
            rows.append({"pretrain_data": result["pretrain"]["dataset"],
                         "architecture": result["pretrain"]["architecture"],
                         "eval_dataset": result["eval_dataset"], "protocol": result["protocol"],
                         "transfer": _transfer(result),
                         "bn_stats": "-" if result.get("baseline") == "pixels" else result.get("bn_stats", "running"),
                         "accuracy": 100 * result["test_accuracy"], "seed": result["seed"],
                         "pretrain_seed": known_pretrain_seed(result.get("checkpoint", {}).get("kind"),
                                                              result["pretrain"].get("seed")),
                         "draw_std": 100 * result["test_accuracy_std"] if "test_accuracy_std" in result else None,
                         "feature_dim": result["feature_dim"], "file": str(path),
                         "identity": (identity := experiment_identity(result)),
                         "experiment": identity_hash(identity), "config_name": config_name(result)})
    if not rows:
        raise UserError(f"no result files under {results_dir}")
    table = pd.DataFrame(rows)
    repeated = table[table.duplicated(["experiment", "pretrain_seed", "seed"], keep=False)]
    if len(repeated):
        raise UserError(f"{' and '.join(repeated['file'].head(2))} are the same experiment with the same seeds; "
                        f"averaging them would count one measurement twice: keep one, or move the other into a "
                        f"'{CHECKS_DIR}/' folder")
    return table


def known_pretrain_seed(checkpoint_kind: str | None, seed: int | None) -> int | None:
    """The pretraining seed a result may claim: an imported model's is unknown, whatever its config says
    (the config is ours, rebuilt around weights someone else trained)."""
    return None if checkpoint_kind == "imported" else seed


def _names(names: pd.Series) -> str:
    return " / ".join(sorted(set(names)))


def _seed_list(seeds: pd.Series) -> str:
    known = sorted({int(s) for s in seeds if s is not None and s == s})
    return ",".join(map(str, known)) or "-"


def _transfer(result: dict[str, Any]) -> str:
    """Whether features learnt on one dataset were evaluated on another; a baseline learnt nothing."""
    if result.get("baseline"):
        return "-"
    return "yes" if result["pretrain"]["dataset"] != result["eval_dataset"] else "no"


def report_table(results: pd.DataFrame) -> pd.DataFrame:
    """Mean +- sample std of test accuracy over results (seeds), and n, per experiment.

    A row holds only results whose :func:`experiment_identity` is equal, so they differ in their seeds alone.
    ``recipe`` names what sets a row apart from the rows that look the same in the other columns (the keys
    in which their experiments differ) and flags an unfinished run. ``seeds`` lists pretraining / evaluation
    seeds; ``draw std`` is the mean within-run std over label draws (the ± the paper quotes for 400 per
    class), empty for single-split protocols."""
    grouped = results.groupby(GROUP_COLUMNS + ["experiment"], sort=True)
    table = grouped.agg(mean=("accuracy", "mean"), std=("accuracy", "std"), n=("accuracy", "size"),
                        feature_dim=("feature_dim", "first"), draw_std=("draw_std", "mean"),
                        identity=("identity", "first"), config_name=("config_name", _names),
                        pretrain_seeds=("pretrain_seed", _seed_list), eval_seeds=("seed", _seed_list)).reset_index()
    table["recipe"] = recipe_labels(table)
    table["accuracy (%)"] = [f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}" for m, s, n in
                             zip(table["mean"], table["std"], table["n"])]
    table["draw std"] = [f"{d:.2f}" if d == d else "" for d in table["draw_std"]]
    table["seeds (pretrain / eval)"] = table["pretrain_seeds"] + " / " + table["eval_seeds"]
    return table.drop(columns=["identity", "config_name"])


def recipe_labels(table: pd.DataFrame) -> list[str]:
    """Per row: the config file it was made from, then ``key=value`` for every key in which its experiment
    differs from another row with the same visible columns, and a warning for an unfinished run."""
    labels = []
    for _, row in table.iterrows():
        identity = row["identity"]
        twins = table[(table[GROUP_COLUMNS] == row[GROUP_COLUMNS]).all(axis=1)]["identity"].tolist()
        keys = sorted({k for other in twins for k in {*other, *identity} if other.get(k) != identity.get(k)})
        parts = [row["config_name"]] + [f"{k}={json.dumps(identity.get(k), separators=(',', ':'))}"
                                               for k in keys]
        if identity.get("pretrain.unfinished"):
            parts.insert(0, f"UNFINISHED RUN ({identity['pretrain.unfinished']})")
        labels.append("; ".join(parts))
    return labels


def config_name(result: dict[str, Any]) -> str:
    """The config file a result's D was trained from (for a baseline: evaluated with), read off the command
    that did it; ``imported`` for a converted release, ``defaults`` when no ``--config`` was given. When that
    file, read today with the command's overrides, would build or train a different model than the result's
    stored config (for a baseline: pool or fit the SVM otherwise), because the file was changed since (as
    ``cifar10.toml`` was by issue 12), the row is named after a config file beside it that still gives the
    stored recipe (``cifar10_dcgan.toml (was cifar10.toml)``), or else ``as of`` the commit the command ran at,
    so an old row never borrows a newer recipe's name. A file that is gone is looked for the same way beside
    where it was (``cifar10.toml (was cifar10_deep.toml)`` once the candidate became the default); where nothing
    beside it matches (or there is no such folder here), the row keeps the name the command gave."""
    if result.get("checkpoint", {}).get("kind") == "imported":
        return "imported"
    command, commit = result.get("command") or "", result.get("git_commit") or ""
    if not result.get("baseline"):
        history = result["pretrain"].get("provenance") or [{}]
        first = history[0] if isinstance(history, list) else history
        command, commit = first.get("command") or "", first.get("git_commit") or ""
    words = shlex.split(command)
    named = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--config"]
    if not named:
        return "defaults"
    name = Path(named[-1]).name
    # A baseline's file gave its features and SVM (and, untrained, its architecture); a D's file its training.
    baseline = result.get("baseline")
    sections = (("features", "svm") if baseline == "pixels" else ("model", "features", "svm") if baseline
                else ("model", "train"))
    overrides, stored = _command_overrides(words), flat_config(result.get("config", {}))
    renamed = not Path(named[-1]).is_file()  # removed or renamed since; a folder beside it may still hold it
    if not renamed and not _file_now_differs(named[-1], overrides, stored, sections):
        return name
    kept = [other for other in sorted(Path(named[-1]).parent.glob("*.toml"))
            if not _file_now_differs(other, overrides, stored, sections)]
    if kept:  # the recipe lives on under another name beside it
        return f"{kept[0].name} (was {name})"
    return name if renamed else f"{name} as of {commit[:7] or 'an unknown commit'}"


# The pretrain and evaluate flags that override config keys (the rest are where and how to run, or --set).
_CONFIG_FLAGS = {"--epochs": "train.epochs", "--batch-size": "train.batch_size", "--dataset": "data.dataset",
                 "--svm": "svm.solver", "--bn-stats": "features.bn_stats"}


def _command_overrides(words: list[str]) -> dict[str, Any]:
    """The config overrides a recorded command line gave: its ``--set`` pairs and the flags in ``_CONFIG_FLAGS``."""
    overrides: dict[str, Any] = {}
    for flag, value in zip(words, words[1:]):
        if flag == "--set":
            key, parsed = parse_set_option(value)
            overrides[key] = parsed
        elif flag in _CONFIG_FLAGS:
            overrides[_CONFIG_FLAGS[flag]] = int(value) if value.isdigit() else value
    return overrides


def _file_now_differs(path: str | Path, overrides: dict[str, Any], stored: dict[str, Any],
                      sections: tuple[str, ...]) -> bool:
    """Whether the config file at ``path`` (relative to the working directory; a missing file tells nothing),
    with ``overrides``, now differs from the flat ``stored`` config in the experiment keys of ``sections`` (the
    training length aside: a resumed run may change it)."""
    if not sections or not Path(path).is_file():
        return False
    try:
        now = flat_config(load_config(path, overrides).to_dict())
    except UserError:
        return True
    return any(now[k] != stored.get(k) for k in now if k.split(".")[0] in sections
               and k not in NOT_EXPERIMENT_KEYS and k != "train.epochs"
               and not (k in MACHINE_SETTLED_KEYS and now[k] == "auto"))  # "auto" became what the machine ran


# Radford, Metz & Chintala (2015), Tables 1 and 2, shown beside our rows and never computed here.
PAPER_REFERENCE = [
    {"pretrain_data": "PAPER (reference, not run here): ImageNet-1k", "architecture": "paper DCGAN, 28,672-d",
     "eval_dataset": "cifar10", "transfer": "yes", "protocol": "full", "bn_stats": "", "recipe": "",
     "accuracy (%)": "82.80", "draw std": "", "n": "", "seeds (pretrain / eval)": "", "feature_dim": "28672"},
    {"pretrain_data": "PAPER (reference, not run here): ImageNet-1k", "architecture": "paper DCGAN, 28,672-d",
     "eval_dataset": "cifar10", "transfer": "yes", "protocol": "per-class-400", "bn_stats": "", "recipe": "",
     "accuracy (%)": "73.80", "draw std": "0.40", "n": "", "seeds (pretrain / eval)": "", "feature_dim": "28672"},
    {"pretrain_data": "PAPER (reference, not run here): SVHN", "architecture": "paper SVHN DCGAN",
     "eval_dataset": "svhn", "transfer": "no", "protocol": "svhn-1000-labels", "bn_stats": "data", "recipe": "",
     "accuracy (%)": "77.52 (22.48% error)", "draw std": "", "n": "",
     "seeds (pretrain / eval)": "", "feature_dim": "7168"},
]


REPORT_FOOTNOTE = ("Test accuracy; ± is the sample standard deviation over the n results (seeds) in the row; "
                   "draw std is the mean standard deviation over label draws within a result. C was chosen on a "
                   "validation split of the training set in every row.")
README_MARKERS = ("<!-- report:begin -->", "<!-- report:end -->")


def write_report(results_dir: str | Path, out_dir: str | Path | None = None,
                 readme: str | Path | None = None) -> tuple[str, Path, Path]:
    """Render the report as Markdown and CSV next to the results (or in ``out_dir``), and optionally
    into ``readme`` between its ``<!-- report:begin -->`` and ``<!-- report:end -->`` lines."""
    table = report_table(load_results(results_dir))
    out_dir = Path(out_dir or results_dir)
    columns = GROUP_COLUMNS + ["recipe", "accuracy (%)", "draw std", "n", "seeds (pretrain / eval)", "feature_dim"]
    shown = pd.concat([table[columns].astype(str), pd.DataFrame(PAPER_REFERENCE)[columns]], ignore_index=True)
    markdown = shown.to_markdown(index=False, disable_numparse=True)
    body = f"{markdown}\n\n{REPORT_FOOTNOTE}"
    if readme is not None:
        render_into_readme(Path(readme), body)
    md_path, csv_path = out_dir / "report.md", out_dir / "report.csv"
    with atomic_path(md_path) as tmp:
        tmp.write_text(body + "\n")
    with atomic_path(csv_path) as tmp:
        table.drop(columns=["accuracy (%)", "draw std", "seeds (pretrain / eval)"]).to_csv(
            tmp, index=False, float_format="%.4f")
    return markdown, md_path, csv_path


def render_into_readme(readme: Path, text: str) -> None:
    """Replace the lines between the README's report marker lines (each alone on its line, so the
    markers can also be quoted in prose); everything else is kept byte for byte."""
    begin, end = README_MARKERS
    try:
        lines = readme.read_text().splitlines(keepends=True)
    except OSError as exc:
        raise UserError(f"cannot read {readme}: {exc.strerror}") from None
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise UserError(f"{readme} needs one '{begin}' line followed by one '{end}' line to render the report into")
    content = "".join(lines[:starts[0] + 1]) + text + "\n" + "".join(lines[ends[0]:])
    with atomic_path(readme) as tmp:
        tmp.write_text(content)


def read_result(path: str | Path) -> dict[str, Any]:
    return read_json(path)
