"""Install offsets into a diffusers U-Net, set λ, merge and unmerge, save and load.

`OffsetsAdapter` only orchestrates: it finds the target attention modules, swaps
in one `OffsetsAttnProcessor` per module through `Attention.set_processor`
(diffusers' public hook), and keeps the original processors so that uninstall
restores the U-Net exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from ostaf.errors import OstafError
from ostaf.offsets.config import OffsetsConfig, block_of, is_target_attention, unmatched_targets
from ostaf.offsets.processor import OffsetsAttnProcessor, Scale
from ostaf.processors import unwrap, wrap
from ostaf.strength import HoldsStrength


def matched_layers(unet: UNet2DConditionModel, config: OffsetsConfig) -> list[str]:
    """Names of the attention modules that `config` targets, in U-Net order."""
    return [name.removesuffix(".processor") for name in unet.attn_processors if is_target_attention(config, name)]


def check_targets(unet: UNet2DConditionModel, config: OffsetsConfig) -> list[str]:
    """The attention modules `config` targets; one error when a pattern names none, or nothing matches."""
    layers = matched_layers(unet, config)
    attention = [name.removesuffix(".processor") for name in unet.attn_processors]
    unmatched = unmatched_targets(config, attention)
    if unmatched:
        blocks = sorted({name.split(".transformer_blocks")[0] for name in attention})
        raise OstafError(
            f"--targets {', '.join(unmatched)} names no attention module of this U-Net: its attention modules "
            f"are {', '.join(blocks)} (a pattern covers every module under it; * is a wildcard)"
        )
    if not layers:
        raise OstafError(
            f"no attention module of this U-Net matches offsets parts {list(config.parts)} and "
            f"attentions {list(config.attentions)}: pick parts that contain attention blocks"
        )
    return layers


class OffsetsAdapter(HoldsStrength):
    """The offsets of one placeholder token (`*a`, `*m` or `*s`) living inside a U-Net (λ: `ostaf.strength`)."""

    kind = "offsets"  # per-sample λ and the dual path

    def __init__(self, unet: UNet2DConditionModel, config: OffsetsConfig, name: str) -> None:
        self.unet = unet
        self.config = config
        self.name = name
        self.processors: dict[str, OffsetsAttnProcessor] = {}

    @classmethod
    def install(cls, unet: UNet2DConditionModel, config: OffsetsConfig, name: str) -> OffsetsAdapter:
        """Swap offsets processors into every target attention module of `unet`."""
        layers = check_targets(unet, config)
        adapter = cls(unet, config, name)
        param = next(unet.parameters())
        for layer in layers:
            attn = unet.get_submodule(layer)
            if isinstance(attn.processor, OffsetsAttnProcessor):
                raise OstafError(
                    f"{layer} already carries the offsets of {attn.processor.adapter}: adapters "
                    f"{attn.processor.adapter} and {name} must target different U-Net parts"
                )
            rank = config.hyper_rank or None
            proc = OffsetsAttnProcessor(attn, config.projections, config.mode, config.zero_init, name, rank)
            proc.to(device=param.device, dtype=torch.float32)  # trainables stay fp32 whatever the U-Net dtype
            attn.set_processor(proc)
            adapter.processors[layer] = proc
        return adapter

    def uninstall(self) -> None:
        """Put back the processors that were there before `install`."""
        self.unmerge()
        for layer, proc in self.processors.items():
            self.unet.get_submodule(layer).set_processor(proc.replaced[0])
        self.processors = {}

    # -- λ (the protocol's writes; `ostaf.strength.HoldsStrength` validates and restores) --------------
    def _write_scale(self, scale: Scale) -> None:
        for layer, proc in self.processors.items():
            proc.scale = scale * self.block_scale(layer) if self.block_scales else scale

    def _write_dual_path(self, beta: float, vanilla_context: torch.Tensor | None) -> None:
        """β < 1: a `DualPathProcessor` in each of this adapter's layers (updated where one is); β = 1: none."""
        from ostaf.mechanisms.dual_path import DualPathProcessor

        layers = list(self.processors)
        unwrap(self.unet, DualPathProcessor, layers)
        if beta < 1.0:
            wrap(self.unet, layers, lambda inner, _: DualPathProcessor(inner, beta, vanilla_context))

    @torch.no_grad()
    def merge(self, scale: float) -> None:
        """Fold λ·ΔW into the base weights, so generation costs exactly what the base model costs."""
        if self.merged:
            raise OstafError(f"offsets of {self.name} are already merged: call unmerge() first")
        self._unmerged_scale = self.scale
        self.set_scale(float(scale))
        for layer, proc in self.processors.items():
            attn = self.unet.get_submodule(layer)
            lam = float(scale) * self.block_scale(layer)
            for proj in proc.offsets:
                linear = getattr(attn, proj)
                merged = proc.modulated_weight(linear.weight.data, proc.offsets[proj](), lam)
                if not torch.isfinite(merged).all():
                    raise OstafError(f"merging {self.name} at λ={scale} gives non-finite weights in {layer}.{proj}")
                proc.keep_base(proj, linear.weight.data)
                linear.weight.data = merged
            proc.merged_scale = lam

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact base weight tensors kept at merge time (bit-exact)."""
        for layer, proc in self.processors.items():
            if proc.merged_scale is None:
                continue
            attn = self.unet.get_submodule(layer)
            for proj in proc.offsets:
                getattr(attn, proj).weight.data = proc.take_base(proj)
            proc.merged_scale = None
        if hasattr(self, "_unmerged_scale"):
            self.set_scale(self.__dict__.pop("_unmerged_scale"))  # λ as it was before the merge

    @property
    def merged(self) -> bool:
        return any(p.merged_scale is not None for p in self.processors.values())

    @contextmanager
    def caching(self) -> Iterator[None]:
        """Reuse ΔW across the forwards of this block (a denoising loop), where the offsets are fixed.

        Outside it every forward computes ΔW afresh. A parameter changed inside the block is
        still noticed when it bumps the tensor's version (ordinary in-place ops do).
        """
        for proc in self.processors.values():
            proc._cache = {}
        try:
            yield
        finally:
            for proc in self.processors.values():
                proc._cache = None

    # -- parameters ------------------------------------------------------------
    def parameters(self) -> Iterator[nn.Parameter]:
        for proc in self.processors.values():
            yield from proc.offsets.parameters()

    def blocks(self) -> list[str]:
        """The U-Net blocks that hold targeted attention, e.g. ``up_blocks.1``."""
        return sorted({block_of(layer) for layer in self.processors})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"{layer}.{key}": tensor.detach()
            for layer, proc in self.processors.items()
            for key, tensor in proc.offsets.state_dict().items()
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load offsets saved by `state_dict`; shapes and names must match exactly."""
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise OstafError(
                f"offsets checkpoint does not fit this U-Net ({len(missing)} missing, {len(unexpected)} "
                f"unexpected keys, e.g. {(missing or unexpected)[:2]}): was it trained on another model or part?"
            )
        for key, tensor in state.items():
            if tensor.shape != expected[key].shape:
                raise OstafError(
                    f"offsets checkpoint tensor {key} has shape {tuple(tensor.shape)}, this U-Net needs "
                    f"{tuple(expected[key].shape)}: it was trained on another model architecture"
                )
        for layer, proc in self.processors.items():
            prefix = f"{layer}."
            proc.offsets.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
