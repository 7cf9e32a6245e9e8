"""A page per run (``analyse run-page``): training curves, the sample grids over the epochs (and an animated
GIF), the config and provenance, and the evaluation results found for the run's checkpoints.

Two renderings of the same content: ``index.html``, self-contained (images embedded, so it can be mailed or
opened from anywhere), and ``index.md``, which links the image files written beside it.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from pathlib import Path

import pandas as pd

from ..artifacts import atomic_path, provenance, sha256_file
from ..checkpoint import BEST_PROBE_FILE, DISCRIMINATOR_FILE, EMA_FILE, TRAINING_FILE, load_checkpoint
from ..errors import UserError
from ..report import checkpoint_results
from .common import pyplot, save_figure

CURVES = [("losses", ["loss_d", "loss_g"]), ("D outputs", ["d_x", "d_g_z"]), ("throughput", ["img_per_s"]),
          ("online probe", ["probe_accuracy"])]
SHOWN_GRIDS = 4  # sample grids copied beside the page: the first, the last and evenly spaced ones between
GIF_FRAMES = 12  # at most this many epochs' grids in the animation (photographs compress badly as GIF)


def read_metrics(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} holds no metrics.jsonl: give a run directory made by `pretrain`")
    rows, lines = [], path.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            if number == len(lines):
                continue  # the last line cut short by a kill: the run resumes before it
            raise UserError(f"{path} line {number} is not JSON: the file is corrupt") from None
        if not isinstance(row, dict):
            raise UserError(f"{path} line {number} is not a metrics record")
        rows.append(row)
    if not rows:
        raise UserError(f"{path} holds no metrics yet: the run has not logged a step")
    return pd.DataFrame(rows)


def curves_figure(metrics: pd.DataFrame, path: Path) -> Path:
    """One panel per logged quantity group, against the global step."""
    plt = pyplot()
    panels = [(title, [k for k in keys if k in metrics]) for title, keys in CURVES]
    panels = [(title, keys) for title, keys in panels if keys and metrics[keys].notna().any().any()]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            series = metrics[["global_step", key]].dropna()
            ax.plot(series["global_step"], series[key], label=key, marker="o" if key == "probe_accuracy" else None,
                    linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def sample_grids(run_dir: Path, out_dir: Path) -> tuple[list[Path], Path | None]:
    """Copies of a few epochs' sample grids beside the page, and an animated GIF of all of them."""
    from PIL import Image

    grids = sorted((run_dir / "samples").glob("epoch_*.png"))
    if not grids:
        return [], None
    step = max(1, (len(grids) - 1) // (SHOWN_GRIDS - 1))
    chosen = sorted({*grids[::step], grids[-1]})
    copies = []
    for grid in chosen:
        copies.append(out_dir / f"samples_{grid.name}")
        shutil.copyfile(grid, copies[-1])
    every = grids[::max(1, -(-len(grids) // GIF_FRAMES))]
    frames = [Image.open(grid).convert("RGB") for grid in sorted({*every, grids[-1]})]
    gif = out_dir / "samples.gif"
    with atomic_path(gif) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=500, loop=0,
                       optimize=True)
    return copies, gif


def results_for(run_dir: Path, results_dirs: list[Path]) -> pd.DataFrame:
    """Every result file under ``results_dirs`` that evaluated one of the run's checkpoint files."""
    names = (DISCRIMINATOR_FILE, BEST_PROBE_FILE, EMA_FILE, TRAINING_FILE)
    hashes = {sha256_file(run_dir / name): name for name in names if (run_dir / name).is_file()}
    return checkpoint_results(hashes, results_dirs)


def run_record(run_dir: Path) -> dict:
    """The run's config, where training stands and its provenance, from the newest checkpoint file."""
    for name in (DISCRIMINATOR_FILE, TRAINING_FILE):
        if (run_dir / name).is_file():
            payload = load_checkpoint(run_dir / name)
            return {"file": name, "config": payload["config"], "epoch": payload.get("epoch"),
                    "global_step": payload.get("global_step"), "train_seconds": payload.get("train_seconds"),
                    "provenance": payload.get("provenance")}
    raise UserError(f"{run_dir} holds no {DISCRIMINATOR_FILE} or {TRAINING_FILE}")


def write_run_page(run_dir: str | Path, out_dir: str | Path, results_dirs: list[str | Path] = ()) -> dict:
    """Write ``index.html`` and ``index.md`` (and their images) for the run in ``run_dir`` into ``out_dir``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    metrics, record = read_metrics(run_dir), run_record(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = curves_figure(metrics, out_dir / "curves.png")
    grids, gif = sample_grids(run_dir, out_dir)
    results = results_for(run_dir, [Path(p) for p in results_dirs])
    images = [("training curves", curves)] + ([("sample grids over the epochs (animated)", gif)] if gif else []) + \
        [(f"samples after {g.stem.removeprefix('samples_').replace('_', ' ')}", g) for g in grids]
    sections = {"run": run_dir.name, "record": record, "results": results, "images": images}
    markdown, page = render_markdown(sections), render_html(sections)
    for name, text in (("index.md", markdown), ("index.html", page)):
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text)
    made = {"run": str(run_dir), "pages": ["index.html", "index.md"], "images": [p.name for _, p in images],
            "results": len(results), **provenance()}
    with atomic_path(out_dir / "page.json") as tmp:
        tmp.write_text(json.dumps(made, indent=2) + "\n")
    return made


def _facts(record: dict) -> list[tuple[str, str]]:
    history = record.get("provenance") or []
    history = history if isinstance(history, list) else [history]
    facts = [("checkpoint", record["file"]), ("epochs trained", str(record.get("epoch"))),
             ("steps", str(record.get("global_step"))),
             ("training wall time", f"{(record.get('train_seconds') or 0) / 60:.1f} min")]
    for i, entry in enumerate(history):
        facts.append((f"process {i + 1}", f"{entry.get('command')} (commit {str(entry.get('git_commit'))[:7]}, "
                                          f"{entry.get('created')}, {entry.get('cpu', entry.get('machine'))})"))
    return facts


def render_markdown(sections: dict) -> str:
    lines = [f"# Run {sections['run']}", ""]
    lines += [f"- **{k}**: {v}" for k, v in _facts(sections["record"])] + [""]
    for caption, path in sections["images"]:
        lines += [f"## {caption}", "", f"![{caption}]({path.name})", ""]
    lines += ["## Evaluation results", ""]
    results = sections["results"]
    lines += [results.to_markdown(index=False) if len(results) else "No evaluation result found for this run.", ""]
    lines += ["## Config", "", "```json", json.dumps(sections["record"]["config"], indent=2), "```", ""]
    return "\n".join(lines)


def render_html(sections: dict) -> str:
    def embedded(path: Path) -> str:
        kind = "gif" if path.suffix == ".gif" else "png"
        return f"data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"

    body = [f"<h1>Run {html.escape(sections['run'])}</h1>", "<table>"]
    body += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _facts(sections["record"])]
    body += ["</table>"]
    for caption, path in sections["images"]:
        size = "" if path.name == "curves.png" else ' class="grid"'  # sample grids are drawn at twice their size
        body += [f"<h2>{html.escape(caption)}</h2>",
                 f'<img{size} src="{embedded(path)}" alt="{html.escape(caption)}" title="{html.escape(path.name)}">']
    results = sections["results"]
    body += ["<h2>Evaluation results</h2>",
             results.to_html(index=False, border=0) if len(results) else "<p>No evaluation result found.</p>"]
    body += ["<h2>Config</h2>", f"<pre>{html.escape(json.dumps(sections['record']['config'], indent=2))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}img{max-width:100%;"
             "image-rendering:pixelated}img.grid{width:548px}table{border-collapse:collapse}"
             "td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #ddd;font-size:13px}"
             "pre{background:#f6f6f6;padding:1em;font-size:12px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Run {html.escape(sections['run'])}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
