"""Per-block λ (`--lam-blocks "down.0=0.5,up.1=1"`, `adapter.set_block_scales`): a multiplier per U-Net block."""

from __future__ import annotations

import pytest
import torch

from ostaf.checkpoint import apply, load_base_pipeline, load_checkpoint
from ostaf.config import GenerateConfig
from ostaf.errors import OstafError
from ostaf.generate import generate
from ostaf.offsets.config import parse_block_scales
from ostaf.train import train
from tests.conftest import tiny_config


def test_the_block_syntax_and_its_errors():
    assert parse_block_scales("down.0=0.5, up.1=1.2,mid=2") == {
        "down_blocks.0": 0.5,
        "up_blocks.1": 1.2,
        "mid_block": 2.0,
    }
    assert parse_block_scales("") == {}
    for bad in ("up=1", "mid.0=1", "up.x=1", "side.1=1", "up.1=abc", "up.1=inf", "up.1"):
        with pytest.raises(OstafError, match="up.1|block"):
            parse_block_scales(bad)
    with pytest.raises(OstafError):
        GenerateConfig(ckpt=["c"], prompt=["a *a"], lam_blocks="up=1")


@torch.no_grad()
def prediction(pipe) -> torch.Tensor:
    ids = pipe.tokenizer("a vase in the appearance of *a", padding="max_length", max_length=77, return_tensors="pt")
    size = pipe.unet.config.sample_size
    latents = torch.randn((1, 4, size, size), generator=torch.Generator().manual_seed(0))
    return pipe.unet(latents, torch.tensor([500]), pipe.text_encoder(ids.input_ids)[0]).sample


@pytest.mark.parametrize("trainable", ["lite", "lora"])
def test_block_multipliers_scale_lambda_per_block_merged_or_not(reference, tmp_path, trainable):
    ckpt = load_checkpoint(
        train(tiny_config(reference, tmp_path / "c", steps=2, trainable=trainable, lr=1e-2), progress=False).out
    )
    pipe = load_base_pipeline(ckpt)
    adapter = apply(pipe, ckpt, 0.5)
    half = prediction(pipe)
    blocks = adapter.blocks()
    assert len(blocks) > 1
    adapter.set_block_scales(dict.fromkeys(blocks, 0.5))
    adapter.set_scale(1.0)
    torch.testing.assert_close(prediction(pipe), half)  # every block × 0.5 at λ = 1 is λ = 0.5
    with adapter.merged_at(1.0):
        torch.testing.assert_close(prediction(pipe), half, rtol=1e-4, atol=1e-5)
    adapter.set_block_scales({blocks[0]: 3.0})
    adapter.set_scale(1.0)
    one_block = prediction(pipe)
    adapter.set_block_scales(None)
    adapter.set_scale(1.0)
    assert not torch.allclose(one_block, prediction(pipe))  # one block's multiplier alone changes the output
    with pytest.raises(OstafError, match="only modulates"):
        adapter.set_block_scales({"mid_block": 1.0})


def test_generate_refuses_a_block_no_checkpoint_modulates(reference, tmp_path):
    ckpt = train(tiny_config(reference, tmp_path / "c", steps=1), progress=False).out
    config = GenerateConfig(
        ckpt=[str(ckpt)],
        prompt=["a vase in the appearance of *a"],
        lam=[1.0],
        seeds=[0],
        num_steps=1,
        out=str(tmp_path / "g"),
        device="cpu",
        lam_blocks="down.0=0.5",
    )
    with pytest.raises(OstafError, match="modulate only"):
        generate(config, progress=False)
    ok = GenerateConfig(**{**config.to_dict(), "lam_blocks": "up.1=0.5", "out": str(tmp_path / "ok")})
    assert generate(ok, progress=False)[0].images
