"""The pipeline boundary for options: the typed top-level parameters (from the configs' field metadata), how a run's
options are resolved from them, a recipe and `extra_options`, and KFP's JSON numbers (every number a float;
integral floats become ints again for the config fields that are integers)."""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ostaf.config import default_of
from ostaf.errors import OstafError
from ostaf.recipes import Recipe, layered
from ostaf.steps import timed_step


def typed(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """`options` with each value in its `cls` field's type (unknown keys pass through: the config rejects them)."""
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


# -- the pipelines' typed top-level parameters and how a run's options are resolved from them ------------------


@dataclass(frozen=True)
class TypedParameter:
    """A config field that is a typed top-level pipeline parameter (`opt(pipeline=True)`)."""

    name: str
    section: str  # "train" or "generate": the option dict it lands in
    annotation: type  # what KFP sees: int, float, str, bool or list
    default: Any  # the field's default, or a recipe's value for it
    help: str


def sections() -> dict[str, type]:
    from ostaf.config import GenerateConfig, TrainConfig

    return {"train": TrainConfig, "generate": GenerateConfig}


def typed_parameters(recipe: Recipe | None = None) -> list[TypedParameter]:
    """Every `opt(pipeline=True)` field of the train and generate configs, with its default (the recipe's value
    where the recipe sets one): one list, read by the pipeline signatures and by `start_tracking`."""
    found = []
    for section, cls in sections().items():
        overrides = getattr(recipe, section) if recipe else {}
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.metadata.get("pipeline"):
                kind = hints[f.name]
                annotation = list if typing.get_origin(kind) is list else kind
                default = overrides.get(f.name, default_of(f))
                found.append(TypedParameter(f.name, section, annotation, default, f.metadata.get("help", "")))
    return found


EXTRA_HELP = (
    'every other option, as {"train": {...}, "generate": {...}} (names as in `ostaf train --help` / `ostaf '
    "generate --help` with _ for -); it wins over the recipe and the typed parameters"
)


def resolve_options(
    recipe: list[str], extra_options: dict, typed_values: dict[str, Any], compiled_defaults: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """A run's {"train": …, "generate": …} options, validated: the config defaults, then the recipes' values, then
    the typed parameters changed from their compiled defaults (one left at its compiled default is not set: the
    recipe's value or the config default holds), then `extra_options`."""
    from ostaf.config import validate_options

    unknown = set(extra_options) - set(sections())
    if unknown or not all(isinstance(v, dict) for v in extra_options.values()):
        shape = '{"train": {...}, "generate": {...}}'
        raise OstafError(f"extra_options must look like {shape}, got {extra_options}")
    chosen = layered(list(recipe))
    resolved = {}
    for section, cls in sections().items():
        values = dict(getattr(chosen, section)) if chosen else {}
        for p in typed_parameters():
            value = typed_values[p.name]
            if p.section == section and value != compiled_defaults.get(p.name, value):
                values[p.name] = value
        values |= extra_options.get(section, {})
        resolved[section] = validate_options(cls, typed(cls, values))
    return resolved


@timed_step
def resolve_options_and_open_run(
    pipeline: str,
    model: str,
    recipe: list[str],
    extra_options: dict,
    compiled_defaults: dict,
    kfp_run_id: str,
    provenance: dict,
    typed_values: dict[str, Any],
    options_path: str,
) -> str:
    """`start_tracking`'s body: resolve the run's options into `options_path` (what every later step reads), then
    open the parent MLflow run with them as params. Returns its run id."""
    from ostaf.io import write_json
    from ostaf.steps import start_pipeline_run

    expected = {p.name for p in typed_parameters()}
    if set(typed_values) != expected:  # the component's spelled-out signature and the configs disagree
        raise OstafError(
            f"start-tracking got typed parameters {sorted(typed_values)}, the configs mark {sorted(expected)}"
        )
    options = resolve_options(recipe, extra_options, typed_values, compiled_defaults)
    write_json(options_path, options)
    return start_pipeline_run(pipeline, model, options["train"], options["generate"], kfp_run_id, provenance)


def read_options(path: str) -> dict[str, dict[str, Any]]:
    """The resolved options a run's steps share (written by `resolve_options_and_open_run`)."""
    import json

    with open(path) as f:
        return json.load(f)


def arguments_for(
    train: dict[str, Any],
    generate: dict[str, Any],
    recipe: list[str] | None = None,
    compiled_defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pipeline arguments that give exactly these full option dicts: `recipe`, the typed parameters, and in
    `extra_options` every other option that differs from the config default ⊕ the recipe (what the CLI submits).

    `compiled_defaults`: the typed defaults of the package the arguments go to (default: a pipeline compiled with
    `recipe`); a typed value equal to one of them reads as not set, so where that is not what the options say, it
    goes in `extra_options` too."""
    from ostaf.config import shared_defaults

    chosen = layered(recipe or [])
    if compiled_defaults is None:
        compiled_defaults = {p.name: p.default for p in typed_parameters(chosen)}
    given = {"train": train, "generate": generate}
    args: dict[str, Any] = {p.name: given[p.section][p.name] for p in typed_parameters()}
    extra: dict[str, dict[str, Any]] = {}
    for section, cls in sections().items():
        base = shared_defaults(cls) | (getattr(chosen, section) if chosen else {})
        typed_here = {p.name for p in typed_parameters() if p.section == section}
        for name, value in given[section].items():
            unset = name in typed_here and value == compiled_defaults.get(name, value)
            if (name not in typed_here or unset) and base.get(name) != value:
                extra.setdefault(section, {})[name] = value
    return {"recipe": list(recipe or []), **args, "extra_options": extra}


def package_defaults(package: str | Path) -> dict[str, Any]:
    """The typed parameters' defaults in a compiled pipeline package (YAML)."""
    import yaml

    spec = next(yaml.safe_load_all(Path(package).read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    return {p.name: params[p.name].get("defaultValue") for p in typed_parameters() if p.name in params}
