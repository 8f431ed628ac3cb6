"""A run's options from their sources, KFP-free: the config defaults, then the recipes' values, then the typed
parameters that were set, then `extra_options` — for every config a pipeline step reads (train, generate,
evaluate). Which option is a typed parameter, and which is a reference's own input, is the configs' field metadata
(`opt(pipeline=True)`, `opt(reference_input=True)`); nothing here lists option names.

A typed parameter that was not set is `UNSET` (explicit: a value equal to some default is a value). The pipelines'
boundary (`components.options`) decides what "not set" means for a compiled package.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Any

from ostaf.attributes import ATTRIBUTES
from ostaf.config import PER_ATTRIBUTE, EvaluateConfig, GenerateConfig, TrainConfig, default_of, validate_options
from ostaf.errors import OstafError
from ostaf.recipes import Recipe, layered


class _Unset:
    """A typed parameter nobody set: the recipe's value or the config default holds."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
SECTIONS: dict[str, type] = {"train": TrainConfig, "generate": GenerateConfig, "evaluate": EvaluateConfig}


def typed(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """`options` with each value in its `cls` field's type (unknown keys pass through: the config rejects them);
    JSON carries every number as a float, so an integral float becomes an int where the field is one."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    return {k: _coerce(v, hints[k]) if k in names else v for k, v in options.items()}


def _coerce(value: Any, kind: Any) -> Any:
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typing.get_origin(kind) is list and isinstance(value, list):
        (inner,) = typing.get_args(kind)
        return [_coerce(v, inner) for v in value]
    return value


@dataclass(frozen=True)
class TypedParameter:
    """A config field that is a typed top-level pipeline parameter (`opt(pipeline=True)`)."""

    name: str
    section: str  # "train", "generate" or "evaluate": the option dict it lands in
    annotation: type  # what KFP sees: int, float, str, bool or list
    default: Any  # the field's default, or a recipe's value for it
    help: str


def _annotation(cls: type, name: str) -> type:
    kind = typing.get_type_hints(cls)[name]
    return list if typing.get_origin(kind) is list else kind


def typed_parameters(recipe: Recipe | None = None) -> list[TypedParameter]:
    """Every `opt(pipeline=True)` field of the configs, with its default (the recipe's value where the recipe sets
    one): one list, read by the pipeline signatures, the tracking step and the CLI."""
    found = []
    for section, cls in SECTIONS.items():
        overrides = getattr(recipe, section) if recipe else {}
        for f in fields(cls):
            if f.metadata.get("pipeline"):
                default = overrides.get(f.name, default_of(f))
                found.append(TypedParameter(f.name, section, _annotation(cls, f.name), default, f.metadata["help"]))
    return found


@dataclass(frozen=True)
class ReferenceInput:
    """One of a reference's own inputs (`opt(reference_input=True)`): a parameter of the personalization pipeline
    and a flag of `pipelines run-local` / `submit`, named as the benchmark manifest names it."""

    name: str  # the manifest's key (`item_key`), else the field's name
    field: str
    annotation: type
    default: Any  # the field's default, or MISSING: required
    help: str
    choices: tuple | None


def reference_inputs() -> list[ReferenceInput]:
    found = []
    for cls in SECTIONS.values():
        for f in fields(cls):
            if f.metadata.get("reference_input"):
                name = f.metadata.get("item_key", f.name)
                meta = f.metadata
                found.append(
                    ReferenceInput(
                        name, f.name, _annotation(cls, f.name), default_of(f), meta["help"], meta.get("choices")
                    )
                )
    return found


def check_extra_options(extra_options: dict) -> None:
    unknown = set(extra_options) - set(SECTIONS)
    if unknown or not all(isinstance(v, dict) for v in extra_options.values()):
        shape = "{" + ", ".join(f'"{s}": {{...}}' for s in SECTIONS) + "}"
        raise OstafError(f"extra_options must look like {shape}, got {extra_options}")


def resolve_options(recipe: list[str], extra_options: dict, typed_values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A run's options per section, validated: the config defaults, then the recipes' values (later ones win), then
    each typed parameter that is not `UNSET` (a missing name is unset), then `extra_options`.

    Where a recipe is for some attributes only, a section also holds `PER_ATTRIBUTE`: attribute → the options
    whose values differ for that attribute's items (the same layers with that recipe in); `for_attribute` reads
    an item's options from it."""
    check_extra_options(extra_options)
    resolved = _resolved(recipe, extra_options, typed_values, None)
    for attribute in ATTRIBUTES:
        for section, values in _resolved(recipe, extra_options, typed_values, attribute).items():
            changed = {k: v for k, v in values.items() if resolved[section].get(k) != v}
            if changed:
                resolved[section].setdefault(PER_ATTRIBUTE, {})[attribute] = changed
    return resolved


def _resolved(
    recipe: list[str], extra_options: dict, typed_values: dict[str, Any], attribute: str | None
) -> dict[str, dict[str, Any]]:
    chosen = layered(list(recipe), attribute)
    parameters = typed_parameters()
    resolved = {}
    for section, cls in SECTIONS.items():
        values = dict(getattr(chosen, section)) if chosen else {}
        for p in parameters:
            value = typed_values.get(p.name, UNSET)
            if p.section == section and value is not UNSET:
                values[p.name] = value
        values |= extra_options.get(section, {})
        resolved[section] = validate_options(cls, typed(cls, values))
    return resolved
