"""The report (``dcgan-features report``), a pure reader of result files.

One scanner (:func:`scan_results`) finds the result files under a folder with one error policy: a file that is
not readable JSON, or that claims to be a result and is not a complete one, is an error that names it, never a
gap in a table and never a traceback. The report, the ablation table (``ablations``) and the run page's results
are all built from what it yields, each row from what its result file recorded when it was written
(``records``): nothing here depends on the working directory or re-reads a config file.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .artifacts import atomic_path
from .errors import UserError
from .protocols import PROTOCOLS
from .records import (
    CHECKS_DIR,
    experiment_identity,
    identity_hash,
    is_result,
    known_pretrain_seed,
    read_out,
    upgrade,
)

GROUP_COLUMNS = ["pretrain_data", "architecture", "eval_dataset", "transfer", "protocol", "read-out", "bn_stats"]


def scan_results(folder: str | Path, include_checks: bool = False) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every result file under ``folder`` (other JSON files passed over), upgraded, with its path, in path order;
    those under a ``checks/`` folder only with ``include_checks``. A file that is not readable JSON, or a result
    that is incomplete or of an unknown schema or protocol, is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder {folder} does not exist")
    for path in sorted(folder.rglob("*.json")):
        if not include_checks and CHECKS_DIR in path.relative_to(folder).parts[:-1]:
            continue
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            raise UserError(f"{path} is not readable JSON; it may be truncated") from None
        if is_result(payload):
            yield path, upgrade(payload, path)


def score(result: dict[str, Any]) -> float:
    """The result's score in percent: test accuracy, or validation accuracy for a protocol that never reads test."""
    return 100 * result[PROTOCOLS[result["protocol_kind"]].score]


def load_results(results_dir: str | Path) -> pd.DataFrame:
    """Every result under ``results_dir`` as one row, except those under a ``checks/`` folder and those of
    protocols that never read test (they choose recipes; the report holds test accuracy only)."""
    rows = [report_row(path, result) for path, result in scan_results(results_dir)
            if PROTOCOLS[result["protocol_kind"]].reads_test]
    if not rows:
        raise UserError(f"no result files under {results_dir}")
    table = pd.DataFrame(rows)
    repeated = table[table.duplicated(["experiment", "pretrain_seed", "seed"], keep=False)]
    if len(repeated):
        raise UserError(f"{' and '.join(repeated['file'].head(2))} are the same experiment with the same seeds; "
                        f"averaging them would count one measurement twice: keep one, or move the other into a "
                        f"'{CHECKS_DIR}/' folder")
    return table


def report_row(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """One result as a row of the report's table."""
    identity = experiment_identity(result)
    return {"pretrain_data": result["pretrain"]["dataset"], "architecture": result["pretrain"]["architecture"],
            "eval_dataset": result["eval_dataset"], "protocol": result["protocol"], "transfer": _transfer(result),
            "read-out": read_out(result),
            "bn_stats": "-" if result.get("baseline") == "pixels" else result.get("bn_stats", "running"),
            "accuracy": score(result), "seed": result["seed"],
            "pretrain_seed": known_pretrain_seed(result["checkpoint"].get("kind"), result["pretrain"].get("seed")),
            "draw_std": 100 * result["test_accuracy_std"] if "test_accuracy_std" in result else None,
            "feature_dim": result["feature_dim"], "file": str(path), "identity": identity,
            "experiment": identity_hash(identity), "config_name": result["recipe"]["name"]}


def checkpoint_results(hashes: dict[str, str], folders: list[Path]) -> pd.DataFrame:
    """The run page's table: every result under ``folders`` (``checks/`` included) that evaluated one of the
    checkpoint files ``hashes`` names (sha256 -> file name)."""
    rows = []
    for folder in folders:
        for path, result in scan_results(folder, include_checks=True):
            if (sha := result["checkpoint"].get("sha256")) in hashes:
                kind = PROTOCOLS[result["protocol_kind"]]
                rows.append({"checkpoint": hashes[sha], "protocol": result["protocol"], "seed": result["seed"],
                             "accuracy (%)": f"{score(result):.2f}",
                             "measured on": "test" if kind.reads_test else "validation",
                             "C": f"k={result['chosen_k']}" if "chosen_k" in result else f"{result['chosen_C']:g}",
                             "features": result["feature_dim"], "file": str(path)})
    return pd.DataFrame(rows)


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
        parts = [row["config_name"]] + [setting_label(k, identity.get(k)) for k in keys]
        if identity.get("pretrain.unfinished"):
            parts.insert(0, f"UNFINISHED RUN ({identity['pretrain.unfinished']})")
        labels.append("; ".join(parts))
    return labels


# Keys whose 0 stands for another key's value: a label says which, since "train.lr_d=0.0" reads like a zero rate.
ZERO_MEANS = {"train.lr_d": "train.lr"}


def setting_label(key: str, value: Any) -> str:
    """``key=value`` as the report's and the ablation table's labels show a config setting."""
    if key in ZERO_MEANS and value == 0:
        return f"{key}={ZERO_MEANS[key]}"
    return f"{key}={json.dumps(value, separators=(',', ':'))}"


# Radford, Metz & Chintala (2015), Tables 1 and 2, shown beside our rows and never computed here.
PAPER_REFERENCE = [
    {"pretrain_data": "PAPER (reference, not run here): ImageNet-1k", "architecture": "paper DCGAN, 28,672-d",
     "eval_dataset": "cifar10", "transfer": "yes", "protocol": "full",
     "read-out": "paper", "bn_stats": "", "recipe": "",
     "accuracy (%)": "82.80", "draw std": "", "n": "", "seeds (pretrain / eval)": "", "feature_dim": "28672"},
    {"pretrain_data": "PAPER (reference, not run here): ImageNet-1k", "architecture": "paper DCGAN, 28,672-d",
     "eval_dataset": "cifar10", "transfer": "yes", "protocol": "per-class-400",
     "read-out": "paper", "bn_stats": "", "recipe": "",
     "accuracy (%)": "73.80", "draw std": "0.40", "n": "", "seeds (pretrain / eval)": "", "feature_dim": "28672"},
    {"pretrain_data": "PAPER (reference, not run here): SVHN", "architecture": "paper SVHN DCGAN",
     "eval_dataset": "svhn", "transfer": "no", "protocol": "svhn-1000-labels",
     "read-out": "paper", "bn_stats": "data", "recipe": "",
     "accuracy (%)": "77.52 (22.48% error)", "draw std": "", "n": "",
     "seeds (pretrain / eval)": "", "feature_dim": "7168"},
]


REPORT_FOOTNOTE = ("Test accuracy; ± is the sample standard deviation over the n results (seeds) in the row; "
                   "draw std is the mean standard deviation over label draws within a result. C was chosen on a "
                   "validation split of the training set in every row. read-out: paper = every block max-pooled "
                   "to one 4x4 grid and one view of each test image, as in the paper; other rows pool more grids or "
                   "score each image by the mean decision over it and its mirror (2 views), a different read-out "
                   "of the same D.")
README_MARKERS = ("<!-- report:begin -->", "<!-- report:end -->")


def write_report(results_dir: str | Path, out_dir: str | Path | None = None,
                 readme: str | Path | None = None) -> tuple[str, Path, Path]:
    """Render the report as Markdown and CSV next to the results (or in ``out_dir``), and optionally
    into ``readme`` between its ``<!-- report:begin -->`` and ``<!-- report:end -->`` lines."""
    command = ["report", results_dir, *(["--out", out_dir] if out_dir else []),
               *(["--readme", readme] if readme else [])]
    results = load_results(results_dir)
    table = report_table(results)
    out_dir = Path(out_dir or results_dir)
    columns = GROUP_COLUMNS + ["recipe", "accuracy (%)", "draw std", "n", "seeds (pretrain / eval)", "feature_dim"]
    shown = pd.concat([table[columns].astype(str), pd.DataFrame(PAPER_REFERENCE)[columns]], ignore_index=True)
    markdown = shown.to_markdown(index=False, disable_numparse=True)
    body = f"{markdown}\n\n{REPORT_FOOTNOTE}"
    if readme is not None:
        render_into_readme(Path(readme), body)
    md_path, csv_path = out_dir / "report.md", out_dir / "report.csv"
    with atomic_path(md_path) as tmp:
        sources = f"{len(results)} result files under `{results_dir}` ({RESULT_FILES_HOLD})"
        tmp.write_text(f"{written_by(command, sources)}\n\n{body}\n")
    with atomic_path(csv_path) as tmp:
        table.drop(columns=["accuracy (%)", "draw std", "seeds (pretrain / eval)"]).to_csv(
            tmp, index=False, float_format="%.4f")
    return markdown, md_path, csv_path


RESULT_FILES_HOLD = "each holds its commit, config, checkpoint sha256, seeds and command"


def written_by(arguments: list, sources: str) -> str:
    """The line a derived table's file opens with: the ``dcgan-features`` command that remakes it (``arguments``
    after the program's name, shell-quoted so that a path with spaces reruns verbatim), and what it was made from
    (the files that hold each row's provenance)."""
    return f"Written by `{shlex.join(['dcgan-features', *map(str, arguments)])}` from {sources}."


def render_into_readme(readme: Path, text: str, markers: tuple[str, str] = README_MARKERS) -> None:
    """Replace the lines between the README's marker lines (the report's unless ``markers`` says; each alone on
    its line, so the markers can also be quoted in prose); everything else is kept byte for byte."""
    begin, end = markers
    try:
        lines = readme.read_text().splitlines(keepends=True)
    except OSError as exc:
        raise UserError(f"cannot read {readme}: {exc.strerror}") from None
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise UserError(f"{readme} needs one '{begin}' line followed by one '{end}' line to render the table into")
    content = "".join(lines[:starts[0] + 1]) + text + "\n" + "".join(lines[ends[0]:])
    with atomic_path(readme) as tmp:
        tmp.write_text(content)
