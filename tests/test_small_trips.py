"""Small things a user meets: grid labels that say λ, and an error that suggests the nearest valid size."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ostaf.errors import OstafError
from ostaf.images import label_font, make_grid
from tests.conftest import tiny_config


def _drawn(text: str) -> np.ndarray:
    canvas = Image.new("RGB", (40, 14), (255, 255, 255))
    ImageDraw.Draw(canvas).text((1, 1), text, fill=(0, 0, 0), font=label_font())
    return np.asarray(canvas.convert("L"))


def test_grid_labels_draw_lambda_as_a_glyph_not_a_missing_box():
    assert not np.array_equal(_drawn("λ"), _drawn("\uffff"))  # the font has λ
    assert not np.array_equal(_drawn("λ"), _drawn("l"))
    tile = Image.new("RGB", (32, 32), (200, 0, 0))
    grid = np.asarray(make_grid([[tile, tile]], ["λ=0.5", "λ=1"], ["seed 0"]).convert("L"))
    label = grid[:14, 45 : 45 + 32]  # the first column's label: drawn 2 px right of the 44 px of row labels
    assert np.array_equal(label < 128, _drawn("λ=0.5")[:, :32] < 128)


@pytest.mark.parametrize(("asked", "suggested"), [(12, 16), (20, 24), (3, 8), (1020, 1024)])
def test_a_resolution_not_multiple_of_8_suggests_the_nearest_one(reference, tmp_path, asked, suggested):
    with pytest.raises(OstafError, match=f"use e.g. {suggested}$"):
        tiny_config(reference, tmp_path, resolution=asked)


def test_the_end_of_a_local_run_links_its_parent_run_not_the_experiment_page(tmp_path, monkeypatch):
    from ostaf import tracking
    from pipelines.run import parent_run_url

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    older = tracking.start_run("attribute-benchmark", tags={"pipeline": "attribute-benchmark"}).run_id
    newer = tracking.start_run("attribute-benchmark", tags={"pipeline": "attribute-benchmark"}).run_id
    tracking.start_run("attribute-personalization", tags={"pipeline": "attribute-personalization"})
    url = parent_run_url("attribute-benchmark")
    assert url == f"http://127.0.0.1:5000/#/experiments/{tracking.experiment_id()}/runs/{newer}" and older not in url
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: no link, no failure
    assert parent_run_url("attribute-benchmark") == ""


def test_a_long_choice_list_is_a_placeholder_in_the_usage_and_listed_once_in_the_help():
    """`--methods` of the world experiment has ~60 choices: the usage line names METHOD, not every choice
    twice; the help still lists each, and a wrong one is still refused by name."""
    import argparse

    from ostaf.flags import add_config_arguments
    from ostaf.world.experiment import ExperimentConfig
    from ostaf.world.methods import METHODS

    parser = argparse.ArgumentParser(prog="attribute_world")
    add_config_arguments(parser, ExperimentConfig)
    usage, text = parser.format_usage(), parser.format_help()
    assert "[--methods METHOD [METHOD ...]]" in usage and "lite+hyper4" not in usage
    flat = "".join(text.split())  # the help wraps lines, also at hyphens
    assert all(m in flat for m in ("lite+hyper4", "ostaf-paper", "token+views"))
    assert "{token," not in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--methods", "no-such-method"])
    assert parser.parse_args(["--methods", "token", "lora"]).methods == ["token", "lora"]
    assert len(METHODS) > 8
