"""Self-subject-attention (`ostaf generate --reference-attention ω`, DreamTuner, Hua et al. 2023): training-free.

At every denoising step a forward pre-hook on the U-Net (torch's public hook, not a patch) first passes the
reference's latent, noised to the same timestep, through the U-Net once (base weights: λ = 0, no dual path,
the unconditional prompt as the pipeline makes it: zeros on SDXL's base model). Wrapped self-attention
processors of the chosen blocks record the reference's keys and values there; in the generation pass the
generated image's queries attend to their own keys *and* the reference's, with the reference logits weighted
by ω (log ω added, as in the paper) and the reference's background masked out. The reference is cut out onto a
plain background before encoding, so nothing outside its mask reaches the generated image. One reference pass
per step serves the whole batch and both classifier-free-guidance halves. ω = 0 installs nothing: exactly
today's generation.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.models.attention_processor import Attention
from PIL import Image
from torch.nn import functional as F

from ostaf.attributes import ATTRIBUTES
from ostaf.conditioning import PromptEncoder
from ostaf.errors import OstafError
from ostaf.images import to_tensor
from ostaf.models import vae_encode
from ostaf.preprocess import cut_out
from ostaf.processors import attention_layers, unwrap, wrap

BLOCK_PREFIXES = {"decoder": ("up_blocks.",), "encoder": ("down_blocks.",), "all": ("down_blocks.", "up_blocks.")}


def resolve_blocks(blocks: str, tokens: list[str]) -> str:
    """`auto`: the part the checkpoints' attributes train (all when they differ, decoder with none)."""
    if blocks != "auto":
        return blocks
    parts = {a.part for a in ATTRIBUTES.values() if a.token in tokens}
    return "all" if len(parts) > 1 else parts.pop() if parts else "decoder"


@dataclass
class ReferenceState:
    """Shared by the hook and the processors: what pass is running, and what the reference pass recorded."""

    omega: float
    masks: dict[int, torch.Tensor]  # feature tokens N → (N,) bool foreground of the reference at that resolution
    # --reference-lambda: ω·λ per sample (a number, or (B,) for a mixed-λ batch); None: ω for every sample
    lam: float | torch.Tensor | None = None
    mode: str = "use"  # "record": the reference pass; "use": a generation pass
    keys: dict[str, torch.Tensor] = field(default_factory=dict)  # layer → (1, N, C)
    values: dict[str, torch.Tensor] = field(default_factory=dict)


def reference_weight(state: ReferenceState, batch: int) -> torch.Tensor:
    """The reference logits' weight per sample: ω, or ω·λ_b when ω follows λ (CFG halves share λ)."""
    if state.lam is None:
        return torch.tensor([state.omega])
    lam = torch.as_tensor(state.lam, dtype=torch.float32).reshape(-1)
    if lam.numel() > 1:
        lam = lam.repeat(batch // lam.numel())
    return state.omega * lam.clamp(min=0.0)


class SubjectAttentionProcessor:
    """Self-attention whose queries also see the reference's keys/values (AttnProcessor2_0's steps otherwise)."""

    stack_order = 10  # around the processor that attends; inside the dual path, which runs it twice

    def __init__(self, inner, state: ReferenceState, name: str) -> None:
        self.inner, self.state, self.name = inner, state, name

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None, *args, **kwargs):
        state = self.state
        if encoder_hidden_states is not None or attn.group_norm is not None or attn.spatial_norm is not None:
            return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        if state.mode == "record":
            state.keys[self.name] = attn.to_k(hidden_states)  # base weights: the reference pass runs at λ = 0
            state.values[self.name] = attn.to_v(hidden_states)
            return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        return self.attend(attn, hidden_states, getattr(self.inner, "scale", 0.0))

    def project(self, attn: Attention, name: str, x: torch.Tensor, scale) -> torch.Tensor:
        project = getattr(self.inner, "project", None)
        return project(attn, name, x, scale) if project else getattr(attn, name)(x)

    def attend(self, attn: Attention, hidden_states: torch.Tensor, scale) -> torch.Tensor:
        state = self.state
        batch, tokens, _ = hidden_states.shape  # (B, N, C)
        query = self.project(attn, "to_q", hidden_states, scale)
        key = self.project(attn, "to_k", hidden_states, scale)
        value = self.project(attn, "to_v", hidden_states, scale)
        ref_key = state.keys[self.name].to(key.dtype).expand(batch, -1, -1)  # (B, M, C)
        ref_value = state.values[self.name].to(value.dtype).expand(batch, -1, -1)
        key, value = torch.cat([key, ref_key], 1), torch.cat([value, ref_value], 1)  # (B, N + M, C)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, h, N, d)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, h, N + M, d)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        foreground = state.masks[ref_key.shape[1]].to(query.device)  # (M,)
        weight = reference_weight(state, batch).to(query.device)  # (B | 1,): ω, or ω·λ per sample
        reference_bias = torch.where(foreground, weight.log()[:, None], float("-inf"))  # (B | 1, M); ω·λ = 0: off
        own = torch.zeros(reference_bias.shape[0], tokens, device=query.device)
        bias = torch.cat([own, reference_bias], 1).to(query.dtype)  # (B | 1, N + M)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias[:, None, None, :])  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class ReferenceAttention:
    """Installs the processors and the per-step reference pass on a pipeline; `remove` undoes both."""

    def __init__(
        self,
        pipe,
        adapters: list,
        image: Image.Image,
        mask: np.ndarray,
        omega: float,
        blocks: str,  # a key of BLOCK_PREFIXES (`resolve_blocks` turns the option's `auto` into one)
        resolution: int | None = None,
        seed: int = 0,
    ) -> None:
        if omega <= 0:
            raise OstafError("reference attention needs ω > 0 (0 means off)")
        self.pipe, self.adapters = pipe, adapters
        unet, vae = pipe.unet, pipe.vae
        size = resolution or unet.config.sample_size * pipe.vae_scale_factor
        plain = cut_out(image.convert("RGB"), mask).resize((size, size), Image.Resampling.BICUBIC)
        with torch.no_grad():
            latent = vae_encode(vae, to_tensor(plain)).mean.to(vae.dtype)  # SDXL fp16: encoded in fp32
            self.latent = latent * vae.config.scaling_factor  # (1, 4, h, w)
            self.noise = torch.randn(self.latent.shape, generator=torch.Generator().manual_seed(seed)).to(self.latent)
            self.context = PromptEncoder(pipe).unconditional_at(size)  # the pipeline's own (SDXL base: zeros)
        side = self.latent.shape[-1]
        grid = torch.from_numpy(np.asarray(Image.fromarray(mask).resize((size, size)), bool).astype(np.float32))
        masks = {}
        for level in range(len(unet.config.down_block_types)):
            cells = F.adaptive_max_pool2d(grid[None, None], (side >> level, side >> level))[0, 0]
            masks[(side >> level) ** 2] = cells.flatten() > 0
        self.state = ReferenceState(omega, masks)
        self.prefixes = BLOCK_PREFIXES[blocks]
        self.handle = None
        self.install()

    def install(self) -> None:
        """Wrap the chosen self-attention processors and hook the per-step reference pass (again after `remove`)."""
        unet = self.pipe.unet
        chosen = attention_layers(unet, lambda layer: layer.endswith("attn1") and layer.startswith(self.prefixes))
        self.layers = wrap(unet, chosen, lambda inner, layer: SubjectAttentionProcessor(inner, self.state, layer))
        if not self.layers:
            raise OstafError(f"no self-attention in the U-Net's {self.prefixes} blocks: pick --reference-blocks all")
        self.handle = unet.register_forward_pre_hook(self.reference_pass, with_kwargs=True)

    def reference_pass(self, unet, args: tuple, kwargs: dict):
        """Before each generation forward: the reference, noised to this step's timestep, through the U-Net once."""
        if self.state.mode == "record":
            return None
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = torch.as_tensor(timestep, device=self.latent.device).reshape(-1)[:1]
        noisy = self.pipe.scheduler.add_noise(self.latent, self.noise, t.cpu().long()).to(unet.dtype)
        self.state.mode = "record"
        try:
            with ExitStack() as base_model, torch.no_grad():  # the reference goes through the base model
                for adapter in self.adapters:
                    base_model.enter_context(adapter.at(0.0))
                    base_model.enter_context(adapter.dual_path(1.0, None))
                unet(noisy, t.to(unet.device), **self.context.unet_kwargs(unet.dtype))
        finally:
            self.state.mode = "use"
        return None

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        unwrap(self.pipe.unet, SubjectAttentionProcessor)
        self.state.keys.clear()
        self.state.values.clear()
