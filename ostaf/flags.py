"""argparse flags generated from a config dataclass, so no option is listed twice."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Iterable
from dataclasses import MISSING, fields
from typing import Any, TypeVar

from ostaf.config import default_of, per_item_fields

T = TypeVar("T")


LONG_CHOICES = 8  # past this many choices, the usage line shows a placeholder, not every choice


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    prefix: str = "",
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
    required: Iterable[str] = (),
    shared: bool = False,
) -> None:
    """One `--{prefix}flag-name` per field; fields without a default (or named in `required`) are required.

    `shared`: only the fields that are not per item (what a pipeline run sets for every item).
    """
    hints = typing.get_type_hints(cls)
    skip = set(exclude) | (set(per_item_fields(cls)) if shared else set())
    keep = None if only is None else set(only)
    for f in fields(cls):
        if f.name in skip or (keep is not None and f.name not in keep):
            continue
        kind = hints[f.name]
        flag = "--" + prefix + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "dest": prefix + f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = choices = f.metadata["choices"]
            if len(choices) > LONG_CHOICES:  # a placeholder in the usage line, the list once in the help
                kwargs["metavar"] = f.name.removesuffix("s").upper()
                kwargs["help"] += f"; one of: {', '.join(map(str, choices))}"
        if (f.default is MISSING and f.default_factory is MISSING) or f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default_of(f)
            kwargs["help"] += f" (default: {kwargs['default']})"
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:
            kwargs["nargs"] = "+"
            kwargs["type"] = typing.get_args(kind)[0]
            if f.metadata.get("repeatable"):
                kwargs["action"] = "extend"
        else:
            kwargs["type"] = kind
        parser.add_argument(flag, **kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def options_from_args(cls: type, args: argparse.Namespace, prefix: str = "") -> dict:
    """The shared options (not per item) that `add_config_arguments(..., shared=True)` made, by field name."""
    skip = set(per_item_fields(cls))
    return {f.name: getattr(args, prefix + f.name) for f in fields(cls) if f.name not in skip}


def set_recipe_defaults(parser: argparse.ArgumentParser, values: dict[str, Any], prefix: str = "") -> None:
    """Make a recipe's option values the parser's defaults (explicit flags still win)."""
    parser.set_defaults(**{prefix + name: value for name, value in values.items()})
