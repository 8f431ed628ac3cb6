"""Item groups that bring their own references and exact metrics (the Attribute World), found by name.

Generic code asks this registry instead of branching on a group's name: a group names the benchmark
`source` that writes its references as a benchmark folder, the exact scorer of a sweep of its items,
and the table columns that scorer fills per attribute.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

# Modules that register a group when imported. Imported on first lookup, not here: they import
# the benchmark schema, which itself resolves sources through this registry.
BUILTIN = ("ostaf.world.references",)
_GROUPS: dict[str, Group] = {}

Scores = dict[tuple[str, float], dict[str, float]]  # (prompt, λ) → metric → mean over seeds


class Strength(NamedTuple):
    """How an attribute's strength is read: its continuous score, its match, and the score's direction."""

    score: str
    match: str
    sign: float = 1.0  # +1: a higher score is a stronger attribute; −1: the score is a distance


@dataclass(frozen=True)
class Group:
    name: str  # the `group` of its items in a manifest
    source: str  # `--source NAME`: a benchmark folder of this group's references
    write_benchmark: Callable[[Path], Path]  # fills a folder with manifest.yaml + images
    score_sweep: Callable[[Any, dict, str], Scores]  # (SweepIndex, manifest item, model) → exact metrics
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # attribute → exact metric columns
    # attribute → its strength metrics: the per-item table's `score` and `match`, what λ should raise
    strength: dict[str, Strength] = field(default_factory=dict)
    models: tuple[str, ...] = ()  # models whose default benchmark source this group is
    version: str = "1"  # bumped when the references change: a folder written by another version is not reused


def register(group: Group) -> Group:
    _GROUPS[group.name] = group
    return group


def registered() -> dict[str, Group]:
    for module in BUILTIN:
        importlib.import_module(module)
    return _GROUPS


def of_item(item: dict) -> Group | None:
    """The group of a manifest item that scores it exactly, if any."""
    return registered().get(item.get("group") or "")


def of_source(source: str) -> Group | None:
    return next((g for g in registered().values() if g.source == source), None)


def of_model(model: str) -> Group | None:
    return next((g for g in registered().values() if model in g.models), None)


def columns(attribute: str) -> tuple[str, ...]:
    """Every group's exact columns for `attribute`, in registration order."""
    return tuple(dict.fromkeys(c for g in registered().values() for c in g.columns.get(attribute, ())))


def strength(attribute: str) -> Strength | None:
    """The strength metrics of `attribute` in the first group that scores it, if any."""
    return next((g.strength[attribute] for g in registered().values() if attribute in g.strength), None)
