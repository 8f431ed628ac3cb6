"""The Attribute Benchmark manifest: a validated schema, item selection, copying and writing manifests.

The data itself is DVC-tracked (`data.dvc` → `data/attribute-benchmark/`); fetching it is
`ostaf.data`'s job, so this module never talks to DVC or a remote.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path, PurePosixPath

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ostaf.attributes import ATTRIBUTES
from ostaf.errors import OstafError
from ostaf.io import atomic_write

MANIFEST = "manifest.yaml"
SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")


class BenchmarkItem(BaseModel):
    """One reference image and how it is used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    attribute: str
    image: str
    class_name: str
    prompts: list[str]
    source: str
    license: str
    group: str | None = None
    note: str | None = None

    @field_validator("id")
    @classmethod
    def safe_id(cls, value: str) -> str:
        if not SAFE_ID.fullmatch(value) or value in (".", ".."):
            raise ValueError(f"item id {value!r} must be letters, digits, '.', '_' or '-' (it names folders and runs)")
        return value

    @field_validator("attribute")
    @classmethod
    def known_attribute(cls, value: str) -> str:
        if value not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {value!r} (use {', '.join(ATTRIBUTES)})")
        return value

    @field_validator("image")
    @classmethod
    def inside_data(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or "\\" in value:
            raise ValueError(f"image path {value!r} must be relative and stay inside the benchmark folder")
        return value

    @model_validator(mode="after")
    def prompts_use_the_placeholder(self) -> BenchmarkItem:
        token = ATTRIBUTES[self.attribute].token
        missing = [p for p in self.prompts if token not in p]
        if not self.prompts or missing:
            raise ValueError(f"every prompt must contain {token}; these do not: {missing or '(no prompts)'}")
        return self

    @property
    def token(self) -> str:
        return ATTRIBUTES[self.attribute].token


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int
    description: str = ""
    placeholders: dict[str, str] = {}
    items: list[BenchmarkItem]

    @model_validator(mode="after")
    def unique_ids(self) -> Manifest:
        duplicates = sorted(i for i, n in Counter(item.id for item in self.items).items() if n > 1)
        if duplicates:
            raise ValueError(f"duplicate item ids: {duplicates}")
        return self

    def item(self, item_id: str) -> BenchmarkItem:
        for item in self.items:
            if item.id == item_id:
                return item
        raise OstafError(f"no item {item_id!r} in the manifest; known ids start with {[i.id for i in self.items][:3]}")

    def select(
        self, attributes: list[str] | None = None, ids: list[str] | None = None, per_attribute: int = 0
    ) -> list[BenchmarkItem]:
        """Items filtered by attribute and id, then at most `per_attribute` of each (0 = all)."""
        unknown = sorted(set(ids or []) - {i.id for i in self.items})
        if unknown:
            raise OstafError(f"unknown item ids {unknown}: see {MANIFEST} for the ids")
        chosen = [i for i in self.items if (not attributes or i.attribute in attributes) and (not ids or i.id in ids)]
        if per_attribute:
            kept, counts = [], Counter()
            for item in chosen:
                if counts[item.attribute] < per_attribute:
                    kept.append(item)
                    counts[item.attribute] += 1
            chosen = kept
        if not chosen:
            raise OstafError("the selection is empty: loosen the attribute or id filters")
        return chosen


def load_manifest(folder: str | Path) -> Manifest:
    """Read and validate `folder/manifest.yaml`; every item's image must exist."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise OstafError(f"no {MANIFEST} in {folder}: run `dvc pull` at the repository root first")
    try:
        manifest = Manifest.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        item = _item_id_at(path, first["loc"])
        raise OstafError(f"{path}: {where}{f' (item {item})' if item else ''}: {first['msg']}") from None
    except yaml.YAMLError as err:
        raise OstafError(f"{path} is not valid YAML: {err}") from None
    for item in manifest.items:
        if not (folder / item.image).is_file():
            raise OstafError(f"{path}: item {item.id}: image {item.image} is missing; run `dvc pull`")
    return manifest


def _item_id_at(path: Path, loc: tuple) -> str | None:
    if len(loc) >= 2 and loc[0] == "items" and isinstance(loc[1], int):
        items = (yaml.safe_load(path.read_text()) or {}).get("items", [])
        if loc[1] < len(items) and isinstance(items[loc[1]], dict):
            return items[loc[1]].get("id")
    return None


def copy_items(folder: str | Path, dest: str | Path, items: list[BenchmarkItem]) -> Path:
    """Copy `items` and a manifest listing only them from `folder` into `dest`."""
    folder, dest = Path(folder), Path(dest)
    manifest = load_manifest(folder)
    for item in items:
        (dest / item.image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / item.image, dest / item.image)
    subset = manifest.model_copy(update={"items": list(items)})
    write_manifest(dest, subset.model_dump(mode="json"))
    return dest


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    """Write `folder/manifest.yaml` atomically (keys in the given order); returns its path."""
    path = Path(folder) / MANIFEST
    text = yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path
