"""The pipeline boundary for option dicts: KFP hands struct parameters over as JSON, where every
number is a float; integral floats become ints again for the config fields that are integers."""

from __future__ import annotations

import typing
from dataclasses import fields
from typing import Any


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
