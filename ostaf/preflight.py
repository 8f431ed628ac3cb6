"""What `train` and `generate` can refuse without torch: checked before seconds of imports and model loading.

A missing image, a checkpoint folder without its files, a prompt without the placeholder or an
output path that cannot be written are a user's typo; the answer should come in a fraction of a
second, not after torch and diffusers have loaded. The library's `train` / `generate` run the same
checks first, so the Python API and the pipeline's steps answer the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ostaf.attributes import check_prompt
from ostaf.checkpoint_format import checkpoint_card
from ostaf.errors import OstafError
from ostaf.images import load_image
from ostaf.io import check_output_dir
from ostaf.presets import PRESETS, TRAINED_PRESETS

if TYPE_CHECKING:
    from ostaf.config import GenerateConfig, TrainConfig

WEIGHT_FILES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")  # what `--model FILE` loads (`ostaf.single_file`)
PRESET_NAMES = ", ".join([*TRAINED_PRESETS, *PRESETS])


def is_single_file(model: str) -> bool:
    return Path(model).suffix.lower() in SINGLE_FILE_SUFFIXES


def check_model_location(model: str) -> None:
    """A path that names no model is refused here; presets and hub ids are judged by the loader."""
    path = Path(model).expanduser()
    looks_like_path = path.suffix in WEIGHT_FILES or model.startswith(("/", "./", "../", "~"))
    if not path.exists() and looks_like_path:
        raise OstafError(
            f"{model} does not exist. Nothing is downloaded: --model takes a diffusers SD-1.x or SDXL folder "
            f"(with model_index.json), an SD-1.x single file (.safetensors), a preset ({PRESET_NAMES}) or a hub id "
            "already in the Hugging Face cache"
        )
    if path.is_file() and not is_single_file(model):
        raise OstafError(
            f"{path} is a file but not a single-file checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)}): pass an SD-1.x "
            ".safetensors file or a diffusers folder (with model_index.json)"
        )
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise OstafError(
            f"{path} is not a diffusers Stable Diffusion folder (no model_index.json): point --model at the folder "
            "that holds model_index.json, unet/, vae/, text_encoder/, scheduler/ (SDXL: also text_encoder_2/; the "
            "tokenizers are optional)"
        )


def _check_image_or_folder(path: str) -> None:
    """An image file, or a folder written by `ostaf preprocess`."""
    if Path(path).is_dir():
        from ostaf.preprocess import load_preprocessed

        load_preprocessed(path)
    else:
        load_image(path)


def check_train_inputs(config: TrainConfig) -> None:
    check_output_dir(config.out)  # before minutes of work, not at the first save
    _check_image_or_folder(config.image)
    check_model_location(config.model)


def check_generate_inputs(config: GenerateConfig) -> None:
    check_output_dir(config.out)
    tokens = [checkpoint_card(folder)["token"] for folder in config.ckpt]
    if tokens:
        for prompt in config.prompt:
            check_prompt(prompt, tokens)
    if config.reference_attention > 0 and config.reference_image:  # read only then (an image or a folder)
        _check_image_or_folder(config.reference_image)
    if config.model:
        check_model_location(config.model)
