"""SD-1.x single-file checkpoints load offline through diffusers' own loader (issue 16, point 9).

diffusers has no writer for the original layout, so `tests/ldm_checkpoint.py` writes one; loading it
back through `StableDiffusionPipeline.from_single_file` and comparing every tensor proves both the
file and our config copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from ostaf.errors import OstafError
from ostaf.model_spec import model_resolution
from ostaf.models import load_pipeline
from ostaf.presets import PRESETS
from ostaf.single_file import preset_for_shapes
from ostaf.train import train
from tests.conftest import tiny_config
from tests.ldm_checkpoint import pipeline_to_ldm

MODULES = ("unet", "vae", "text_encoder")


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-sd1.safetensors"
    save_file(pipeline_to_ldm(load_pipeline("tiny", seed=42)), path)
    return path


def assert_same_weights(a, b) -> None:
    for name in MODULES:
        left, right = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert left.keys() == right.keys(), name
        assert all(torch.equal(left[key], right[key]) for key in left), name


def test_a_single_file_loads_every_tensor_and_the_sd_scheduler(tiny_file):
    pipe, preset = load_pipeline(str(tiny_file)), load_pipeline("tiny", seed=42)
    assert_same_weights(pipe, preset)
    latents, context = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():  # bit-equal outputs too: the tensors live in aligned memory, not in the mapped file
        assert torch.equal(pipe.unet(latents, 500, context).sample, preset.unet(latents, 500, context).sample)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler" and pipe.scheduler.config.steps_offset == 1
    assert not pipe.unet.training and pipe.tokenizer is not None
    assert model_resolution(str(tiny_file)) == PRESETS["tiny"].resolution


def test_doctor_names_the_layout_of_a_single_file(tiny_file, tmp_path):
    from ostaf.doctor import locate_sd

    assert locate_sd(str(tiny_file)).found == f"{tiny_file} (SD-1.x single file, tiny layout)"
    (tmp_path / "other.safetensors").write_bytes(b"\0" * 16)
    assert locate_sd(str(tmp_path / "other.safetensors")).found is None


def test_a_weights_only_ckpt_loads_too(tiny_file, tmp_path):
    ckpt = tmp_path / "tiny-sd1.ckpt"
    torch.save({"state_dict": load_file(tiny_file)}, ckpt)  # the nesting most .ckpt files have
    assert_same_weights(load_pipeline(str(ckpt)), load_pipeline("tiny", seed=42))


def test_training_on_a_single_file_equals_training_on_the_same_weights(reference, tiny_file, tmp_path):
    common = dict(steps=2, token_init="word")
    from_file = train(tiny_config(reference, tmp_path / "file", model=str(tiny_file), **common), progress=False)
    from_preset = train(tiny_config(reference, tmp_path / "preset", **common), progress=False)
    left = load_file(from_file.out / "ostaf.safetensors")
    right = load_file(from_preset.out / "ostaf.safetensors")
    assert left.keys() == right.keys()
    for key in left:  # the weights are bit-equal (above); two trainings in one process agree up to rounding
        torch.testing.assert_close(left[key], right[key], rtol=1e-5, atol=1e-6, msg=key)
    card = json.loads((from_file.out / "ostaf.json").read_text())
    assert card["base"]["model"] == str(tiny_file)  # `ostaf generate` rebuilds the base from the file


def test_the_sd14_layout_is_recognised_as_sd1():
    preset = PRESETS["sd14-random"]
    with torch.device("meta"):  # shapes only: the 1 B parameters are never allocated
        modules = SimpleNamespace(
            unet=UNet2DConditionModel(**preset.unet),
            vae=AutoencoderKL(**preset.vae),
            text_encoder=CLIPTextModel(CLIPTextConfig(**preset.text_encoder)),
        )
    shapes = {key: tuple(value.shape) for key, value in pipeline_to_ldm(modules).items()}
    assert shapes["model.diffusion_model.input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert preset_for_shapes(shapes, "sd-v1-5.safetensors") == "sd14-random"


def test_other_families_and_other_files_get_one_clear_error(tiny_file, tmp_path):
    state = load_file(tiny_file)
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({**state, "conditioner.embedders.1.model.ln_final.weight": torch.ones(4)}, sdxl)
    with pytest.raises(OstafError, match="is a SDXL single file"):
        load_pipeline(str(sdxl))
    unet_only = tmp_path / "unet-only.safetensors"
    save_file({k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}, unet_only)
    with pytest.raises(OstafError, match="not an SD-1.x single-file checkpoint"):
        load_pipeline(str(unet_only))
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(tiny_file.read_bytes()[:100])
    with pytest.raises(OstafError, match="not a readable safetensors file"):
        load_pipeline(str(damaged))
    notes = tmp_path / "notes.txt"
    notes.write_text("weights?")
    with pytest.raises(OstafError, match="not a single-file checkpoint"):
        load_pipeline(str(notes))


class Payload:
    """Something only a full pickle can rebuild: weights-only loading must refuse it."""


def test_a_pickled_ckpt_is_refused_not_run(tmp_path):
    ckpt = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {"x": torch.ones(1)}, "callback": Payload()}, ckpt)
    with pytest.raises(OstafError, match="weights_only=True"):
        load_pipeline(str(ckpt))


def test_what_a_model_string_means_is_decided_in_one_place(tmp_path, tiny_file):
    """`model_kind`: random presets, trained presets, single files, folders and hub ids, without torch."""
    from ostaf.model_spec import model_kind

    folder = tmp_path / "sd"
    folder.mkdir()
    assert model_kind("tiny") == "preset" and model_kind("tiny-sdxl") == "preset"
    assert model_kind("attribute-world") == "trained"
    assert model_kind(str(tiny_file)) == "single-file"
    assert model_kind(str(folder)) == "folder"
    assert model_kind("runwayml/stable-diffusion-v1-5") == "hub"
