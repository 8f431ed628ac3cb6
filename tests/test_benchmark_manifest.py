"""The Attribute Benchmark manifest: the real one validates, every kind of bad one is named."""

import shutil
from pathlib import Path

import pytest
import yaml

from ostaf.benchmark import copy_items, load_manifest
from ostaf.errors import OstafError

REAL = Path(__file__).resolve().parents[1] / "data" / "attribute-benchmark"


@pytest.fixture(scope="module")
def real_manifest():
    return load_manifest(REAL)


def test_pulled_benchmark_has_34_valid_items(real_manifest):
    counts = {a: sum(i.attribute == a for i in real_manifest.items) for a in ("appearance", "shape", "style")}
    assert counts == {"appearance": 12, "shape": 13, "style": 9}
    assert all(len(i.prompts) == 3 and i.token in i.prompts[0] for i in real_manifest.items)


def test_selection_by_attribute_ids_and_count(real_manifest):
    one_each = real_manifest.select(per_attribute=1)
    assert [i.attribute for i in one_each] == ["appearance", "shape", "style"]
    assert {i.attribute for i in real_manifest.select(["style"])} == {"style"}
    assert [i.id for i in real_manifest.select(ids=["shp01-sitting-cat"])] == ["shp01-sitting-cat"]
    with pytest.raises(OstafError, match="unknown item ids"):
        real_manifest.select(ids=["nope"])


def test_copy_items_writes_a_consistent_subset(real_manifest, tmp_path):
    items = real_manifest.select(per_attribute=1)
    copy_items(REAL, tmp_path, items)
    assert [i.id for i in load_manifest(tmp_path).items] == [i.id for i in items]


def write_manifest(tmp_path: Path, **change) -> Path:
    folder = tmp_path / "bench"
    (folder / "appearance").mkdir(parents=True)
    shutil.copy(REAL / "appearance" / "app01-backpack.jpg", folder / "appearance" / "a.jpg")
    item = {
        "id": "a1",
        "attribute": "appearance",
        "image": "appearance/a.jpg",
        "class_name": "bag",
        "prompts": ["a vase in the appearance of *a"],
        "source": "test",
        "license": "test",
    }
    items = [item | change.pop("item", {})] + change.pop("extra_items", [])
    (folder / "manifest.yaml").write_text(yaml.safe_dump({"name": "t", "version": 1, "items": items}))
    return folder


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(item={"attribute": "colour"}), "unknown attribute"),
        (dict(item={"image": "appearance/missing.jpg"}), "missing"),
        (dict(item={"prompts": ["a vase"]}), "must contain \\*a"),
        (dict(item={"prompts": ["a vase in the shape of *m"]}), "must contain \\*a"),
        (dict(item={"image": "../outside.jpg"}), "inside the benchmark"),
        (dict(item={"image": "/etc/passwd"}), "inside the benchmark"),
        (dict(item={"colour": "red"}), "Extra inputs"),
    ],
)
def test_bad_manifests_name_the_item(tmp_path, change, message):
    with pytest.raises(OstafError, match=message) as err:
        load_manifest(write_manifest(tmp_path, **change))
    assert "a1" in str(err.value)


def test_item_ids_cannot_name_paths(tmp_path):
    with pytest.raises(OstafError, match="letters, digits"):
        load_manifest(write_manifest(tmp_path, item={"id": "../escape"}))


def test_duplicate_ids_are_refused(tmp_path):
    folder = write_manifest(tmp_path)
    data = yaml.safe_load((folder / "manifest.yaml").read_text())
    data["items"].append(dict(data["items"][0]))
    (folder / "manifest.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(OstafError, match="duplicate item ids: \\['a1'\\]"):
        load_manifest(folder)


def test_missing_manifest_says_to_pull(tmp_path):
    with pytest.raises(OstafError, match="dvc pull"):
        load_manifest(tmp_path)


def test_single_image_reference_checks_its_prompts(tmp_path):
    from ostaf.steps import import_reference
    from tests.conftest import synthetic_image

    synthetic_image(96).save(tmp_path / "me.png")
    assert import_reference(
        str(tmp_path / "me.png"), "shape", "cat", ["a vase in the shape of *m"], str(tmp_path / "b")
    ) == ["reference"]
    assert load_manifest(tmp_path / "b").item("reference").class_name == "cat"
    with pytest.raises(OstafError, match="must contain \\*m"):
        import_reference(str(tmp_path / "me.png"), "shape", "cat", ["a vase"], str(tmp_path / "c"))


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_unreachable_remote_is_named_and_leaves_no_partial_data(tmp_path, monkeypatch, kind):
    import subprocess
    import sys

    from ostaf.data import pull
    from tests.mlflow_server import free_port

    repo = tmp_path / "repo"
    repo.mkdir()

    def dvc(*args):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)

    dvc("init", "--no-scm", "-q")
    shutil.copy(Path(__file__).resolve().parents[1] / "data.dvc", repo)
    if kind == "local":
        dvc("remote", "add", "-d", "gone", str(tmp_path / "nowhere"))
        expected = r"remote gone \(.*nowhere\)"
    else:  # an object store that does not answer, with credentials from the environment only
        dvc("remote", "add", "-d", "store", "s3://bucket/benchmark")
        dvc("remote", "modify", "store", "endpointurl", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        expected = r"remote store \(s3://bucket/benchmark\)"
    with pytest.raises(OstafError, match=expected):
        pull(f"dvc:{repo}")
    assert not (repo / "data").exists()  # nothing half-pulled
