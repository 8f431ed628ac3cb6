"""The pipeline boundary for options: what "not set" means for a compiled package, the tracking step that resolves a
run's options (`ostaf.options.resolve_options`: config → recipe → typed parameters → `extra_options`), and the
arguments the CLI sends for a given set of options.

KFP gives every typed parameter a compiled default (its local runner refuses a `None` default), so a value can only
say "not set" by equalling the compiled default: `unset_at_compiled` turns those into `ostaf.options.UNSET` here,
at the boundary, and nothing past it compares against defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ostaf.config import shared_defaults
from ostaf.errors import OstafError
from ostaf.options import SECTIONS, UNSET, resolve_options, typed_parameters
from ostaf.recipes import layered
from ostaf.steps import timed_step

EXTRA_HELP = (
    'every other option, as {"train": {...}, "generate": {...}, "evaluate": {...}} (names as in `ostaf train '
    "--help` / `ostaf generate --help` with _ for -); it wins over the recipe and the typed parameters"
)


def unset_at_compiled(typed_values: dict[str, Any], compiled_defaults: dict[str, Any]) -> dict[str, Any]:
    """The typed values with each one left at its compiled default marked `UNSET` (the run's recipe or the config
    default holds): how a KFP run says "not set"."""
    return {
        name: UNSET if name in compiled_defaults and value == compiled_defaults[name] else value
        for name, value in typed_values.items()
    }


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
    options = resolve_options(recipe, extra_options, unset_at_compiled(typed_values, compiled_defaults))
    write_json(options_path, options)
    return start_pipeline_run(pipeline, model, options, kfp_run_id, provenance)


def read_options(path: str) -> dict[str, dict[str, Any]]:
    """The resolved options a run's steps share (written by `resolve_options_and_open_run`)."""
    import json

    with open(path) as f:
        return json.load(f)


def arguments_for(
    options: dict[str, dict[str, Any]],
    recipe: list[str] | None = None,
    compiled_defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pipeline arguments that give exactly these full option dicts (by section): `recipe`, the typed parameters,
    and in `extra_options` every other option that differs from the config default ⊕ the recipe (what the CLI
    submits).

    `compiled_defaults`: the typed defaults of the package the arguments go to (default: a pipeline compiled with
    `recipe`); a typed value equal to one of them reads as not set (`unset_at_compiled`), so where that is not what
    the options say, it goes in `extra_options` too."""
    chosen = layered(recipe or [])
    if compiled_defaults is None:
        compiled_defaults = {p.name: p.default for p in typed_parameters(chosen)}
    parameters = typed_parameters()
    args: dict[str, Any] = {p.name: options[p.section][p.name] for p in parameters}
    unset = unset_at_compiled(args, compiled_defaults)
    extra: dict[str, dict[str, Any]] = {}
    for section, cls in SECTIONS.items():
        base = shared_defaults(cls) | (getattr(chosen, section) if chosen else {})
        typed_here = {p.name for p in parameters if p.section == section}
        for name, value in options.get(section, {}).items():
            if (name not in typed_here or unset[name] is UNSET) and base.get(name) != value:
                extra.setdefault(section, {})[name] = value
    return {"recipe": list(recipe or []), **args, "extra_options": extra}


def package_defaults(package: str | Path) -> dict[str, Any]:
    """The typed parameters' defaults in a compiled pipeline package (YAML)."""
    import yaml

    spec = next(yaml.safe_load_all(Path(package).read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    return {p.name: params[p.name].get("defaultValue") for p in typed_parameters() if p.name in params}
