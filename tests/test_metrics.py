"""Metric contracts with exact answers; random-weight networks stand in where only the code path matters."""

import numpy as np
import pytest

from ostaf.errors import OstafError
from ostaf.image_encoder import load_image_encoder
from ostaf.metric_models import load_dino, load_vgg_features
from ostaf.metrics import center_mask, clip_t, dino_similarity, gram_distance, mask_iou, strip_placeholder
from ostaf.report import paper_table, plot_curves, to_csv, to_markdown, write_table
from tests.conftest import synthetic_image


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("a cat in the shape of *m", "a cat"),
        ("a phone case in the appearance of *a", "a phone case"),
        ("a man snowboarding in the style of *s", "a man snowboarding"),
        ("a horse in the appearance of *a, grazing peacefully in the farm", "a horse, grazing peacefully in the farm"),
        ("a cat in the shape of *m in the appearance of *a", "a cat"),
    ],
)
def test_placeholder_phrase_is_stripped(prompt, expected):
    assert strip_placeholder(prompt) == expected


def disc(size=200, cx=100, cy=100, r=40):
    yy, xx = np.mgrid[:size, :size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r**2


def test_iou_with_itself_is_one_and_with_complement_zero():
    mask = disc()
    assert mask_iou(mask, mask) == 1.0
    assert mask_iou(mask, ~mask, center=False) == 0.0


def test_centring_makes_iou_translation_invariant():
    a, b = disc(cx=60, cy=70), disc(cx=140, cy=120)
    assert mask_iou(a, b, center=False) == 0.0
    assert mask_iou(a, b) == pytest.approx(1.0, abs=0.01)  # only nearest-resize aliasing (200 → 512 px) remains
    centred = center_mask(a)
    ys, xs = np.nonzero(centred)
    assert abs(ys.mean() - 255.5) <= 1 and abs(xs.mean() - 255.5) <= 1


def test_iou_of_known_overlap():
    a = np.zeros((100, 100), bool)
    b = np.zeros((100, 100), bool)
    a[:, :50] = True
    b[:, 25:75] = True
    assert mask_iou(a, b, center=False) == pytest.approx(1 / 3, abs=1e-3)


def test_dino_of_an_image_with_itself_is_one():
    image = synthetic_image(96)
    assert dino_similarity(load_dino("tiny"), [image, image], image) == pytest.approx(1.0, abs=1e-5)


def test_gram_distance_zero_to_itself_positive_otherwise():
    vgg = load_vgg_features("tiny")
    image, other = synthetic_image(96), synthetic_image(96, colour=(20, 200, 40), seed=3)
    assert gram_distance(vgg, [image], image) == pytest.approx(0.0, abs=1e-12)
    assert gram_distance(vgg, [other], image) > 0


def test_clip_t_runs_and_clipscore_follows_its_definition():
    model = load_image_encoder("tiny").model
    scores = clip_t(model, [synthetic_image(96)], "a cat in the shape of *m")
    assert -1 <= scores["clip_t"] <= 1
    assert scores["clipscore"] == pytest.approx(2.5 * max(scores["clip_t"], 0), abs=1e-6)


def test_aggregation_of_known_numbers_gives_the_known_table(tmp_path):
    rows = [
        {"item": "a1", "attribute": "appearance", "lam": 1.0, "clip_t": 0.2, "dino": 0.5, "gram": 0.01},
        {"item": "a2", "attribute": "appearance", "lam": 1.0, "clip_t": 0.4, "dino": 0.7, "gram": 0.03},
        {"item": "a1", "attribute": "appearance", "lam": 0.0, "clip_t": 0.9, "dino": 0.1, "gram": 0.09},
        {"item": "m1", "attribute": "shape", "lam": 1.0, "clip_t": 0.3, "iou": 0.6},
    ]
    table = paper_table(rows, lam=1.0)
    assert table == [
        {"attribute": "appearance", "n": 2, "clip_t": 0.3, "dino": 0.6, "gram": 0.02},
        {"attribute": "shape", "n": 1, "clip_t": 0.3, "iou": 0.6},
    ]
    assert to_csv(table).splitlines()[1] == "appearance,2,0.3,0.6,0.02,"
    assert "| shape | 1 | 0.3 | – | – | 0.6 |" in to_markdown(table)
    write_table(table, tmp_path)
    assert (tmp_path / "table.csv").is_file() and (tmp_path / "table.md").is_file()
    assert plot_curves(rows, tmp_path / "curves.png").stat().st_size > 1000


def test_missing_metric_weights_say_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setenv("OSTAF_VGG_WEIGHTS", str(tmp_path / "none.pth"))
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path))
    with pytest.raises(OstafError, match="vgg19-dcbb9e9d.pth"):
        load_vgg_features("auto")
    monkeypatch.setenv("OSTAF_DINO_WEIGHTS", str(tmp_path))
    with pytest.raises(OstafError, match="OSTAF_DINO_WEIGHTS"):
        load_dino("auto")


def test_doctor_reports_every_model_and_what_to_do(monkeypatch, tmp_path, capsys):
    from ostaf.cli import main

    for env in ("OSTAF_CLIP_WEIGHTS", "OSTAF_SAM_WEIGHTS", "OSTAF_DINO_WEIGHTS", "OSTAF_VGG_WEIGHTS"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path))
    assert main(["doctor", "--model", str(tmp_path / "sd")]) == 0
    text = capsys.readouterr().out
    for name in ("Stable Diffusion", "CLIP ViT-B/32", "Segment Anything", "DINO", "VGG-19"):
        assert f"MISSING {name}" in text
    assert "OSTAF_SAM_WEIGHTS" in text and "vgg19-dcbb9e9d.pth" in text and "--no-segment" in text


def test_preprocess_command_writes_reference_mask_and_recipe(tmp_path):
    from ostaf.cli import main

    synthetic_image(96).save(tmp_path / "ref.png")
    args = f"preprocess --image {tmp_path / 'ref.png'} --attribute style --out {tmp_path / 'pre'} --sam tiny"
    assert main([*args.split(), "--resolution", "64"]) == 0
    assert {p.name for p in (tmp_path / "pre").iterdir()} == {"reference.png", "mask.png", "recipe.json"}


def test_table_counts_items_not_prompt_rows():
    rows = [{"item": "a1", "attribute": "style", "lam": 1.0, "clip_t": c, "dino": 0.5, "gram": 0.1} for c in (0.1, 0.3)]
    assert paper_table(rows) == [{"attribute": "style", "n": 1, "clip_t": 0.2, "dino": 0.5, "gram": 0.1}]


def test_table_keeps_small_metrics_visible():
    """Gram distances of random-weight stand-ins are ~1e-6: the table keeps 4 significant digits, not 4 decimals."""
    rows = [{"attribute": "style", "lam": 1.0, "clip_t": 0.123456, "dino": 12.34567, "gram": 3.14159e-6}]
    (row,) = paper_table(rows)
    assert row["gram"] == 3.142e-6 and row["clip_t"] == 0.1235 and row["dino"] == 12.35
    assert "3.142e-06" in to_markdown([row])


def test_dino_compares_each_image_with_the_reference_not_with_itself():
    """Hand-computed: cosine of the CLS features of two *different* images, through the same preprocessing."""
    import torch
    from torch.nn import functional as F

    from ostaf.metrics import _pixels

    dino = load_dino("tiny")
    reference, generated = synthetic_image(96, (200, 30, 30), 0), synthetic_image(96, (30, 30, 200), 1)
    size = dino.config.image_size
    with torch.no_grad():
        ref_cls = dino(pixel_values=_pixels([reference], size)).last_hidden_state[:, 0]
        gen_cls = dino(pixel_values=_pixels([generated], size)).last_hidden_state[:, 0]
    expected = float(F.cosine_similarity(gen_cls, ref_cls, dim=-1))
    assert dino_similarity(dino, [generated], reference) == pytest.approx(expected, abs=1e-5)
    assert expected < 0.9999  # the two images really differ for this network
    assert dino_similarity(dino, [reference], reference) == pytest.approx(1.0, abs=1e-5)


def test_clip_t_scores_the_prompt_without_its_placeholder_phrase():
    """Hand-computed: the cosine with the text "a vase", not "a vase in the appearance of *a"."""
    import torch
    from torch.nn import functional as F

    from ostaf.metrics import _clip_tokenizer

    clip = load_image_encoder("tiny").model
    image = synthetic_image(96)
    import open_clip

    transform = open_clip.image_transform(clip.visual.image_size, is_train=False)
    with torch.no_grad():
        image_features = clip.encode_image(transform(image).unsqueeze(0))

        def cosine(text: str) -> float:
            return float(F.cosine_similarity(image_features, clip.encode_text(_clip_tokenizer()([text])), dim=-1))

    score = clip_t(clip, [image], "a vase in the appearance of *a")["clip_t"]
    assert score == pytest.approx(cosine("a vase"), abs=1e-5)
    assert abs(cosine("a vase") - cosine("a vase in the appearance of *a")) > 1e-4  # the phrase matters
