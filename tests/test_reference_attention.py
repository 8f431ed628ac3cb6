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
    inner = AttnProcessor2_0()
    drop_last = torch.tensor([[0.0, 0.0, -1e4]])  # an attention mask over the context's three tokens
    with torch.no_grad():
        masked = inner(cross, x, context, drop_last)
        assert not torch.allclose(masked, inner(cross, x, context))  # the mask matters: passing it on is seen
        for mode in ("record", "use"):
            state.mode = mode
            torch.testing.assert_close(processor(cross, x, context), inner(cross, x, context))
            torch.testing.assert_close(processor(cross, x, context, drop_last), masked)  # further arguments
            torch.testing.assert_close(processor(cross, x, context, attention_mask=drop_last), masked)
            grid = x.transpose(1, 2).reshape(1, WIDTH, 2, 2)
            torch.testing.assert_close(processor(normed, grid), inner(normed, grid))
    assert not state.keys and not state.values


def test_the_reference_pass_itself_is_the_inner_processors_with_its_arguments():
    """Recording keeps the layer's own output, attention mask included (the reference pass runs the base model)."""
    torch.manual_seed(3)
    attn = Attention(WIDTH, heads=HEADS, dim_head=HEAD_DIM)
    x = torch.randn(1, 4, WIDTH)
    drop_first = torch.tensor([[-1e4, 0.0, 0.0, 0.0]])
    state = ReferenceState(omega=2.0, masks={}, mode="record")
    processor = SubjectAttentionProcessor(AttnProcessor2_0(), state, "l")
    with torch.no_grad():
        masked = AttnProcessor2_0()(attn, x, None, drop_first)
        assert not torch.allclose(masked, AttnProcessor2_0()(attn, x))
        torch.testing.assert_close(processor(attn, x, None, drop_first), masked)
        torch.testing.assert_close(processor(attn, x, attention_mask=drop_first), masked)


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


@pytest.mark.parametrize("call", ["positional", "keywords", "pipeline"])
def test_the_reference_pass_feeds_the_noised_reference_at_the_steps_timestep(tiny_pipe, call):
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
            if call == "keywords":
                unet(sample, timestep=t, encoder_hidden_states=context)
            elif call == "pipeline":  # how diffusers' pipelines call it
                unet(sample, t, encoder_hidden_states=context)
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


def test_the_reference_latent_is_the_vae_mean_of_the_cut_out_times_the_scaling_factor(tiny_pipe):
    """The reference enters as its VAE posterior mean × scaling factor, its background replaced by the plain
    one (BACKGROUND) before encoding; a grey or RGBA reference is read as RGB."""
    from ostaf.preprocess import BACKGROUND

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[8:40, 16:56] = True
    cut = np.where(mask[..., None], pixels, np.array(BACKGROUND, np.uint8))
    with torch.no_grad():
        vae = tiny_pipe.vae
        by_hand = vae.encode(torch.from_numpy(cut / 127.5 - 1).float().permute(2, 0, 1)[None]).latent_dist.mean
    reference = ReferenceAttention(tiny_pipe, [], Image.fromarray(pixels), mask, omega=1.0, blocks="decoder")
    reference.remove()
    torch.testing.assert_close(reference.latent, by_hand * vae.config.scaling_factor, rtol=1e-5, atol=1e-5)
    grey = Image.fromarray(pixels).convert("L")
    for image in (grey, Image.fromarray(pixels).convert("RGBA")):
        other = ReferenceAttention(tiny_pipe, [], image, mask, omega=1.0, blocks="decoder")
        other.remove()
        same = ReferenceAttention(tiny_pipe, [], image.convert("RGB"), mask, omega=1.0, blocks="decoder")
        same.remove()
        assert torch.equal(other.latent, same.latent)


@pytest.mark.parametrize("blocks", ["decoder", "encoder", "all"])
def test_exactly_the_chosen_blocks_self_attention_is_wrapped_and_remove_restores_the_pipeline(tiny_pipe, blocks):
    from ostaf.mechanisms.reference_attention import BLOCK_PREFIXES
    from ostaf.processors import attention_layers

    unet = tiny_pipe.unet
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    image = Image.fromarray(np.full((64, 64, 3), (90, 90, 200), np.uint8))
    reference = ReferenceAttention(tiny_pipe, [], image, np.ones((64, 64), bool), omega=1.0, blocks=blocks)
    expected = [n for n in attention_layers(unet) if n.endswith("attn1") and n.startswith(BLOCK_PREFIXES[blocks])]
    assert expected and reference.layers == expected
    wrapped = [
        n for n in attention_layers(unet) if isinstance(unet.get_submodule(n).processor, SubjectAttentionProcessor)
    ]
    assert wrapped == expected and len(unet._forward_pre_hooks) == 1
    reference.state.keys["x"] = torch.zeros(1)
    reference.remove()
    reference.remove()  # twice: nothing left to undo, no error
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before
    assert not unet._forward_pre_hooks and not reference.state.keys


def test_omega_zero_or_below_is_refused(tiny_pipe):
    from ostaf.errors import OstafError

    image = Image.fromarray(np.full((64, 64, 3), (90, 90, 200), np.uint8))
    for omega in (0.0, -1.0):
        with pytest.raises(OstafError, match="ω > 0"):
            ReferenceAttention(tiny_pipe, [], image, np.ones((64, 64), bool), omega=omega, blocks="decoder")
    assert not tiny_pipe.unet._forward_pre_hooks
