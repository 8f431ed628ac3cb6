"""LoRA on the same attention weights OSTAF modulates, through `peft`: the baseline users pick today.

`LoraAdapter` puts rank-r LoRA layers (peft's `LoraConfig` + `inject_adapter_in_model`) on the
q/k/v projections of the attention modules an OSTAF adapter would target, and gives them the
interface generation drives offsets with: `set_scale(λ)` is the LoRA scale (λ = 0: the base
model, 1: as trained), `merge`/`unmerge` hold a λ for a whole batch. Its weights are ordinary
U-Net parameters (`…to_q.lora_A.<name>.weight`), so checkpoints save and load them like the other
U-Net weights that train. peft has one scale per forward, so a batch of several λ runs one
forward per λ, and per-sample λ in training and the dual path are refused (`ostaf.strength`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ostaf.errors import OstafError
from ostaf.offsets.config import block_of
from ostaf.strength import HoldsStrength


@dataclass(frozen=True)
class LoraSpec:
    """Which modules get LoRA and its rank; stored in the checkpoint card as `lora`."""

    layers: tuple[str, ...]  # attention modules, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    projections: tuple[str, ...] = ("to_q", "to_k", "to_v")
    rank: int = 4

    def targets(self) -> list[str]:
        return [f"{layer}.{proj}" for layer in self.layers for proj in self.projections]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "projections": list(self.projections), "rank": self.rank}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSpec:
        return cls(tuple(data["layers"]), tuple(data["projections"]), int(data["rank"]))


def adapter_name(token: str) -> str:
    """A peft adapter name for a placeholder token (`*m` → `ostaf_m`): one LoRA per learned attribute."""
    return "ostaf_" + "".join(c for c in token if c.isalnum())


class LoraAdapter(HoldsStrength):
    """The LoRA of one placeholder token inside a U-Net, driven like an `OffsetsAdapter`."""

    kind = "lora"  # one λ per forward, no dual path

    def __init__(self, unet: nn.Module, spec: LoraSpec, name: str) -> None:
        self.unet = unet
        self.spec = spec
        self.name = name
        self.merged = False

    @classmethod
    def install(cls, unet: nn.Module, spec: LoraSpec, token: str) -> LoraAdapter:
        try:
            from peft import LoraConfig, inject_adapter_in_model
            from peft.tuners.lora import LoraLayer
        except ImportError:  # pragma: no cover - peft is a dependency
            raise OstafError("--trainable lora needs peft: pip install peft") from None
        name = adapter_name(token)
        config = LoraConfig(r=spec.rank, lora_alpha=spec.rank, target_modules=spec.targets(), lora_dropout=0.0)
        inject_adapter_in_model(config, unet, adapter_name=name)
        adapter = cls(unet, spec, name)
        for module in adapter.layers():
            if not isinstance(module, LoraLayer):
                raise OstafError(f"peft did not wrap {module}: LoRA needs nn.Linear projections")
            module.set_adapter(sorted(module.lora_A))  # every attribute's LoRA stays active (composition)
        return adapter

    def blocks(self) -> list[str]:
        """The U-Net blocks whose projections carry this LoRA, e.g. ``up_blocks.1``."""
        return sorted({block_of(target) for target in self.spec.targets()})

    def layers(self) -> Iterator[nn.Module]:
        for target in self.spec.targets():
            yield self.unet.get_submodule(target)

    def _write_scale(self, scale: float | torch.Tensor) -> None:
        scale = float(scale.flatten()[0]) if torch.is_tensor(scale) else float(scale)  # one value (checked)
        for target, module in zip(self.spec.targets(), self.layers(), strict=True):
            module.set_scale(self.name, scale * self.block_scale(target))

    def merge(self, scale: float) -> None:
        """Hold λ for the following forwards (LoRA's extra cost is small: nothing is folded)."""
        if self.merged:
            raise OstafError(f"the LoRA of {self.name} already holds a λ: call unmerge() first")
        self._unmerged_scale = self.scale
        self.set_scale(scale)
        self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self.set_scale(self._unmerged_scale)
        self.merged = False

    def caching(self):
        return nullcontext()

    def parameters(self) -> Iterator[nn.Parameter]:
        for module in self.layers():
            yield from module.lora_A[self.name].parameters()
            yield from module.lora_B[self.name].parameters()
