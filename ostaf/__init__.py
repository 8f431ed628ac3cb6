"""OSTAF: one-shot, attribute-focused personalisation of Stable Diffusion.

Public surface: `apply` a checkpoint to a stock pipeline, `train` and `generate`
from a config, and the offsets method itself in `ostaf.offsets`.

The names below load on first use (PEP 562): `import ostaf.cli` or `ostaf --help` must not wait
seconds for torch and diffusers, which only the commands that compute need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "apply": "ostaf.checkpoint",
    "load_checkpoint": "ostaf.checkpoint",
    "GenerateConfig": "ostaf.config",
    "TrainConfig": "ostaf.config",
    "OstafError": "ostaf.errors",
}
__all__ = ["GenerateConfig", "OstafError", "TrainConfig", "apply", "load_checkpoint"]

if TYPE_CHECKING:
    from ostaf.checkpoint import apply, load_checkpoint
    from ostaf.config import GenerateConfig, TrainConfig
    from ostaf.errors import OstafError


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ostaf' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
