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


def matched_layers(unet: UNet2DConditionModel, config: OffsetsConfig) -> list[str]:
    """Names of the attention modules that `config` targets, in U-Net order."""
    return [name.removesuffix(".processor") for name in unet.attn_processors if is_target_attention(config, name)]


class HoldsStrength:
    """`merged_at(λ)` and per-block λ multipliers for any adapter with `merge(λ)` / `unmerge()` and a
    `modules()` of (module name, layer) pairs (offsets and LoRA alike)."""

    block_scales: dict[str, float] | None = None  # block (``up_blocks.1``) → λ multiplier; None: 1 everywhere

    def set_block_scales(self, scales: dict[str, float] | None) -> None:
        """Multiply λ per U-Net block from now on (the way diffusers' `set_adapters` takes per-block scales)."""
        scales = dict(scales or {})
        unknown = sorted(set(scales) - set(self.blocks()))
        if unknown:
            raise OstafError(
                f"per-block λ names {unknown}, but {self.name} only modulates {self.blocks()}: pick among those"
            )
        self.block_scales = scales or None

    def block_scale(self, module_name: str) -> float:
        return 1.0 if not self.block_scales else self.block_scales.get(block_of(module_name), 1.0)

    @contextmanager
    def merged_at(self, scale: float) -> Iterator[None]:
        self.merge(scale)
        try:
            yield
        finally:
            self.unmerge()


class OffsetsAdapter(HoldsStrength):
    """The offsets of one placeholder token (`*a`, `*m` or `*s`) living inside a U-Net."""

    per_sample = True  # a batch may carry one λ per sample

    def __init__(self, unet: UNet2DConditionModel, config: OffsetsConfig, name: str) -> None:
        self.unet = unet
        self.config = config
        self.name = name
        self.processors: dict[str, OffsetsAttnProcessor] = {}

    @classmethod
    def install(cls, unet: UNet2DConditionModel, config: OffsetsConfig, name: str) -> OffsetsAdapter:
        """Swap offsets processors into every target attention module of `unet`."""
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

    # -- λ -------------------------------------------------------------------
    def set_scale(self, scale: Scale) -> None:
        """λ for the following forwards: a number, or a 1-D tensor with one λ per sample."""
        if torch.is_tensor(scale):
            if not torch.isfinite(scale).all():
                raise OstafError(f"λ must be finite numbers, got {scale.tolist()}")
        elif not isinstance(scale, (int, float)) or not torch.isfinite(torch.tensor(float(scale))):
            raise OstafError(f"λ must be a finite number, got {scale!r}")
        for layer, proc in self.processors.items():
            proc.scale = scale * self.block_scale(layer) if self.block_scales else scale

    def set_dual_path(self, beta: float, vanilla_context: torch.Tensor | None) -> None:
        """β for the following forwards (1 = off) and the vanilla prompt's text context, (B | 1, T, D)."""
        if not 0.0 <= beta <= 1.0:
            raise OstafError(f"dual path β must be in [0, 1], got {beta}")
        for proc in self.processors.values():
            proc.dual_beta = float(beta)
            proc.vanilla_context = vanilla_context if beta < 1.0 else None

    @torch.no_grad()
    def merge(self, scale: float) -> None:
        """Fold λ·ΔW into the base weights, so generation costs exactly what the base model costs."""
        if self.merged:
            raise OstafError(f"offsets of {self.name} are already merged: call unmerge() first")
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
