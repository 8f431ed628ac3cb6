"""Self-subject-attention (`--reference-attention ω`) against its formula, written out here independently.

    out_b = to_out( softmax_j( q_b · [k_own ; k_ref]_j / √d + bias_bj ) [v_own ; v_ref]_j ) (+ x_b) / rescale
    bias_bj = 0 on the image's own keys, log(ω·λ_b) on the reference's foreground keys, −∞ on its background

and the reference pass that records k_ref, v_ref: the reference latent noised to the step's timestep, through
the base U-Net with the pipeline's unconditional input, its background masked at every feature resolution.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from PIL import Image

from ostaf.mechanisms.reference_attention import ReferenceAttention, ReferenceState, SubjectAttentionProcessor

HEADS, HEAD_DIM = 2, 4
WIDTH = HEADS * HEAD_DIM


class Projected(AttnProcessor2_0):
    """An inner processor with its own projections at a strength (as the offsets processor has): each
    projection scaled by 1 + scale, so the check sees whether the image's own q, k, v go through it."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def project(self, attn, name, x, scale):
        return getattr(attn, name)(x) * (1 + scale)


def by_hand(attn, x, ref_x, foreground, weights, factor: float) -> torch.Tensor:
    """The formula, one sample and one head at a time."""
    rows = []
    for b in range(x.shape[0]):
        q, k, v = (getattr(attn, n)(x[b]) * factor for n in ("to_q", "to_k", "to_v"))  # (N, C)
        k_ref, v_ref = attn.to_k(ref_x[0]), attn.to_v(ref_x[0])  # (M, C): base projections
        heads = []
        for h in range(HEADS):
            part = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            own = q[:, part] @ k[:, part].T / math.sqrt(HEAD_DIM)
            ref = q[:, part] @ k_ref[:, part].T / math.sqrt(HEAD_DIM) + math.log(weights[b])
            ref[:, ~foreground] = -math.inf
            p = torch.softmax(torch.cat([own, ref], 1), 1)
            heads.append(p @ torch.cat([v[:, part], v_ref[:, part]], 0))
        out = attn.to_out[0](torch.cat(heads, 1))
        rows.append((out + x[b]) / attn.rescale_output_factor)
    return torch.stack(rows)


@pytest.mark.parametrize("scale", [0.0, 0.7])
def test_the_generation_pass_is_the_formula_per_sample_and_head(scale):
    """ω = 3 following λ = (0.5, 2) per sample; two of the reference's four tokens are background; the layer
    adds its input back and divides by 2; the inner processor projects the image's own q, k, v at its strength."""
    torch.manual_seed(0)
    attn = Attention(WIDTH, heads=HEADS, dim_head=HEAD_DIM, residual_connection=True, rescale_output_factor=2.0)
    x, ref_x = torch.randn(2, 6, WIDTH), torch.randn(1, 4, WIDTH)
    foreground = torch.tensor([True, False, True, False])
    state = ReferenceState(omega=3.0, masks={4: foreground}, lam=torch.tensor([0.5, 2.0]))
    processor = SubjectAttentionProcessor(Projected(scale), state, "layer")
    with torch.no_grad():
        state.mode = "record"
        recorded = processor(attn, ref_x)
        torch.testing.assert_close(recorded, AttnProcessor2_0()(attn, ref_x))  # the reference pass: unchanged
        torch.testing.assert_close(state.keys["layer"], attn.to_k(ref_x))
        torch.testing.assert_close(state.values["layer"], attn.to_v(ref_x))
        state.mode = "use"
        out = processor(attn, x)
        expected = by_hand(attn, x, ref_x, foreground, [1.5, 6.0], 1 + scale)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_without_reference_lambda_every_sample_weighs_the_reference_by_omega():
    torch.manual_seed(1)
    attn = Attention(WIDTH, heads=HEADS, dim_head=HEAD_DIM)
    x, ref_x = torch.randn(3, 5, WIDTH), torch.randn(1, 4, WIDTH)
    foreground = torch.tensor([True, True, False, True])
    state = ReferenceState(
        omega=0.25, masks={4: foreground}, keys={"l": attn.to_k(ref_x)}, values={"l": attn.to_v(ref_x)}
    )
    with torch.no_grad():
        out = SubjectAttentionProcessor(AttnProcessor2_0(), state, "l")(attn, x)
        expected = by_hand(attn, x, ref_x, foreground, [0.25] * 3, 1.0) * attn.rescale_output_factor - x  # no residual
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_cross_attention_and_normed_layers_are_left_to_the_inner_processor():
    """Only plain self-attention sees the reference: with a context, or a layer with a group norm, the output is
    the inner processor's, in either mode, and nothing is recorded."""
    torch.manual_seed(2)
    x, context = torch.randn(1, 4, WIDTH), torch.randn(1, 3, 16)
    cross = Attention(WIDTH, cross_attention_dim=16, heads=HEADS, dim_head=HEAD_DIM)
    normed = Attention(WIDTH, heads=HEADS, dim_head=HEAD_DIM, norm_num_groups=2)
    state = ReferenceState(omega=2.0, masks={})
    processor = SubjectAttentionProcessor(AttnProcessor2_0(), state, "l")
    with torch.no_grad():
        for mode in ("record", "use"):
            state.mode = mode
            torch.testing.assert_close(processor(cross, x, context), AttnProcessor2_0()(cross, x, context))
            grid = x.transpose(1, 2).reshape(1, WIDTH, 2, 2)
            torch.testing.assert_close(processor(normed, grid), AttnProcessor2_0()(normed, grid))
    assert not state.keys and not state.values


def test_the_reference_mask_at_each_resolution_is_any_foreground_pixel_in_the_cell(tiny_pipe):
    """A 64 px mask (the tiny preset's image size) with foreground in rows 0–9, columns 0–5: a 32-cell latent
    grid marks rows 0–4 × columns 0–2, its 16-cell level rows 0–2 × columns 0–1."""
    size = tiny_pipe.unet.config.sample_size * tiny_pipe.vae_scale_factor
    assert size == 64 and len(tiny_pipe.unet.config.down_block_types) == 2
    mask = np.zeros((size, size), bool)
    mask[:10, :6] = True
    image = Image.fromarray(np.full((size, size, 3), (200, 40, 40), np.uint8))
    reference = ReferenceAttention(tiny_pipe, [], image, mask, omega=1.0, blocks="decoder")
    reference.remove()
    expected = {}
    for side, rows, cols in ((32, 5, 3), (16, 3, 2)):
        cells = torch.zeros(side, side, dtype=torch.bool)
        cells[:rows, :cols] = True
        expected[side * side] = cells.flatten()
    assert set(reference.state.masks) == set(expected)
    for tokens, cells in expected.items():
        assert torch.equal(reference.state.masks[tokens], cells)


@pytest.mark.parametrize("by_keyword", [False, True])
def test_the_reference_pass_feeds_the_noised_reference_at_the_steps_timestep(tiny_pipe, by_keyword):
    """Before a generation forward at t, the U-Net first sees add_noise(reference latent, its noise, t) at t with
    the unconditional context, in record mode; the generation forward itself then runs in use mode."""
    unet = tiny_pipe.unet
    tiny_pipe.scheduler.set_timesteps(10)
    image = Image.fromarray(np.full((64, 64, 3), (30, 160, 40), np.uint8))
    reference = ReferenceAttention(tiny_pipe, [], image, np.ones((64, 64), bool), omega=2.0, blocks="decoder", seed=3)
    seen: list = []

    def watch(module, args, kwargs):
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        seen.append((reference.state.mode, args[0].clone(), torch.as_tensor(timestep).reshape(-1).clone()))
        seen[-1] += (kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None),)

    watcher = unet.register_forward_pre_hook(watch, with_kwargs=True)
    sample = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 8, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([700, 700])
    try:
        with torch.no_grad():
            if by_keyword:
                unet(sample, timestep=t, encoder_hidden_states=context)
            else:
                unet(sample, t, context)
    finally:
        watcher.remove()
        reference.remove()
    (record_mode, noisy, record_t, record_context), (use_mode, given, use_t, _) = seen
    expected = tiny_pipe.scheduler.add_noise(reference.latent, reference.noise, torch.tensor([700]))
    assert (record_mode, use_mode) == ("record", "use")
    torch.testing.assert_close(noisy, expected)
    assert (
        noisy.shape[0] == 1
        and record_t.tolist() == [700]
        and torch.equal(given, sample)
        and use_t.tolist() == [700, 700]
    )
    torch.testing.assert_close(record_context, reference.context.states)
    seeded = torch.randn(reference.latent.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(reference.noise, seeded)  # the reference's noise is its seed's
