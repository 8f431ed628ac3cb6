"""Attention processor that computes q/k/v with hypernetwork-modulated weights.

Follows diffusers' `AttnProcessor2_0` step for step (so λ = 0 reproduces the
stock processor bit for bit) and changes only how `to_q/to_k/to_v` are applied:

    scalar λ:        proj(x) = x · (W ⊙ (1 + λ·ΔW))ᵀ                (multiplicative)
                     proj(x) = x · (W + λ·ΔW)ᵀ                      (additive)
    per-sample λ_b:  proj(x)_b = x_b·Wᵀ + λ_b · x_b·(W ⊙ ΔW)ᵀ        (same maths, one batched pass)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import Attention
from torch import nn
from torch.nn import functional as F

from ostaf.errors import OstafError
from ostaf.offsets.hypernet import WeightOffsets

Scale = float | torch.Tensor


class OffsetsAttnProcessor(nn.Module):
    """Owns the `WeightOffsets` of one attention module and applies them with strength λ.

    λ (`scale`) is processor state written by `OffsetsAdapter` (the strength protocol,
    `ostaf.strength`). A 1-D tensor holds one λ per batch element; a batch that
    classifier-free guidance doubled gets the same λ in both halves.
    """

    def __init__(
        self,
        attn: Attention,
        projections: tuple[str, ...],
        mode: str,
        zero_init: bool,
        adapter: str,
        hyper_rank: int | None = None,
    ) -> None:
        super().__init__()
        self.offsets = nn.ModuleDict(
            {
                name: WeightOffsets(
                    getattr(attn, name).weight.shape[1],
                    getattr(attn, name).weight.shape[0],
                    zero_init=zero_init,
                    rank=hyper_rank,
                )
                for name in projections
            }
        )
        self.mode = mode
        self.adapter = adapter
        self.scale: Scale = 1.0
        self.merged_scale: float | None = None
        # The processor this one replaced, restored on uninstall. A list so that an
        # nn.Module processor is not registered as our child.
        self.replaced: list = [attn.processor]
        # Inside `OffsetsAdapter.caching()` (a denoising loop) and without autograd, ΔW and W ⊙ ΔW
        # are the same at every step: computed once and reused. The cache lives only inside that
        # block, because parameters can change in place without a trace outside it (fused
        # optimizers and `.data` writes do not bump tensor versions); None = not caching.
        self._cache: dict[tuple, tuple] | None = None

    def delta(self, name: str) -> torch.Tensor:
        """ΔW for projection `name`, shape (out_features, in_features)."""
        if torch.is_grad_enabled() or self._cache is None:
            return self.offsets[name]()
        return self._cached(("delta", name), list(self.offsets[name].parameters()), self.offsets[name])

    def weighted_delta(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """W ⊙ ΔW (multiplicative) or ΔW (additive): what λ_b scales in the per-sample form."""

        def compute() -> torch.Tensor:
            delta = self.offsets[name]().to(weight.dtype)
            return weight * delta if self.mode == "multiplicative" else delta

        if torch.is_grad_enabled() or self._cache is None:
            return compute()
        return self._cached(("weighted", name), [*self.offsets[name].parameters(), weight], compute)

    def _cached(self, key: tuple, tensors: list[torch.Tensor], compute) -> torch.Tensor:
        stamp = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = compute()
        self._cache[key] = (stamp, value)
        return value

    def keep_base(self, name: str, weight: torch.Tensor) -> None:
        """Hold the base weight tensor of projection `name` while a merged one replaces it (moves with `.to`)."""
        self.register_buffer(f"base_{name}", weight, persistent=False)

    def take_base(self, name: str) -> torch.Tensor:
        """The base weight tensor kept by `keep_base`, released: the exact object, so unmerge is bit-exact."""
        weight = getattr(self, f"base_{name}")
        delattr(self, f"base_{name}")
        return weight

    def modulated_weight(self, weight: torch.Tensor, delta: torch.Tensor, scale: float) -> torch.Tensor:
        delta = delta.to(weight.dtype)
        if self.mode == "multiplicative":
            return weight * (1 + scale * delta)
        return weight + scale * delta

    def project(self, attn: Attention, name: str, x: torch.Tensor, scale: Scale) -> torch.Tensor:
        linear = getattr(attn, name)
        if name not in self.offsets or self.merged_scale is not None or _is_zero(scale):
            return linear(x)
        if not torch.is_tensor(scale) or scale.ndim == 0:
            return F.linear(x, self.modulated_weight(linear.weight, self.delta(name), float(scale)), linear.bias)
        lam = _per_sample(scale, x.shape[0]).to(device=x.device, dtype=x.dtype)  # (B,)
        extra = F.linear(x, self.weighted_delta(name, linear.weight))  # (B, N, out)
        return linear(x) + lam.view(-1, *([1] * (x.ndim - 1))) * extra

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        return self.attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb, self.scale)

    @contextmanager
    def at_zero(self) -> Iterator[None]:
        """λ = 0 in this layer for one call (a wrapper's vanilla path, `DualPathProcessor`); restored after."""
        previous, self.scale = self.scale, 0.0
        try:
            yield
        finally:
            self.scale = previous

    def attend(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
        scale: Scale,
    ) -> torch.Tensor:
        """`AttnProcessor2_0`, step for step, with the q/k/v projections modulated at strength `scale`."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)  # (B, HW, C)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = self.project(attn, "to_q", hidden_states, scale)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = self.project(attn, "to_k", encoder_hidden_states, scale)
        value = self.project(attn, "to_v", encoder_hidden_states, scale)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, N, hd)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )  # (B, heads, N, hd)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _is_zero(scale: Scale) -> bool:
    if torch.is_tensor(scale):
        return bool((scale == 0).all())
    return scale == 0


def _per_sample(scale: torch.Tensor, batch: int) -> torch.Tensor:
    """Expand one λ per sample to the attention batch (CFG stacks [uncond, cond])."""
    if scale.ndim != 1 or batch % scale.shape[0]:
        raise OstafError(
            f"per-sample λ has shape {tuple(scale.shape)} but the batch has {batch} samples: "
            "give one λ per prompt in the batch"
        )
    return scale.repeat(batch // scale.shape[0])


class DetachedContextProcessor:
    """Wraps an untargeted cross-attention's processor so the text context reaching it is detached.

    With it, the placeholder token learns only through the blocks that carry offsets, and the
    backward pass can stop at those blocks (the `--token-grad confined` option).
    """

    detaches_context = True  # what an attention probe wrapped around it must do as well
    stack_order = 10  # around the processor that attends (`ostaf.processors`)

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states.detach()
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
