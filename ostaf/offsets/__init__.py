"""E4T-style weight offsets for diffusers attention: config, hypernetwork, processor, adapter."""

from ostaf.offsets.config import OffsetsConfig, is_target_attention
from ostaf.offsets.hypernet import WeightOffsets
from ostaf.offsets.inject import OffsetsAdapter, matched_layers
from ostaf.offsets.processor import OffsetsAttnProcessor

__all__ = [
    "OffsetsAdapter",
    "OffsetsAttnProcessor",
    "OffsetsConfig",
    "WeightOffsets",
    "is_target_attention",
    "matched_layers",
]
