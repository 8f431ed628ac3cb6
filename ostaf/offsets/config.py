"""Which attention weights get E4T weight offsets, and how the offsets modulate them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from ostaf.errors import OstafError

# U-Net part -> prefix of the diffusers module names it covers. Only blocks that contain attention ever
# match, so each part maps itself per architecture: on SD-1.x the encoder is down_blocks.0-2 and the decoder
# up_blocks.1-3; on SDXL the encoder is down_blocks.1-2 and the decoder up_blocks.0-1.
PART_PREFIXES: dict[str, str] = {
    "encoder": "down_blocks.",
    "decoder": "up_blocks.",
    "mid": "mid_block.",
}
PROJECTIONS = ("to_q", "to_k", "to_v")
ATTENTIONS = ("attn1", "attn2")
MODES = ("multiplicative", "additive")


@dataclass(frozen=True)
class OffsetsConfig:
    """Where the hypernetwork offsets go and how ΔW enters the weight.

    `multiplicative` is the authors' code, W' = W ⊙ (1 + λ·ΔW); `additive` is the
    paper's formula read literally, W' = W + λ·ΔW.
    """

    parts: tuple[str, ...] = field(default=("decoder",), metadata={"help": "U-Net parts: encoder, decoder, mid"})
    # none: the processors are the stock ones (`--trainable lora` puts its LoRA on the q/k/v instead)
    projections: tuple[str, ...] = field(default=PROJECTIONS, metadata={"help": "projections to modulate"})
    attentions: tuple[str, ...] = field(default=ATTENTIONS, metadata={"help": "attn1 (self) and/or attn2 (cross)"})
    mode: str = field(default="multiplicative", metadata={"help": "multiplicative | additive"})
    zero_init: bool = field(default=False, metadata={"help": "start with ΔW = 0 (identity at step 0)"})
    # 0: the authors' full out×out and in×in matrices; R > 0: each as rank-R factors (far fewer parameters)
    hyper_rank: int = field(default=0, metadata={"help": "rank of the hypernetwork's square matrices (0 = full)"})
    # module name patterns (fnmatch; a pattern also covers every module under it); non-empty: they, not `parts`,
    # say where the offsets go, e.g. ("up_blocks.0.attentions.1",), B-LoRA's style module on SDXL
    targets: tuple[str, ...] = field(default=(), metadata={"help": "attention module name patterns"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        object.__setattr__(self, "projections", tuple(self.projections))
        object.__setattr__(self, "attentions", tuple(self.attentions))
        object.__setattr__(self, "targets", tuple(t.strip() for t in self.targets if t.strip()))
        _check_subset("parts", self.parts, tuple(PART_PREFIXES))
        _check_subset("projections", self.projections, PROJECTIONS, may_be_empty=True)
        _check_subset("attentions", self.attentions, ATTENTIONS)
        if not isinstance(self.hyper_rank, int) or self.hyper_rank < 0:
            raise OstafError(f"hyper_rank {self.hyper_rank!r} must be 0 (the full form) or a positive integer rank")
        if self.mode not in MODES:
            raise OstafError(f"offsets mode {self.mode!r} is unknown: use one of {', '.join(MODES)}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OffsetsConfig:
        return cls(**data)


def _check_subset(name: str, values: tuple[str, ...], allowed: tuple[str, ...], may_be_empty: bool = False) -> None:
    if not values and not may_be_empty:
        raise OstafError(f"offsets {name} is empty: choose at least one of {', '.join(allowed)}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise OstafError(f"offsets {name} {unknown} unknown: choose from {', '.join(allowed)}")


def is_target_attention(config: OffsetsConfig, processor_name: str) -> bool:
    """True if the attention module behind `processor_name` gets offsets.

    `processor_name` is a key of `unet.attn_processors`, e.g.
    ``up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor``.
    """
    module_name = processor_name.removesuffix(".processor")
    if config.targets:
        chosen = any(matches_pattern(module_name, pattern) for pattern in config.targets)
    else:
        chosen = any(module_name.startswith(PART_PREFIXES[p]) for p in config.parts)
    return chosen and module_name.rsplit(".", 1)[-1] in config.attentions


def matches_pattern(module_name: str, pattern: str) -> bool:
    """`pattern` names the module or a module above it: ``up_blocks.0.attentions.1`` covers
    ``up_blocks.0.attentions.1.transformer_blocks.0.attn2`` but not ``up_blocks.0.attentions.10…``."""
    return fnmatchcase(module_name, pattern) or fnmatchcase(module_name, pattern + ".*")


def unmatched_targets(config: OffsetsConfig, module_names: list[str]) -> list[str]:
    """The patterns of `config.targets` that name no attention module among `module_names` (a typo, or the
    other architecture's block)."""
    return [t for t in config.targets if not any(matches_pattern(n, t) for n in module_names)]


def parse_targets(text: str) -> tuple[str, ...]:
    """``"up_blocks.0.attentions.1, mid_block"`` → the patterns; the empty string → () (the parts decide)."""
    return tuple(filter(None, (part.strip() for part in text.split(","))))


def block_of(module_name: str) -> str:
    """The U-Net block a module belongs to: ``up_blocks.1``, ``down_blocks.0`` or ``mid_block``."""
    head = module_name.split(".")
    return head[0] if head[0] == "mid_block" else ".".join(head[:2])


BLOCK_ALIASES = {"down": "down_blocks", "up": "up_blocks", "mid": "mid_block"}


def parse_block_scales(text: str) -> dict[str, float]:
    """``"down.0=0.5,up.1=1"`` → ``{"down_blocks.0": 0.5, "up_blocks.1": 1.0}`` (``mid`` is the mid block)."""
    scales: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        head, _, index = name.strip().partition(".")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or head not in BLOCK_ALIASES or (head == "mid") == bool(index) or not math.isfinite(number):
            raise OstafError(
                f"per-block λ {item!r} is not BLOCK=NUMBER: write e.g. 'down.0=0.5,mid=1,up.1=1.2' "
                "(blocks down.N, mid, up.N; unlisted blocks keep 1)"
            )
        if index and not index.isdigit():
            raise OstafError(f"per-block λ {item!r}: the block index must be a number, e.g. up.1")
        scales[BLOCK_ALIASES[head] + (f".{index}" if index else "")] = number
    return scales
