"""SD-1.x single-file checkpoints (`model.safetensors`, the form most weights are shared in), loaded offline.

diffusers' `from_single_file` converts the original (LDM) key layout itself, but it needs the
diffusers configs of the model, which it would fetch from the hub. We give it our own copy instead:
the architecture is recognised from the file's tensor shapes among the SD-1.x presets (`sd14-random`
holds SD-1.4/1.5's config values; `tiny` lets tests write a small file), and its configs are written
to a temporary folder for the load. SD-2.x and SDXL files are told apart and refused with a clear error.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTextConfig

from ostaf.errors import OstafError
from ostaf.models import quiet_diffusers
from ostaf.presets import PRESETS, SD_SCHEDULER, Preset
from ostaf.tokenizer import clip_tokenizer

SD1_PRESETS = ("sd14-random", "tiny")  # the SD-1.x architectures a single file can have, most common first

UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
VAE_CONV_IN = "first_stage_model.encoder.conv_in.weight"
TEXT_NORM = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
OTHER_FAMILIES = {  # a key only that family's files hold → its name
    "conditioner.embedders.1.model.ln_final.weight": "SDXL",
    "cond_stage_model.model.ln_final.weight": "SD 2.x",
}


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, read from the header (safetensors) or a memory-mapped weights-only load."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as file:
                return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
        except Exception as err:  # safetensors raises its own error types for a damaged header
            message = f"{path} is not a readable safetensors file ({err}): download or convert it again"
            raise OstafError(message) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise OstafError(
            f"cannot read {path} as plain weights ({err.__class__.__name__}): checkpoints are only loaded with "
            "torch.load(weights_only=True), which refuses pickled code; convert the file to .safetensors"
        ) from None
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


def single_file_preset(path: Path) -> str:
    """The SD-1.x preset whose configs match the file's shapes; one clear error for anything else."""
    return preset_for_shapes(tensor_shapes(path), path)


def preset_for_shapes(shapes: dict[str, tuple[int, ...]], path: Path | str) -> str:
    for key, family in OTHER_FAMILIES.items():
        if key in shapes:
            raise OstafError(
                f"{path} is a {family} single file; --model takes SD-1.x files (or a diffusers folder of any SD-1.x "
                "model): convert it to a diffusers folder or use an SD-1.x checkpoint"
            )
    missing = [key for key in (UNET_CONV_IN, VAE_CONV_IN, TEXT_NORM) if key not in shapes]
    if missing:
        raise OstafError(
            f"{path} is not an SD-1.x single-file checkpoint (no {missing[0]}): pass a full SD-1.x file "
            "(U-Net, VAE and text encoder in the original layout) or a diffusers folder"
        )
    for name in SD1_PRESETS:
        if _shapes_match(PRESETS[name], shapes):
            return name
    raise OstafError(
        f"{path} has an SD-1.x layout but an unknown size (U-Net width {shapes[UNET_CONV_IN][0]}, text width "
        f"{shapes[TEXT_NORM][0]}; SD-1.x has 320 and 768): convert it to a diffusers folder and pass that"
    )


def _shapes_match(preset: Preset, shapes: dict[str, tuple[int, ...]]) -> bool:
    unet, vae = preset.unet, preset.vae
    return (
        shapes[UNET_CONV_IN] == (unet["block_out_channels"][0], unet["in_channels"], 3, 3)
        and shapes[VAE_CONV_IN] == (vae["block_out_channels"][0], vae["in_channels"], 3, 3)
        and shapes[TEXT_NORM] == (preset.text_encoder["hidden_size"],)
    )


def write_diffusers_configs(preset: Preset, folder: Path) -> Path:
    """A diffusers model folder without weights: the configs `from_single_file` builds the modules from."""
    components = {
        "unet": ("diffusers", "UNet2DConditionModel", "config.json", preset.unet),
        "vae": ("diffusers", "AutoencoderKL", "config.json", preset.vae),
        "scheduler": ("diffusers", "PNDMScheduler", "scheduler_config.json", SD_SCHEDULER),
    }
    index = {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"]}
    index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    for name, (library, class_name, filename, config) in components.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / filename).write_text(json.dumps({"_class_name": class_name, **config}))
        index[name] = [library, class_name]
    (folder / "text_encoder").mkdir(exist_ok=True)
    CLIPTextConfig(**preset.text_encoder).to_json_file(folder / "text_encoder" / "config.json")
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def load_single_file(path: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    """An SD-1.x pipeline from one `.safetensors` (or weights-only `.ckpt`) file; nothing is downloaded."""
    preset = PRESETS[single_file_preset(path)]
    with tempfile.TemporaryDirectory(prefix="ostaf-sd1-config-") as folder:
        config = write_diffusers_configs(preset, Path(folder))
        try:
            with quiet_diffusers():
                pipe = StableDiffusionPipeline.from_single_file(
                    str(path),
                    config=str(config),
                    dtype=dtype,
                    local_files_only=True,
                    tokenizer=clip_tokenizer(),
                    safety_checker=None,
                    feature_extractor=None,
                    requires_safety_checker=False,
                )
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise OstafError(
                f"cannot load {path} as an SD-1.x single file ({err.__class__.__name__}: {err}); "
                "convert it to a diffusers folder and pass that"
            ) from None
    for name in ("unet", "vae", "text_encoder"):
        _own_memory(getattr(pipe, name))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _own_memory(module: torch.nn.Module) -> None:
    """Copy tensors out of the memory-mapped file into aligned memory of their own.

    A mapped file's tensors start at arbitrary byte offsets, and CPU kernels take other vector paths
    for unaligned data: the same weights would give results that differ in the last bits from any
    other load (and the file could change under the running model).
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()


def single_file_resolution(path: Path) -> int:
    return PRESETS[single_file_preset(path)].resolution
