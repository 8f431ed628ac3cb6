"""E4T-style weight offsets for diffusers attention: config, hypernetwork, processor, adapter.

Loaded on first use (PEP 562), so that `ostaf.config` can read `OffsetsConfig` without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "OffsetsConfig": "ostaf.offsets.config",
    "is_target_attention": "ostaf.offsets.config",
    "WeightOffsets": "ostaf.offsets.hypernet",
    "OffsetsAdapter": "ostaf.offsets.inject",
    "matched_layers": "ostaf.offsets.inject",
    "OffsetsAttnProcessor": "ostaf.offsets.processor",
}
__all__ = [
    "OffsetsAdapter",
    "OffsetsAttnProcessor",
    "OffsetsConfig",
    "WeightOffsets",
    "is_target_attention",
    "matched_layers",
]

if TYPE_CHECKING:
    from ostaf.offsets.config import OffsetsConfig, is_target_attention
    from ostaf.offsets.hypernet import WeightOffsets
    from ostaf.offsets.inject import OffsetsAdapter, matched_layers
    from ostaf.offsets.processor import OffsetsAttnProcessor


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ostaf.offsets' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
