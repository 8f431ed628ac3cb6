"""Promises of the offsets adapter on the tiny U-Nets (SD-1.x- and SDXL-shaped): matching, λ, merge, per-sample λ."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from ostaf.conditioning import Conditioning
from ostaf.errors import OstafError
from ostaf.offsets import OffsetsAdapter, OffsetsAttnProcessor, OffsetsConfig, is_target_attention, matched_layers
from tests.conftest import pipe_on_both_models, unet_inputs


def one(cond: Conditioning, i: int) -> Conditioning:
    return Conditioning(*(None if x is None else x[i : i + 1] for x in (cond.states, cond.pooled, cond.time_ids)))


@torch.no_grad()
def run(unet, batch: int = 2, seed: int = 0, **kwargs):
    sample, t, cond = unet_inputs(unet, batch, seed)
    return unet(sample, t, **cond.unet_kwargs(), **kwargs).sample


def test_matching_is_a_pure_function_of_names():
    decoder = OffsetsConfig(parts=("decoder",))
    assert is_target_attention(decoder, "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor")
    assert is_target_attention(decoder, "up_blocks.3.attentions.2.transformer_blocks.0.attn2.processor")
    assert not is_target_attention(decoder, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor")
    assert not is_target_attention(decoder, "mid_block.attentions.0.transformer_blocks.0.attn2.processor")
    cross_only = OffsetsConfig(parts=("encoder",), attentions=("attn2",))
    assert is_target_attention(cross_only, "down_blocks.2.attentions.1.transformer_blocks.0.attn2.processor")
    assert not is_target_attention(cross_only, "down_blocks.2.attentions.1.transformer_blocks.0.attn1.processor")


@pipe_on_both_models
@pytest.mark.parametrize("part,prefix", [("decoder", "up_blocks."), ("encoder", "down_blocks.")])
def test_only_chosen_blocks_qkv_are_modulated(tiny_pipe, part, prefix):
    unet = tiny_pipe.unet
    adapter = OffsetsAdapter.install(unet, OffsetsConfig(parts=(part,)), "*x")
    modulated = {
        n.removesuffix(".processor") for n, p in unet.attn_processors.items() if isinstance(p, OffsetsAttnProcessor)
    }
    assert modulated == set(adapter.processors) == set(matched_layers(unet, adapter.config))
    assert modulated and all(n.startswith(prefix) for n in modulated)
    assert {n.rsplit(".", 1)[-1] for n in modulated} == {"attn1", "attn2"}
    untouched = [p for n, p in unet.attn_processors.items() if not n.startswith(prefix)]
    assert untouched and all(isinstance(p, AttnProcessor2_0) for p in untouched)
    for layer, proc in adapter.processors.items():
        attn = unet.get_submodule(layer)
        assert set(proc.offsets) == {"to_q", "to_k", "to_v"}
        for name, offsets in proc.offsets.items():
            assert offsets().shape == getattr(attn, name).weight.shape


def test_install_with_no_match_raises():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(  # attention only in the encoder
        sample_size=8,
        block_out_channels=(32, 32),
        layers_per_block=1,
        cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None,
        attention_head_dim=4,
        norm_num_groups=32,
    )
    with pytest.raises(OstafError, match="no attention module"):
        OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder", "mid")), "*x")


def test_overlapping_adapters_are_refused(tiny_pipe):
    OffsetsAdapter.install(tiny_pipe.unet, OffsetsConfig(parts=("decoder",)), "*a")
    with pytest.raises(OstafError, match="already carries"):
        OffsetsAdapter.install(tiny_pipe.unet, OffsetsConfig(parts=("decoder",)), "*s")


@pipe_on_both_models
def test_lambda_zero_is_bit_exact_base_and_lambda_changes_output(tiny_pipe):
    unet = tiny_pipe.unet
    base = run(unet)
    adapter = OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder",)), "*a")
    adapter.set_scale(0.0)
    assert torch.equal(run(unet), base)
    adapter.set_scale(1.0)
    assert not torch.allclose(run(unet), base, atol=1e-4)
    # a block at λ = 0.37 gives that λ's output and puts λ = 1 back after it, also on an error
    adapter.set_scale(0.37)
    at_037 = run(unet)
    adapter.set_scale(1.0)
    at_1 = run(unet)
    with adapter.at(0.37):
        assert torch.equal(run(unet), at_037) and adapter.scale == 0.37
    assert adapter.scale == 1.0 and torch.equal(run(unet), at_1)
    with pytest.raises(RuntimeError), adapter.at(0.0):
        raise RuntimeError("inside")
    assert all(proc.scale == 1.0 for proc in adapter.processors.values())


@pipe_on_both_models
def test_zero_init_is_identity_at_step_zero(tiny_pipe):
    unet = tiny_pipe.unet
    base = run(unet)
    OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder", "encoder"), zero_init=True), "*a")
    torch.testing.assert_close(run(unet), base, rtol=0, atol=0)


@pipe_on_both_models
@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_merge_matches_unmerged_and_unmerge_is_bit_exact(tiny_pipe, mode):
    unet = tiny_pipe.unet
    weights = {n: p.clone() for n, p in unet.named_parameters()}
    adapter = OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder",), mode=mode), "*a")
    adapter.set_scale(0.7)
    unmerged = run(unet)
    adapter.merge(0.7)
    assert adapter.merged
    torch.testing.assert_close(run(unet), unmerged, rtol=1e-5, atol=1e-6)
    adapter.unmerge()
    assert all(torch.equal(p, weights[n]) for n, p in unet.named_parameters() if n in weights)
    assert torch.equal(run(unet), unmerged)


@pipe_on_both_models
def test_multiplicative_form_is_w_times_one_plus_lambda_delta(tiny_pipe):
    unet = tiny_pipe.unet
    adapter = OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder",)), "*a")
    layer, proc = next(iter(adapter.processors.items()))
    linear = unet.get_submodule(layer).to_q
    base = linear.weight.detach().clone()
    with torch.no_grad():
        delta = proc.delta("to_q")
    adapter.merge(0.5)
    torch.testing.assert_close(linear.weight, base * (1 + 0.5 * delta))


@pipe_on_both_models
def test_per_sample_lambda_equals_separate_runs(tiny_pipe):
    unet = tiny_pipe.unet
    adapter = OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder", "encoder")), "*a")
    lams = [0.0, 0.5, 1.0, -0.3]
    sample, t, cond = unet_inputs(unet, batch=4)
    separate = []
    for i, lam in enumerate(lams):
        adapter.set_scale(lam)
        with torch.no_grad():
            separate.append(unet(sample[i : i + 1], t[i : i + 1], **one(cond, i).unet_kwargs()).sample)
    adapter.set_scale(torch.tensor(lams))
    with torch.no_grad():
        batched = unet(sample, t, **cond.unet_kwargs()).sample
    torch.testing.assert_close(batched, torch.cat(separate), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lam", [0.7, torch.tensor([0.7, 0.2])])
def test_caching_reuses_delta_until_the_offsets_change(tiny_pipe, lam):
    unet = tiny_pipe.unet
    adapter = OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder",)), "*a")
    adapter.set_scale(lam)
    proc = next(iter(adapter.processors.values()))
    uncached = run(unet)
    assert proc._cache is None  # outside a caching block nothing is kept
    with adapter.caching():
        first = run(unet)
        cached = dict(proc._cache)
        assert cached  # the denoising loop computed ΔW (or W ⊙ ΔW) once and kept it
        again = run(unet)
        assert torch.equal(first, again) and all(proc._cache[k][1] is v[1] for k, v in cached.items())  # reused
        with torch.enable_grad():  # training never reads the cache: ΔW must carry its graph
            sample, t, cond = unet_inputs(unet)
            unet(sample, t, **cond.unet_kwargs()).sample.sum().backward()
        assert all(p.grad is not None for p in adapter.parameters())
        with torch.no_grad():  # an in-place update (version bump) invalidates what was cached
            for p in adapter.parameters():
                p.add_(0.05)
        changed = run(unet)
    assert proc._cache is None
    torch.testing.assert_close(first, uncached)
    assert not torch.allclose(changed, first)
    torch.testing.assert_close(run(unet), changed)  # what the cache gave is what a fresh ΔW gives


def test_updates_that_leave_no_version_trace_are_seen_outside_caching(tiny_pipe):
    """The fused AdamW kernel updates parameters without bumping their versions: generation after
    such a step must still use the new ΔW (a cache keyed on versions alone served the old one)."""
    unet = tiny_pipe.unet
    adapter = OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder",)), "*a")
    adapter.set_scale(torch.tensor([1.0, 1.0]))
    before = run(unet)
    params = list(adapter.parameters())
    versions = [p._version for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    torch.optim.AdamW(params, lr=0.05, fused=True).step()
    assert [p._version for p in params] == versions  # the trap: no version bump
    assert not torch.allclose(run(unet), before)


def test_per_sample_lambda_must_fit_the_batch(tiny_pipe):
    adapter = OffsetsAdapter.install(tiny_pipe.unet, OffsetsConfig(parts=("decoder",)), "*a")
    adapter.set_scale(torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(OstafError, match="one λ per prompt"):
        run(tiny_pipe.unet, batch=2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1"])
def test_lambda_must_be_finite(tiny_pipe, bad):
    adapter = OffsetsAdapter.install(tiny_pipe.unet, OffsetsConfig(parts=("decoder",)), "*a")
    with pytest.raises(OstafError, match="finite"):
        adapter.set_scale(bad)


@pipe_on_both_models
def test_uninstall_restores_processors_and_output(tiny_pipe):
    unet = tiny_pipe.unet
    base = run(unet)
    adapter = OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder",)), "*a")
    adapter.merge(1.0)
    adapter.uninstall()
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    assert torch.equal(run(unet), base)


@pipe_on_both_models
def test_state_dict_round_trip_and_shape_check(tiny_pipe):
    unet = tiny_pipe.unet
    adapter = OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder",)), "*a")
    adapter.set_scale(1.0)
    state = adapter.state_dict()
    out = run(unet)
    adapter.uninstall()
    torch.manual_seed(123)
    again = OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder",)), "*a")
    again.load_state_dict(state)
    assert torch.equal(run(unet), out)
    wrong = dict(state)
    key = next(iter(wrong))
    wrong[key] = torch.zeros(3, 3)
    with pytest.raises(OstafError, match="another model"):
        again.load_state_dict(wrong)
    with pytest.raises(OstafError, match="does not fit"):
        again.load_state_dict({k: v for k, v in state.items() if k != key})


def modulated(unet) -> set[str]:
    return {
        n.removesuffix(".processor") for n, p in unet.attn_processors.items() if isinstance(p, OffsetsAttnProcessor)
    }


@pytest.mark.parametrize("tiny_pipe", ["tiny-sdxl"], indirect=True)
def test_the_parts_map_onto_sdxl_blocks_and_a_target_can_be_one_attention_module(tiny_pipe):
    unet = tiny_pipe.unet
    blocks = {
        part: {".".join(n.split(".")[:2]) for n in matched_layers(unet, OffsetsConfig(parts=(part,)))}
        for part in ("encoder", "decoder", "mid")
    }
    assert blocks == {
        "encoder": {"down_blocks.1", "down_blocks.2"},
        "decoder": {"up_blocks.0", "up_blocks.1"},
        "mid": {"mid_block.attentions"},
    }
    style = OffsetsAdapter.install(unet, OffsetsConfig(targets=("up_blocks.0.attentions.1",)), "*s")  # B-LoRA style
    assert modulated(unet) == set(style.processors)
    assert style.processors and all(n.startswith("up_blocks.0.attentions.1.") for n in style.processors)
    base = run(unet)
    content = OffsetsAdapter.install(unet, OffsetsConfig(targets=("up_blocks.0.attentions.0",)), "*a")
    assert set(content.processors).isdisjoint(style.processors)
    content.set_scale(0.0)
    assert torch.equal(run(unet), base)  # the content module at λ = 0 leaves the style module's output alone
    wildcard = OffsetsConfig(targets=("up_blocks.*.attentions.1",), attentions=("attn2",))
    assert {n.rsplit(".transformer_blocks", 1)[0] for n in matched_layers(unet, wildcard)} == {
        "up_blocks.0.attentions.1",
        "up_blocks.1.attentions.1",
    }


@pipe_on_both_models
def test_a_target_that_names_no_attention_module_is_one_error_listing_them(tiny_pipe):
    with pytest.raises(OstafError, match=r"up_blocks\.7 names no attention module.*up_blocks\.1\.attentions\.0"):
        OffsetsAdapter.install(tiny_pipe.unet, OffsetsConfig(targets=("up_blocks.1", "up_blocks.7")), "*s")
    assert not modulated(tiny_pipe.unet)  # nothing half-installed
