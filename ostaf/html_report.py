"""The run's report as one self-contained HTML page: the table, then per item its reference, mask, the
λ × seed grid of every prompt and its metric-vs-λ plot, every image embedded (no external assets), so the
same file opens from the KFP UI (`Output[HTML]`), from the parent MLflow run's artifacts, or from disk.

An item's visuals travel with its scores: the evaluate step copies them into its output folder
(`collect_visuals`), so the aggregate step, which only sees score folders, can build the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
from pathlib import Path

from PIL import Image

from ostaf.io import atomic_write, write_json
from ostaf.report import BEST_LAM_NOTE, NOT_COMPUTED, best_lambdas, missing_paper_metrics, table_keys
from ostaf.sweep import SweepIndex

VISUALS = "visuals"  # under each item's score folder: reference.png, mask.png, grid_<i>.png, prompts.json
PLOT = "metrics_vs_lambda.png"
PROMPTS = "prompts.json"
SCORES_FILE = "scores.json"  # an item's scored rows (written by `ostaf.steps.evaluate_item`)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.85rem; }
th, td { border: 1px solid #bbb; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
section.item { border-top: 2px solid #ddd; padding-top: 0.75rem; margin-top: 1.25rem; }
.pair img { height: 128px; image-rendering: pixelated; margin-right: 0.5rem; border: 1px solid #ccc; }
figure { margin: 0.5rem 0 1rem; }
figure img { max-width: 100%; image-rendering: pixelated; }
figcaption, .note { font-size: 0.9rem; color: #555; }
"""
# after load: how many embedded images decoded (the headless-browser test reads these from the DOM)
SCRIPT = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesDecoded = images.filter(i => i.complete && i.naturalWidth > 0).length;
});
"""


def grid_name(index: int) -> str:
    """A prompt's grid by its index: the same name in every item (MLflow's compare view pairs them)."""
    return f"grid_{index}.png"


def collect_visuals(images: str | Path, reference: str | Path, dest: str | Path) -> Path:
    """Copy an item's reference, mask and per-prompt grids into `dest/visuals/` (the report's inputs)."""
    folder = Path(dest) / VISUALS
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("reference.png", "mask.png"):
        if (Path(reference) / name).exists():
            shutil.copyfile(Path(reference) / name, folder / name)
    index = SweepIndex.read(images)
    prompts = list(dict.fromkeys(entry["prompt"] for entry in index.entries))
    for i, prompt in enumerate(prompts):
        shutil.copyfile(Path(images) / SweepIndex.grid_name(prompt), folder / grid_name(i))
    write_json(folder / PROMPTS, prompts)
    return folder


def _img(path: Path, alt: str, css: str = "", zoom: int = 1) -> str:
    """An embedded PNG; `zoom` shows small images (64 px world renders) that many times larger, pixels crisp."""
    raw = path.read_bytes()
    data = base64.b64encode(raw).decode("ascii")
    width = f' width="{min(Image.open(io.BytesIO(raw)).width * zoom, 1200)}"' if zoom > 1 else ""
    return f'<img class="{css}" alt="{html.escape(alt)}"{width} src="data:image/png;base64,{data}">'


def _table(table: list[dict], keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row.get(k, '–')))}</td>" for k in keys) + "</tr>" for row in table
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _item(folder: Path, rows: list[dict]) -> str:
    item = rows[0]["item"] if rows else folder.name
    attribute = rows[0]["attribute"] if rows else ""
    visuals = folder / VISUALS
    heading = f"{item} ({attribute})" if attribute else item  # an item without scored rows: its folder's name
    parts = [f'<section class="item" data-item="{html.escape(item)}"><h2>{html.escape(heading)}</h2>']
    best = best_lambdas(rows).get(item)
    if best is not None:
        parts.append(
            f'<p class="note">best λ = {best[0]:g} by {html.escape(best[1])} ({html.escape(BEST_LAM_NOTE[:-1])})</p>'
        )
    pair = [_img(visuals / n, f"{item} {n[:-4]}") for n in ("reference.png", "mask.png") if (visuals / n).exists()]
    parts.append(f'<div class="pair">{"".join(pair)}</div>')
    prompts = json.loads((visuals / PROMPTS).read_text()) if (visuals / PROMPTS).exists() else []
    for i, prompt in enumerate(prompts):
        grid = _img(visuals / grid_name(i), f"{item} grid {i}", "grid", zoom=2)
        parts.append(
            f"<figure>{grid}<figcaption>{i}: {html.escape(prompt)} (columns: λ, rows: seeds)</figcaption></figure>"
        )
    if (folder / PLOT).exists():
        plot = _img(folder / PLOT, f"{item} metrics vs λ", "plot")
        parts.append(f"<figure>{plot}<figcaption>metrics vs λ</figcaption></figure>")
    return "".join(parts) + "</section>"


def write_html(score_dirs: list[str], table: list[dict], lam: float, path: str | Path, title: str) -> Path:
    """The report page at `path` (written atomically)."""
    by_dir = [(Path(d), json.loads((Path(d) / SCORES_FILE).read_text())) for d in score_dirs]
    rows = [row for _, r in by_dir for row in r]
    keys = table_keys(table)
    note = f'<p class="note">{html.escape(NOT_COMPUTED)}</p>' if missing_paper_metrics(rows) else ""
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<h2>Results at λ = {lam:g}</h2>",
        _table(table, keys),
        note,
        *(_item(folder, item_rows) for folder, item_rows in by_dir),
    ]
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style><script>{SCRIPT}</script></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    return atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
