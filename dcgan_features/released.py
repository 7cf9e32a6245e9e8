"""``dcgan-features released``: the table of every committed discriminator a user can load.

One row per ``discriminator*.pt`` under a results folder: what it was trained on, its recipe and architecture,
the epochs behind it, its feature dimension, the test accuracy of every committed result that evaluated that very
file (by sha256, per protocol and read-out) and its sha256, which ``load_extractor(path, sha256=...)`` checks.
Like the report, it reads what the files hold and nothing else.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from .artifacts import atomic_path, sha256_file
from .checkpoint import load_checkpoint, load_discriminator
from .features import PoolingSpec
from .protocols import PROTOCOLS
from .records import architecture_name, epochs_trained, read_out, recipe_of
from .report import render_into_readme, scan_results, score, written_by

RELEASED_MARKERS = ("<!-- released:begin -->", "<!-- released:end -->")
COLUMNS = ["file", "trained on", "recipe", "architecture", "epochs", "features", "test accuracy (%)", "sha256"]


def committed_results(results_dir: Path) -> dict[str, list[str]]:
    """By checkpoint sha256: each committed test result (``"full 79.58"``, by protocol and read-out)."""
    scores: dict[str, list[str]] = defaultdict(list)
    for _, result in scan_results(results_dir):
        if result.get("baseline"):
            continue
        sha, shape = result["checkpoint"]["sha256"], read_out(result)
        if PROTOCOLS[result["protocol_kind"]].reads_test:
            scores[sha].append(f"{result['protocol']}{'' if shape == 'paper' else f' ({shape})'} {score(result):.2f}")
    return scores


def released_table(results_dir: str | Path) -> pd.DataFrame:
    """One row per committed discriminator file under ``results_dir``, in path order. The recipe is named as
    :func:`records.recipe_of` names it today, which follows the config files renamed or changed since training
    (its results may carry an older name)."""
    results_dir = Path(results_dir)
    scores = committed_results(results_dir)
    rows = []
    for path in sorted(results_dir.rglob("discriminator*.pt")):
        payload = load_checkpoint(path)
        discriminator, config = load_discriminator(payload, str(path))
        sha = sha256_file(path)
        which = {"probe": " (best probe)", "ema": " (EMA)"}.get(payload.get("selected_by"), "")
        rows.append({"file": f"`{path.as_posix()}`", "trained on": config.data.dataset,
                     "recipe": recipe_of(payload, None, None)["name"] + which,
                     "architecture": architecture_name(config.model), "epochs": epochs_trained(payload),
                     "features": PoolingSpec.from_config(config.features, discriminator).dimension(discriminator),
                     "test accuracy (%)": "; ".join(sorted(scores.get(sha, []))) or "-", "sha256": f"`{sha}`"})
    return pd.DataFrame(rows, columns=COLUMNS)


def write_released(results_dir: str | Path, readme: str | Path | None = None) -> tuple[str, Path]:
    """``released.md`` beside the results (and the table in ``readme`` between its released markers)."""
    table = released_table(results_dir)
    markdown = table.to_markdown(index=False, disable_numparse=True)
    if readme is not None:
        render_into_readme(Path(readme), markdown, RELEASED_MARKERS)
    command = ["released", results_dir, *(["--readme", readme] if readme else [])]
    files = f"{len(table)} discriminator file{'s' * (len(table) != 1)}"
    sources = f"the {files} under `{results_dir}` and the result files that scored them"
    path = Path(results_dir) / "released.md"
    with atomic_path(path) as tmp:
        tmp.write_text(f"{written_by(command, sources)}\n\n{markdown}\n")
    return markdown, path
