"""argparse flags generated from a config dataclass, so no option is listed twice."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields
from typing import Any, TypeVar

T = TypeVar("T")


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, prefix: str = "", exclude: tuple[str, ...] = ()
) -> None:
    """One `--{prefix}flag-name` per field (minus `exclude`); fields without a default are required."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in exclude:
            continue
        kind = hints[f.name]
        flag = "--" + prefix + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "dest": prefix + f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        required = f.default is MISSING and f.default_factory is MISSING
        if required:
            kwargs["required"] = True
        else:
            default = f.default if f.default is not MISSING else f.default_factory()
            kwargs["default"] = default
            kwargs["help"] += f" (default: {default})"
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:
            kwargs["nargs"] = "+"
            kwargs["type"] = typing.get_args(kind)[0]
            if f.name in ("ckpt", "prompt"):
                kwargs["action"] = "extend"
        else:
            kwargs["type"] = kind
        parser.add_argument(flag, **kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def options_from_args(cls: type, args: argparse.Namespace, prefix: str = "", exclude: tuple[str, ...] = ()) -> dict:
    """The values of the flags `add_config_arguments` made, keyed by field name."""
    return {f.name: getattr(args, prefix + f.name) for f in fields(cls) if f.name not in exclude}
