"""Attention binding (`--attn-binding W`, DisenDiff, Zhang et al. CVPR 2024), through attention processors.

While training, probes wrapped around the cross-attention processors at one feature resolution (by
default DisenDiff's middle one: the smallest cross-attention map outside the mid block, 16×16 on SD-1.x
at 512 px) record the softmax attention of the placeholder token and of the class word, averaged over
heads and layers. The loss is W·(1 − soft IoU(normalised placeholder map, target)), with the target the
reference's foreground mask (under the sample's augmentation) or, without a mask, the class word's map
(stop-gradient, sharpened by squaring), as DisenDiff binds a new token to its class token:

    soft IoU(A, B) = (Σ A⊙B + 1) / (Σ A + Σ B − Σ A⊙B + 1)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from diffusers.models.attention_processor import Attention
from torch.nn import functional as F

from ostaf.errors import OstafError
from ostaf.mechanisms.base import BaseModel, Mechanism
from ostaf.mechanisms.masked_loss import latent_masks
from ostaf.processors import attention_layers, innermost, unwrap, wrap

if TYPE_CHECKING:
    from ostaf.config import TrainConfig
    from ostaf.preprocess import Preprocessed
    from ostaf.training_setup import Batch, TrainingSetup


@dataclass
class AttentionRecord:
    """What the probes saw in one forward: layer → (B, N, P) attention of the P watched token positions."""

    positions: list[int]
    resolution: int
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    active: bool = False


@contextmanager
def recording(record: AttentionRecord) -> Iterator[AttentionRecord]:
    """The probes record the forwards inside the block (maps of an earlier forward are dropped first)."""
    record.maps.clear()
    record.active = True
    try:
        yield record
    finally:
        record.active = False


class AttentionProbe:
    """Wraps a cross-attention processor: records the watched tokens' attention, then runs the processor unchanged."""

    stack_order = 30  # outermost: it records what the layer computes, once per forward

    def __init__(self, inner, record: AttentionRecord, name: str) -> None:
        self.inner, self.record, self.name = inner, record, name

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None, *args, **kwargs):
        record = self.record
        if record.active and encoder_hidden_states is not None and hidden_states.shape[1] == record.resolution**2:
            record.maps[self.name] = self.probabilities(attn, hidden_states, encoder_hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)

    def probabilities(self, attn: Attention, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """softmax(q kᵀ / √d) over the text tokens, the watched columns, mean over heads: (B, N, P)."""
        inner = innermost(self.inner)
        if getattr(self.inner, "detaches_context", False):
            context = context.detach()
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        project = getattr(inner, "project", None)
        query = project(attn, "to_q", hidden, inner.scale) if project else attn.to_q(hidden)  # (B, N, C)
        key = project(attn, "to_k", context, inner.scale) if project else attn.to_k(context)  # (B, T, C)
        b, heads = query.shape[0], attn.heads
        query = query.view(b, -1, heads, query.shape[-1] // heads).transpose(1, 2)  # (B, h, N, d)
        key = key.view(b, -1, heads, key.shape[-1] // heads).transpose(1, 2)  # (B, h, T, d)
        probs = (query @ key.transpose(-1, -2) * attn.scale).softmax(dim=-1)  # (B, h, N, T)
        return probs[..., self.record.positions].mean(dim=1)  # (B, N, P)


def middle_resolution(unet, latent_side: int) -> int:
    """The smallest cross-attention feature map outside the mid block (DisenDiff's 16×16 on SD-1.x at 512 px)."""
    sides = [latent_side >> i for i, kind in enumerate(unet.config.down_block_types) if "CrossAttn" in kind]
    if not sides:
        raise OstafError("attention binding needs a U-Net with cross-attention blocks")
    return min(sides)


def install_probes(unet, record: AttentionRecord) -> list[str]:
    """Wrap every down/up-block cross-attention processor; returns the layers whose resolution the record reads."""
    layers = attention_layers(unet, lambda layer: layer.endswith("attn2") and not layer.startswith("mid_block"))
    return wrap(unet, layers, lambda inner, layer: AttentionProbe(inner, record, layer))


def remove_probes(unet) -> None:
    unwrap(unet, AttentionProbe)


def soft_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample soft IoU of two (B, r, r) maps in [0, 1]."""
    inter = (a * b).flatten(1).sum(-1)
    return (inter + 1) / (a.flatten(1).sum(-1) + b.flatten(1).sum(-1) - inter + 1)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min–max per sample to [0, 1]."""
    flat = maps.flatten(1)
    low, high = flat.min(-1).values, flat.max(-1).values
    return ((flat - low[:, None]) / (high - low).clamp(min=1e-8)[:, None]).view_as(maps)


def binding_loss(record: AttentionRecord, masks: torch.Tensor | None) -> torch.Tensor:
    """1 − soft IoU(placeholder map, target), mean over the batch; `masks` (B, 1, r, r) or None (class word map)."""
    if not record.maps:
        raise OstafError(
            f"attention binding found no cross-attention at {record.resolution}×{record.resolution}: pick "
            "--attn-binding-res among the U-Net's cross-attention resolutions"
        )
    maps = torch.stack(list(record.maps.values())).mean(0)  # (B, N, P)
    side = int(math.isqrt(maps.shape[1]))
    token = normalise(maps[..., 0].view(-1, side, side))
    if masks is None:
        target = normalise(maps[..., 1].view(-1, side, side)).detach() ** 2
    else:
        target = F.interpolate(masks.float(), (side, side), mode="area")[:, 0]
    return (1 - soft_iou(token, target.to(token.dtype))).mean()


class AttentionBinding(Mechanism):
    """Adds `--attn-binding` × (1 − soft IoU) of the placeholder's cross-attention map and its target."""

    def __init__(self, config: TrainConfig, reference: Preprocessed) -> None:
        self.config, self.reference = config, reference
        self.record: AttentionRecord | None = None
        self.masks: torch.Tensor | None = None  # (K, 1, h, w) per augmentation; None: bind to the class word

    @classmethod
    def build(cls, config: TrainConfig, base: BaseModel) -> AttentionBinding | None:
        return cls(config, base.reference) if config.attn_binding else None

    def attach(self, setup: TrainingSetup) -> None:
        if not self.reference.mask.all():  # segmented: bind to the mask; else to the class word's map
            self.masks = latent_masks(self.reference, setup.latent_size, 0).to(setup.device)
        ids = setup.input_ids[0, 0].tolist()
        class_ids = setup.pipe.tokenizer(self.config.class_name, add_special_tokens=False).input_ids
        positions = [ids.index(setup.token_id), 1 + len(class_ids)]  # the placeholder; the class name's last word
        resolution = self.config.attn_binding_res or middle_resolution(setup.unet, setup.latent_size[-1])
        self.record = AttentionRecord(positions, resolution)
        install_probes(setup.unet, self.record)

    def forward(self, setup: TrainingSetup, batch: Batch):
        return recording(self.record)

    def shares_pass(self, setup: TrainingSetup) -> bool:
        return False  # the probes record every sample of the pass; the binding term is the reference's alone

    def loss(self, setup: TrainingSetup, batch: Batch, generator: torch.Generator | None) -> torch.Tensor:
        masks = None if self.masks is None else self.masks[batch.pick]
        return self.config.attn_binding * binding_loss(self.record, masks)

    def close(self, setup: TrainingSetup) -> None:
        remove_probes(setup.unet)
        self.record = None
