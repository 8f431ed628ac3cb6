"""The HTML report: one self-contained page (table, and per item its reference, mask, every prompt's grid and the
metric-vs-λ plot), checked in a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ostaf.images import make_grid
from ostaf.preprocess import preprocess
from ostaf.report import best_lambda
from ostaf.steps import ITEM_FILE, REPORT_HTML, aggregate, evaluate_item
from ostaf.sweep import PromptResult, write_sweep
from ostaf.world.generator import render
from ostaf.world.references import benchmark_item, references

LAMS, SEEDS = (0.0, 1.0), (0, 1)
INSTALL = "install it with `apt-get install -y chromium` (what `make test` does when it is missing)"


def scored_item(tmp_path: Path, ref, prompts: int) -> Path:
    """An evaluated item as the pipeline leaves it: a λ × seed sweep per prompt (world renders stand in for
    generations) scored into its own folder."""
    item = benchmark_item(ref, prompts)
    world = ref.world()
    Image.fromarray(world.image).save(tmp_path / f"{ref.id}.png")
    reference = preprocess(tmp_path / f"{ref.id}.png", ref.attribute, 64, 1, 0, None).save(tmp_path / f"ref-{ref.id}")
    (reference / ITEM_FILE).write_text(json.dumps(item))
    results = []
    for p, prompt in enumerate(item["prompts"]):
        images = {
            (lam, seed): Image.fromarray(render(replace(world.factors, scale=0.2 + 0.05 * (p + seed))).image)
            for lam in LAMS
            for seed in SEEDS
        }
        rows = [[images[(lam, s)] for lam in LAMS] for s in SEEDS]  # as `ostaf generate` lays a grid out
        grid = make_grid(rows, [f"lam={lam:g}" for lam in LAMS], [f"seed {s}" for s in SEEDS])
        results.append(PromptResult(prompt, images, grid))
    write_sweep(tmp_path / f"images-{ref.id}", results, {})
    dest = tmp_path / f"scores-{ref.id}"
    evaluate_item(str(tmp_path / f"images-{ref.id}"), str(reference), "attribute-world", {}, "", str(dest))
    return dest


@pytest.fixture
def report(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """Made for each test (2–3 s): a mutation tester maps each test to the report code it runs."""
    tmp_path = tmp_path_factory.mktemp("report")
    shape, look = references(1, attributes=("shape",))[0], references(1, attributes=("appearance",))[0]
    prompts = {shape.id: 2, look.id: 3}
    dirs = [scored_item(tmp_path, ref, prompts[ref.id]) for ref in (shape, look)]
    aggregate([str(d) for d in dirs], "", str(tmp_path / "report"))
    return tmp_path / "report" / REPORT_HTML, prompts


def test_the_report_is_one_self_contained_page_with_every_item(report):
    page, prompts = report
    text = page.read_text()
    sources = re.findall(r'src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing fetched from anywhere
    assert "<link" not in text and "http" not in text.replace("http-equiv", "")
    for item, count in prompts.items():
        section = text.split(f'data-item="{item}"')[1].split("</section>")[0]
        assert section.count('class="grid"') == count  # every prompt's λ × seed grid
        assert f'alt="{item} reference"' in section and f'alt="{item} mask"' in section
        assert 'class="plot"' in section
    assert "shape_match" in text and "appearance_match" in text  # the results table, exact metrics in it
    assert "n/a (no weights" in text  # the stand-in metrics are said to be missing, not shown
    assert text.count("best λ = ") == len(prompts)  # per item, by the table's rule


def test_every_embedded_image_is_its_file_and_the_table_is_the_aggregates(report):
    """Pinned by value, not by count: each embedded PNG is byte for byte the file it stands for (reference, mask,
    each prompt's grid under its own prompt's caption, the plot), shown at twice the size of a 64 px grid, and
    every cell of the page's table is the aggregate's `table.csv` cell."""
    import base64
    import csv
    import html

    from ostaf.html_report import PLOT, PROMPTS, VISUALS, grid_name
    from ostaf.sweep import SweepIndex

    page, prompts = report
    text = page.read_text()
    images = {
        alt: (width, src) for alt, width, src in re.findall(r'alt="([^"]*)"(?: width="(\d+)")? src="([^"]*)"', text)
    }
    for item in prompts:
        scores = page.parent.parent / f"scores-{item}"
        sweep = SweepIndex.read(page.parent.parent / f"images-{item}")
        files = {f"{item} reference": scores / VISUALS / "reference.png", f"{item} mask": scores / VISUALS / "mask.png"}
        files[f"{item} metrics vs λ"] = scores / PLOT
        captions = json.loads((scores / VISUALS / PROMPTS).read_text())
        for i, prompt in enumerate(captions):
            files[f"{item} grid {i}"] = scores / VISUALS / grid_name(i)
            # the grid shown as prompt i is that prompt's own sweep grid, and its caption names that prompt
            grid_bytes = (page.parent.parent / f"images-{item}" / SweepIndex.grid_name(prompt)).read_bytes()
            assert files[f"{item} grid {i}"].read_bytes() == grid_bytes
            section = text.split(f'data-item="{item}"')[1].split("</section>")[0]
            assert f'alt="{item} grid {i}"' in section.split(f"{i}: {html.escape(prompt)}")[0].rsplit("<figure>", 1)[1]
            width = images[f"{item} grid {i}"][0]
            assert int(width) == min(2 * Image.open(files[f"{item} grid {i}"]).width, 1200)
        assert len(captions) == prompts[item] and len({e["prompt"] for e in sweep.entries}) == prompts[item]
        for alt, path in files.items():
            encoded = images[alt][1].removeprefix("data:image/png;base64,")
            assert base64.b64decode(encoded) == path.read_bytes(), alt
    table = text.split("<table>")[1].split("</table>")[0]
    head = re.findall(r"<th>([^<]*)</th>", table)
    cells = [re.findall(r"<td>([^<]*)</td>", row) for row in re.findall(r"<tr>((?:<td>.*?</td>)+)</tr>", table)]
    with open(page.parent / "table.csv", newline="") as f:
        expected = list(csv.DictReader(f))
    assert head == list(expected[0]) and len(cells) == len(expected)
    for row, want in zip(cells, expected, strict=True):
        for cell, key in zip(row, head, strict=True):
            value = html.unescape(cell)
            assert value == want[key] or (want[key] == "" and value == "–") or float(value) == float(want[key]), key


def test_the_page_has_no_stray_text_and_each_item_says_what_it_is(report):
    """Every piece of text sits in a heading, note, caption or table cell (nothing leaks between elements); each
    item's heading names its attribute, its best-λ note quotes the table's rule, and only the grids are zoomed."""
    import html
    from html.parser import HTMLParser

    from ostaf.report import BEST_LAM_NOTE

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []
            self.stray: list[tuple[str, str]] = []

        def handle_starttag(self, tag, attrs):
            if tag not in ("img", "meta"):
                self.stack.append(tag)

        def handle_endtag(self, tag):
            if self.stack and self.stack[-1] == tag:
                self.stack.pop()

        def handle_data(self, data):
            if data.strip() and self.stack[-1] not in (
                "title",
                "style",
                "script",
                "h1",
                "h2",
                "p",
                "figcaption",
                "th",
                "td",
            ):
                self.stray.append((self.stack[-1], data))

    page, prompts = report
    text = page.read_text()
    parser = Text()
    parser.feed(text)
    assert parser.stray == [] and parser.stack == []  # and every element closed
    for item in prompts:
        section = text.split(f'data-item="{item}"')[1].split("</section>")[0]
        attribute = json.loads((page.parent.parent / f"scores-{item}" / "scores.json").read_text())[0]["attribute"]
        assert f"<h2>{item} ({attribute})</h2>" in section
        assert f"({html.escape(BEST_LAM_NOTE[:-1])})</p>" in section
        for alt in (f"{item} reference", f"{item} mask", f"{item} metrics vs λ"):
            assert re.search(f'alt="{alt}" src=', section), alt  # shown at their own size: no width


def test_the_missing_metrics_note_appears_only_when_they_are_missing(tmp_path):
    from ostaf.html_report import write_html
    from ostaf.report import COLUMNS, NOT_COMPUTED

    folder = tmp_path / "scores-x"
    folder.mkdir()
    computed = {m: 0.5 for m in COLUMNS["shape"]}
    for rows, shown in (([{"item": "x", "attribute": "shape", "lam": 1.0} | computed], False), ([], True)):
        (folder / "scores.json").write_text(json.dumps(rows or [{"item": "x", "attribute": "shape", "lam": 1.0}]))
        page = write_html([str(folder)], [], 1.0, tmp_path / "r.html", "t").read_text()
        assert (NOT_COMPUTED.split(":")[0] in page) is shown
        assert ("</table><section" in page) is not shown  # no note: nothing between the table and the items


def test_an_item_without_scored_rows_is_named_by_its_folder(tmp_path):
    from ostaf.html_report import write_html

    folder = tmp_path / "scores-lost-item"
    folder.mkdir()
    (folder / "scores.json").write_text("[]")
    page = write_html([str(folder)], [], 1.0, tmp_path / "r.html", "t").read_text()
    assert '<section class="item" data-item="scores-lost-item"><h2>scores-lost-item</h2>' in page


def test_visuals_are_collected_into_a_new_folder_and_again_on_a_rerun(tmp_path):
    """`collect_visuals` makes its destination's parents and a retried evaluate task writes over its own files."""
    from ostaf.html_report import PROMPTS, VISUALS, collect_visuals

    ref = references(1, attributes=("shape",))[0]
    scored_item(tmp_path, ref, 2)
    dest = tmp_path / "not" / "yet" / "there"
    for _ in range(2):
        folder = collect_visuals(tmp_path / f"images-{ref.id}", tmp_path / f"ref-{ref.id}", dest)
    assert folder == dest / VISUALS and len(json.loads((folder / PROMPTS).read_text())) == 2


def test_a_zoomed_image_is_shown_at_most_1200_px_wide(tmp_path):
    from ostaf.html_report import _img

    for width, shown in ((500, 1000), (600, 1200), (700, 1200)):
        Image.new("RGB", (width, 10)).save(tmp_path / "g.png")
        assert f' width="{shown}"' in _img(tmp_path / "g.png", "g", "grid", zoom=2)
    assert " width=" not in _img(tmp_path / "g.png", "g")  # unzoomed: the image's own size


def test_the_best_lambda_is_the_strongest_attribute_that_keeps_the_prompt():
    means = {
        0.0: {"shape_match": 0.2, "text_control": 1.0},
        0.5: {"shape_match": 0.8, "text_control": 0.95},
        1.0: {"shape_match": 1.0, "text_control": 0.5},  # strongest, but the prompt is lost
    }
    assert best_lambda(means, "shape") == (0.5, "shape_match")
    no_text = {lam: {"shape_match": m["shape_match"]} for lam, m in means.items()}
    assert best_lambda(no_text, "shape") == (1.0, "shape_match")
    grams = {0.0: {"gram": 3.0, "clip_t": 0.3}, 1.0: {"gram": 1.0, "clip_t": 0.29}}  # a Gram distance: lower wins
    assert best_lambda(grams, "style") == (1.0, "gram")
    assert best_lambda({0.0: {"clip_t": 0.3}}, "shape") is None


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        pytest.fail(f"the HTML report test needs a headless Chromium and none is on PATH: {INSTALL}")
    return found


def browser(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=5000"]
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def test_the_report_renders_in_headless_chromium_with_every_image_decoded(report, tmp_path):
    page, prompts = report
    dom = browser("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    expected = sum(count + 3 for count in prompts.values())  # grids + reference, mask and plot per item
    assert f'data-images-total="{expected}"' in dom.stdout
    assert f'data-images-decoded="{expected}"' in dom.stdout  # every embedded PNG decoded: none broken
    assert all(f'data-item="{item}"' in dom.stdout for item in prompts)

    shot = tmp_path / "report.png"
    result = browser(f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1400, 1000)
    assert pixels.std() > 10  # the page drew something (a blank page is one flat colour)


def test_a_users_image_without_metric_weights_is_scored_as_nothing_not_a_crash(tmp_path):
    """The personalization pipeline on tiny: no exact world metrics and no real CLIP/DINO/VGG/SAM."""
    from ostaf.steps import reference_item

    ref = references(1, attributes=("appearance",))[0]
    Image.fromarray(ref.world().image).save(tmp_path / "me.png")
    item = reference_item(str(tmp_path / "me.png"), "appearance", "ball", ["a cup in the appearance of *a"])
    reference = preprocess(tmp_path / "me.png", "appearance", 64, 1, 0, None).save(tmp_path / "ref")
    (reference / ITEM_FILE).write_text(json.dumps(item.model_dump(mode="json")))
    image = Image.fromarray(ref.world().image)
    write_sweep(tmp_path / "images", [PromptResult(item.prompts[0], {(1.0, 0): image}, image)], {})
    scores = tmp_path / "scores"
    assert evaluate_item(str(tmp_path / "images"), str(reference), "tiny", {}, "", str(scores)) == {}
    aggregate([str(scores)], "", str(tmp_path / "report"))
    assert "n/a (no weights" in (tmp_path / "report" / REPORT_HTML).read_text()
