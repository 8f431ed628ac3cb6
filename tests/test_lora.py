"""LoRA through peft on the q/k/v OSTAF would modulate: λ is its scale, checkpoints round-trip, sweeps batch."""

import numpy as np
import pytest
import torch

from ostaf.checkpoint import apply, load_checkpoint
from ostaf.config import GenerateConfig
from ostaf.errors import OstafError
from ostaf.generate import generate
from ostaf.lora import LoraAdapter
from ostaf.models import load_pipeline
from ostaf.train import denoising_loss, enter_step, prepare, sample_batch, train
from tests.conftest import on_both_models, tiny_config, unet_inputs


def unet_out(pipe, seed: int = 0) -> torch.Tensor:
    latents, t, cond = unet_inputs(pipe.unet, batch=1, seed=seed)
    with torch.no_grad():
        return pipe.unet(latents, t, **cond.unet_kwargs()).sample


def trained(reference, tmp_path, attribute="shape", model="tiny"):
    pipe = load_pipeline(model, seed=0)
    config = tiny_config(
        reference, tmp_path / "run", steps=6, lr=5e-2, trainable="lora", attribute=attribute, model=model
    )
    train(config, pipe=pipe, progress=False)
    return pipe, load_checkpoint(tmp_path / "run")


@on_both_models
def test_lora_trains_only_its_layers_on_the_attributes_part_and_round_trips(reference, tmp_path, model):
    base = unet_out(load_pipeline(model, seed=0))
    pipe, ckpt = trained(reference, tmp_path, attribute="shape", model=model)  # shape: the encoder (down blocks)
    lora = {k for k in ckpt.tensors if k.startswith("unet.")}
    assert lora and all(k.startswith("unet.down_blocks.") and ".lora_" in k for k in lora)
    assert ckpt.card["lora"]["rank"] == 4 and ckpt.card["trainable"] == "lora"
    assert all(torch.count_nonzero(v) for k, v in ckpt.tensors.items() if ".lora_B." in k)  # B started at 0

    fresh = load_pipeline(model, seed=0)
    adapter = apply(fresh, tmp_path / "run", lam=1.0)
    assert torch.allclose(unet_out(fresh), unet_out(pipe), atol=1e-6)  # what trained is what loads
    assert not torch.allclose(unet_out(fresh), base, atol=1e-4)
    adapter.set_scale(0.0)
    assert torch.allclose(unet_out(fresh), base, atol=1e-6)  # λ = 0: the base U-Net
    adapter.set_scale(2.0)
    twice = unet_out(fresh)
    adapter.set_scale(1.0)
    assert not torch.allclose(twice, unet_out(fresh), atol=1e-5)  # λ scales the LoRA


def test_a_sweep_of_several_lambdas_in_one_batch_equals_one_lambda_at_a_time(reference, tmp_path):
    trained(reference, tmp_path)
    common = dict(ckpt=[str(tmp_path / "run")], prompt=["a vase in the shape of *m"], seeds=[0], num_steps=2)
    together = generate(GenerateConfig(**common, lam=[0.0, 1.0], batch_size=2, out=str(tmp_path / "a")), progress=False)
    images = together[0].images
    for lam in (0.0, 1.0):
        alone = generate(GenerateConfig(**common, lam=[lam], out=str(tmp_path / f"b{lam}")), progress=False)
        assert np.array_equal(np.asarray(alone[0].images[(lam, 0)]), np.asarray(images[(lam, 0)]))
    assert not np.array_equal(np.asarray(images[(0.0, 0)]), np.asarray(images[(1.0, 0)]))


def test_lora_refuses_per_sample_lambdas_and_the_dual_path(reference, tmp_path):
    trained(reference, tmp_path)
    adapter = apply(load_pipeline("tiny", seed=0), tmp_path / "run")
    with pytest.raises(OstafError, match="per-sample λ .* LoRA"):
        adapter.set_scale(torch.tensor([0.0, 1.0]))
    with pytest.raises(OstafError, match="dual path .* LoRA"):
        adapter.set_dual_path(0.5, None)
    assert adapter.scale == 1.0  # a refused write changes nothing
    adapter.set_scale(torch.tensor([0.3, 0.3]))  # one value for the whole batch is fine


def test_options_the_lora_cannot_carry_are_refused_before_any_model_loads(reference, tmp_path, monkeypatch):
    """The defect: --trainable lora --train-lam uniform (or --dual-path) trained without a word while λ was
    driven on an empty offsets adapter beside the LoRA."""
    from ostaf import train as train_module

    monkeypatch.setattr(train_module, "load_pipeline", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(OstafError, match="--train-lam uniform with --trainable lora"):
        tiny_config(reference, tmp_path / "a", trainable="lora", train_lam="uniform")
    with pytest.raises(OstafError, match="--dual-path 0.5 with --trainable lora"):
        tiny_config(reference, tmp_path / "b", trainable="lora", dual_path=0.5)
    for baseline in ("token", "blocks", "unet"):  # nothing for λ to scale
        with pytest.raises(OstafError, match=f"--train-lam uniform with --trainable {baseline}"):
            tiny_config(reference, tmp_path / "c", trainable=baseline, train_lam="uniform")


def test_a_lora_run_installs_no_offsets_and_its_lambda_is_the_loras(reference, tmp_path):
    from ostaf.offsets.processor import OffsetsAttnProcessor

    setup = prepare(tiny_config(reference, tmp_path / "run", trainable="lora", token_steps=1))
    assert isinstance(setup.adapter, LoraAdapter)
    assert not any(isinstance(p, OffsetsAttnProcessor) for p in setup.unet.attn_processors.values())
    enter_step(setup, 0)  # the token phase: the LoRA at λ = 0 for the forward, 1 after it
    seen = []
    layer = next(setup.adapter.layers())
    hook = layer.register_forward_pre_hook(lambda m, a: seen.append(m.scaling[setup.adapter.name]))
    denoising_loss(setup, *sample_batch(setup, torch.Generator().manual_seed(0))[:3])
    hook.remove()
    assert seen == [0.0] and layer.scaling[setup.adapter.name] == 1.0


def test_the_lora_rank_is_an_option_with_a_check(reference, tmp_path):
    setup = prepare(tiny_config(reference, tmp_path / "run", trainable="lora", lora_rank=2))
    assert isinstance(setup.adapter, LoraAdapter) and setup.adapter.spec.rank == 2
    assert all(p.shape[0] == 2 for p in setup.adapter.parameters() if p.ndim == 2 and p.shape[0] < p.shape[1])
    with pytest.raises(OstafError, match="lora_rank"):
        tiny_config(reference, tmp_path / "x", trainable="lora", lora_rank=0)


def test_reference_attention_runs_the_reference_through_the_base_model_with_a_lora(reference, tmp_path):
    """The defect: `generate --ckpt <lora> --reference-attention 1` ended in an AttributeError (the reference
    pass reached for the offsets' processors). The pass now holds the LoRA at λ = 0, then puts it back."""
    from ostaf.mechanisms.reference_attention import ReferenceAttention

    trained(reference, tmp_path)
    seen: list[tuple[str, float]] = []
    original = ReferenceAttention.reference_pass

    def watched(self, unet, args, kwargs):
        layer = next(a for a in self.adapters).layers()
        module = next(layer)
        hook = module.register_forward_pre_hook(
            lambda m, a: seen.append((self.state.mode, m.scaling[self.adapters[0].name]))
        )
        try:
            return original(self, unet, args, kwargs)
        finally:
            hook.remove()

    ReferenceAttention.reference_pass = watched
    try:
        made = generate(
            GenerateConfig(
                ckpt=[str(tmp_path / "run")],
                prompt=["a vase in the shape of *m"],
                lam=[0.6],
                seeds=[0],
                num_steps=2,
                reference_attention=1.0,
                reference_image=str(reference),
                out=str(tmp_path / "out"),
            ),
            progress=False,
        )
    finally:
        ReferenceAttention.reference_pass = original
    assert sorted(made[0].images) == [(0.6, 0)]
    assert seen and all(mode == "record" and scale == 0.0 for mode, scale in seen)
