"""The ablation table (``dcgan-features ablations``): validation-protocol results, one row per recipe.

Every result of ``evaluate --protocol validation`` under a folder becomes part of a row; results whose
:func:`records.experiment_identity` is equal (the same recipe, pretraining length and evaluation) differ only in
their seeds and share one row, with the mean and sample std over pretraining seeds. What a row changed is not
written by hand: it is every key of the row's stored config (and the epochs it trained) that differs from a
reference config, so the table cannot describe a run as something it was not. No test label is read by anything
here: the validation protocol never loads the test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .artifacts import atomic_path
from .config import Config, load_config, read_config_file
from .errors import UserError
from .records import (
    CHECKS_DIR,
    NOT_EXPERIMENT_KEYS,
    TRAINING_SECTIONS,
    experiment_identity,
    file_gives,
    flat_config,
    identity_hash,
    result_epochs,
    unfinished,
)
from .report import RESULT_FILES_HOLD, scan_results, setting_label, written_by

CLOSE_CALL = 1.0  # points: rows this close to the best row need a second pretraining seed to be ranked

# The Markdown keeps what a reader compares; the whole config diff, the commands and commits are in the CSV.
COLUMNS = ["change", "epochs", "pretrain min", "features", "val acc (%)", "vs reference", "vs its file's D", "seeds"]
TAKEN_AT = "D taken at"  # begins the change part naming where an unfinished run's D was taken
SHORT_CHANGE = 48  # characters: a longer change is shown as its recipe's name and a footnote


def load_validation_results(folder: str | Path) -> list[dict[str, Any]]:
    """Every validation-protocol result JSON under ``folder`` (outside ``checks/`` folders)."""
    found = [result | {"file": str(path)} for path, result in scan_results(folder)
             if result["protocol_kind"] == "validation"]
    if not found:
        raise UserError(f"no validation-protocol results under {folder}; "
                        "make them with `dcgan-features evaluate --protocol validation`")
    return found


def changes(result: dict[str, Any], reference: Config) -> str:
    """The keys in which ``result``'s experiment differs from ``reference`` (a reference's ``"auto"`` matches any
    value: what the machine chose), as ``key=value``; the epochs it trained when they differ from the reference's
    epoch count, and an unfinished run's position."""
    ours, theirs = flat_config(result["config"]), flat_config(reference.to_dict())
    ignored = {*NOT_EXPERIMENT_KEYS, "train.epochs", "data.dataset"}
    keys = [k for k in ours if k not in ignored and not file_gives(theirs.get(k), ours[k])]
    parts = [setting_label(k, ours[k]) for k in keys]
    if result.get("baseline"):
        parts.insert(0, f"{result['baseline']} baseline")
    elif where := unfinished(result.get("checkpoint", {})):
        parts.append(f"{TAKEN_AT} {where} of a {ours['train.epochs']}-epoch run")
    selected_by = result.get("checkpoint", {}).get("selected_by")
    if selected_by in ("probe", "ema"):
        parts.append({"probe": "best-probe D", "ema": "EMA D"}[selected_by])
    return "; ".join(parts) or "reference"


def commands(result: dict[str, Any]) -> tuple[str, str]:
    """How to remake a row's result: the first pretraining command of its D, then the evaluation (the evaluation
    alone for a baseline); and the commits they ran at."""
    history = (result.get("pretrain") or {}).get("provenance") or []
    first = history[0] if isinstance(history, list) and history else history or {}
    evaluation, commit = result.get("command") or "?", (result.get("git_commit") or "?")[:7]
    if result.get("baseline") or not first:
        return evaluation, commit
    return f"{first.get('command') or '?'} && {evaluation}", f"{(first.get('git_commit') or '?')[:7]} / {commit}"


def config_files_beside(reference_path: str | Path) -> dict[str, Config]:
    """The config files in the reference's folder (``configs/*.toml``), as they read now, by file name; files this
    version cannot read are left out; none when the reference is not a TOML file (a run's ``config.json``)."""
    reference_path = Path(reference_path)
    if reference_path.suffix != ".toml":
        return {}
    files = {}
    for path in sorted(reference_path.parent.glob("*.toml")):
        try:
            files[path.name] = load_config(path)
        except UserError:
            continue
    return files


def nearest_config_file(result: dict[str, Any], files: dict[str, Config]) -> str | None:
    """``"NAME: CHANGE"`` for the config file from which ``result`` differs in the fewest keys (ties: the file its
    recipe is named after, then by name), CHANGE as :func:`changes` words it; None without files."""
    recipe_file = result["recipe"]["name"].split(" ")[0]
    ranked = sorted(((len(change.split("; ")) if change != "reference" else 0, name != recipe_file, name, change)
                     for name, config in files.items() for change in [changes(result, config)]))
    return f"{ranked[0][2]}: {ranked[0][3]}" if ranked else None


def stands_for_its_epochs(result: dict[str, Any]) -> bool:
    """Whether a D taken from an unfinished run at an epoch's end is what a run of that many epochs gives: so when
    its run decayed no learning rate (``train.lr_decay_epochs``, the one schedule that looks ahead to the last
    epoch), since a run extended with ``--epochs`` continues as if started with that count (tests/test_train.py)."""
    checkpoint = result.get("checkpoint", {})
    return (unfinished(checkpoint) is not None and checkpoint.get("step") == 0
            and flat_config(result["config"]).get("train.lr_decay_epochs", 0) == 0)


def nearest_parts(nearest: Any) -> tuple[str, str] | None:
    """The file name and the change of a :func:`nearest_config_file` string; None for a row without one."""
    if not isinstance(nearest, str):
        return None
    name, _, change = nearest.partition(": ")
    return name, change


def ablation_rows(results: list[dict[str, Any]], reference: Config,
                  config_files: dict[str, Config] | None = None) -> pd.DataFrame:
    """One row per experiment: mean and sample std of validation accuracy over its results, and their
    pretraining wall time, epochs, feature dimension, chosen C, commands and commits; with ``config_files``, the
    one each row is nearest to and the row's change from it (``nearest``)."""
    records = []
    for r in results:
        command, commit = commands(r)
        pretrain = r.get("pretrain") or {}
        records.append({
            "experiment": identity_hash(experiment_identity(r)), "change": changes(r, reference),
            "nearest": nearest_config_file(r, config_files or {}), "recipe": r["recipe"]["name"],
            "epochs": result_epochs(r), "train_s": pretrain.get("train_seconds"),
            "features": r["feature_dim"], "accuracy": 100 * r["validation_accuracy"], "C": r["chosen_C"],
            "pretrain_seed": pretrain.get("seed"), "seed": r["seed"], "whole_epochs": stands_for_its_epochs(r),
            "commit": commit, "command": command})
    table = pd.DataFrame(records).assign(paired=lambda t: paired_differences(t))
    repeated = table[table.duplicated(["experiment", "pretrain_seed", "seed"], keep=False)]
    if len(repeated):
        raise UserError(f"{len(repeated)} validation results repeat the same experiment and seeds "
                        f"({repeated['change'].iloc[0]}); keep one, or move the others into a '{CHECKS_DIR}/' folder")
    return table.groupby("experiment", sort=False).agg(
        change=("change", "first"), nearest=("nearest", "first"), recipe=("recipe", "first"),
        epochs=("epochs", "first"), train_s=("train_s", "mean"),
        features=("features", "first"), mean=("accuracy", "mean"), std=("accuracy", "std"), n=("accuracy", "size"),
        seeds=("pretrain_seed", _seed_list), eval_seeds=("seed", _seed_list),
        paired=("paired", "mean"), pairs=("paired", "count"),
        C=("C", lambda c: ",".join(f"{v:g}" for v in sorted(set(c)))), commit=("commit", "first"),
        command=("command", "first")).reset_index()


def shaping_and_read_out(change: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A change's parts that shape D (its ``data.``, ``model.`` and ``train.`` keys, where an unfinished run was
    taken, a baseline) and the rest: how that D was read out (``features.`` and ``svm.`` keys, EMA or best-probe D)."""
    parts = () if change == "reference" else tuple(change.split("; "))
    shaping = tuple(p for p in parts if p.startswith((*(f"{s}." for s in TRAINING_SECTIONS), TAKEN_AT))
                    or p.endswith(" baseline"))
    return shaping, tuple(p for p in parts if p not in shaping)


def paired_differences(records: pd.DataFrame) -> pd.Series:
    """Per result whose D was trained other than by the config file it is nearest to (the reference without
    files): its accuracy minus that of the file's own D read out the same way, trained for as many epochs with the
    same pretraining seed and evaluated with the same seed (so on the same validation split, which follows the
    evaluation seed); NaN without such a result. Averaging these compares two recipes seed by seed, where the rows'
    means may rest on different seeds and splits. The file's own D may be one taken from a longer run at the end
    of as many epochs, where that is the same computation (:func:`stands_for_its_epochs`)."""
    anchors, own_recipe = [], []
    for nearest, change, whole in zip(records["nearest"], records["change"], records["whole_epochs"]):
        name, from_file = nearest_parts(nearest) or ("reference", change)
        shaping, read_out = shaping_and_read_out(from_file)
        shaping = tuple(p for p in shaping if not (whole and p.startswith(TAKEN_AT)))
        anchors.append((name, read_out))
        own_recipe.append(not shaping)
    keys = [(*anchor, e, p, s) for anchor, e, p, s in
            zip(anchors, records["epochs"], records["pretrain_seed"], records["seed"])]
    base = {key: accuracy for key, accuracy, own in zip(keys, records["accuracy"], own_recipe) if own}
    return pd.Series([float("nan") if own else accuracy - base.get(key, float("nan"))
                      for key, accuracy, own in zip(keys, records["accuracy"], own_recipe)], index=records.index)


def _seed_list(seeds: pd.Series) -> str:
    return ",".join(str(v) for v in sorted({v for v in seeds if v is not None and v == v})) or "-"


def render_ablations(table: pd.DataFrame) -> pd.DataFrame:
    """The shown table: by training length, then best first; differences to the reference row; close calls resting
    on one result marked (within each training length)."""
    reference = table[table["change"] == "reference"]
    base = reference["mean"].iloc[0] if len(reference) else None
    shown = table.sort_values(["epochs", "mean"], ascending=False).copy()  # rows of one training length together
    best = shown.groupby("epochs", dropna=False)["mean"].transform("max")
    peers = shown.groupby("epochs", dropna=False)["mean"].transform("size")
    shown["val acc (%)"] = [f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}" + (" (1 seed, close call)"
                            if top - m < CLOSE_CALL and k > 1 else "")
                            for m, s, n, top, k in zip(shown["mean"], shown["std"], shown["n"], best, peers)]
    shown["vs reference"] = ["" if base is None else f"{m - base:+.2f}" for m in shown["mean"]]
    shown["vs its file's D"] = [f"{d:+.2f} ({n} pair{'s' if n > 1 else ''})" if n else ""
                                for d, n in zip(shown["paired"], shown["pairs"])]
    shown["pretrain min"] = [f"{s / 60:.1f}" if s == s and s is not None else "-" for s in shown["train_s"]]
    shown["seeds"] = shown["seeds"] + " / " + shown.pop("eval_seeds")
    shown["epochs"] = [str(int(e)) if e == e and e is not None else "-" for e in shown["epochs"]]
    return shown


FOOTNOTE = ("Validation accuracy (%) of the full protocol's C sweep on a stratified 45,000 / 5,000 split of the "
            "CIFAR-10 training set (`evaluate --protocol validation`); no test image was read. `change` lists the "
            "config keys in which a row differs from the reference config; ± is the sample std over the row's "
            "results, whose pretraining / evaluation seeds `seeds` lists. Rows are grouped by training length; "
            "rows within {close} point of the best of their length that rest on one result are marked: not ranked "
            "yet. `pretrain min` is the training wall time recorded in the checkpoint. A change too long for the "
            "table shows the config file beside the reference from which the row differs in the fewest keys (as "
            "the file reads now) and the names of those keys, and is spelt out in its numbered note; a reference's "
            "`\"auto\"` matches what the machine chose. The CSV beside this file holds every row's whole change, "
            "chosen C, commands and commits (pretraining / evaluation). `vs its file's D` compares a row whose D was "
            "trained differently from the config file it is nearest to with that file's own D, read out the same "
            "way (or with that file's D taken from a longer run at the end of as many epochs, the same computation "
            "where no learning-rate decay looks ahead): the mean difference over the (pretraining seed, evaluation "
            "seed) pairs both rows hold, as the validation split follows the evaluation seed; blank where they "
            "share none.")


def short_changes(shown: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Per row, the change as the Markdown shows it: itself when short; else the config file it is nearest to and the
    names of the keys in which it differs from that file (``nearest``, when the table has it); else, beside a row of
    the same pretraining made without ``--set`` (else the one with the fewest changes: its base), the base's recipe
    name and the keys in which the row differs from it ("no KEY" for a key back at the reference's value); for a
    base itself, the names of the keys it changed (as many as fit, then how many more). Long changes get a footnote
    that spells them out."""
    parts = [change.split("; ") for change in shown["change"]]
    pretraining = [(epochs, *(p for p in row if p.startswith(("model.", "train."))))
                   for epochs, row in zip(shown["epochs"], parts)]
    # A row made without --set is its recipe as the file has it: the preferred base, then the fewest changes.
    rank = [("--set" in command, len(row)) for command, row in zip(shown["command"], parts)]
    bases: dict[tuple, int] = {}
    for i, key in enumerate(pretraining):
        if key not in bases or rank[i] < rank[bases[key]]:
            bases[key] = i
    shorts, notes = [], []
    for i, change in enumerate(shown["change"]):
        if len(change) <= SHORT_CHANGE:
            shorts.append(change)
            continue
        notes.append(f"[{len(notes) + 1}] {change}")
        if nearest := nearest_parts(shown["nearest"].iloc[i] if "nearest" in shown else None):
            name, from_file = nearest
            added = "" if from_file == "reference" else " + " + ", ".join(_key_names(from_file.split("; ")))
            shorts.append(f"{name}{added} [{len(notes)}]")
            continue
        base = bases[pretraining[i]]
        if base != i and len(pretraining[i]) > 1:
            added = _key_names([part for part in parts[i] if part not in parts[base]])
            dropped = [f"no {name}" for name in _key_names([part for part in parts[base] if part not in parts[i]])
                       if name not in added]  # a key back at the reference's value
            shorts.append(f"{shown['recipe'].iloc[base]} + {', '.join(added + dropped)} [{len(notes)}]")
            continue
        names = _key_names(parts[i])
        fit = next(k for k in range(len(names), 0, -1) if len(", ".join(names[:k])) <= SHORT_CHANGE - 12 or k == 1)
        more = f" +{len(names) - fit}" if fit < len(names) else ""
        shorts.append(f"{', '.join(names[:fit])}{more} [{len(notes)}]")
    return shorts, notes


def _key_names(parts: list[str]) -> list[str]:
    """``["svm.score_hflip=true", "best-probe D"]`` -> ``["score_hflip", "best-probe D"]``."""
    return [part.split("=")[0].split(".")[-1] if "=" in part else part for part in parts]


def write_ablations(folder: str | Path, reference_path: str | Path, out_stem: str | Path) -> tuple[str, Path, Path]:
    """Write ``<out_stem>.md`` (readable: short names, footnotes) and ``<out_stem>.csv`` (everything, with the
    whole change, the commands and the commits) from the validation results under ``folder``."""
    reference = Config.from_dict(read_config_file(reference_path), str(reference_path))
    results = load_validation_results(folder)
    shown = render_ablations(ablation_rows(results, reference, config_files_beside(reference_path)))
    short, notes = short_changes(shown)
    markdown = shown[COLUMNS].assign(change=short).to_markdown(index=False, disable_numparse=True)
    footnotes = "".join(f"\n\n{note}" for note in notes)
    command = ["ablations", folder, "--reference", reference_path, "--out", out_stem]
    sources = f"{len(results)} validation result files under `{folder}` ({RESULT_FILES_HOLD})"
    body = (f"{written_by(command, sources)} Reference config: `{reference_path}`.\n\n{markdown}{footnotes}\n\n"
            f"{FOOTNOTE.format(close=CLOSE_CALL)}")
    out_stem = Path(out_stem)
    md_path, csv_path = out_stem.with_suffix(".md"), out_stem.with_suffix(".csv")
    with atomic_path(md_path) as tmp:
        tmp.write_text(body + "\n")
    with atomic_path(csv_path) as tmp:
        shown.drop(columns=["val acc (%)"]).to_csv(tmp, index=False, float_format="%.4f")
    return markdown, md_path, csv_path
