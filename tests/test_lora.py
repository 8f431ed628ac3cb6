"""LoRA through peft on the q/k/v OSTAF would modulate: λ is its scale, checkpoints round-trip, sweeps batch."""

import numpy as np
import pytest
import torch

from ostaf.checkpoint import apply, load_checkpoint
from ostaf.config import GenerateConfig
from ostaf.errors import OstafError
from ostaf.generate import generate
from ostaf.models import load_pipeline
from ostaf.train import prepare, train
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
    with pytest.raises(OstafError, match="one λ per forward"):
        adapter.set_scale(torch.tensor([0.0, 1.0]))
    with pytest.raises(OstafError, match="does not apply to LoRA"):
        adapter.set_dual_path(0.5, None)


def test_the_lora_rank_is_an_option_with_a_check(reference, tmp_path):
    setup = prepare(tiny_config(reference, tmp_path / "run", trainable="lora", lora_rank=2))
    assert setup.lora is not None and setup.lora.spec.rank == 2
    assert all(p.shape[0] == 2 for p in setup.lora.parameters() if p.ndim == 2 and p.shape[0] < p.shape[1])
    with pytest.raises(OstafError, match="lora_rank"):
        tiny_config(reference, tmp_path / "x", trainable="lora", lora_rank=0)
