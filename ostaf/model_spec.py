"""What a `--model` string means, torch-free, in one place: a random-weight preset, a trained preset shipped
with the package (its folder), an SD-1.x single file, a diffusers folder, or a hub id in the offline cache.

Preflight refuses a path that names no model before any import of torch; `ostaf.models.load_pipeline` loads
what `model_kind` says; the CLI and the pipeline steps read a model's native size here without loading it.
The preset tables themselves live in `ostaf.presets`.
"""

from __future__ import annotations

from pathlib import Path

from ostaf.errors import OstafError
from ostaf.presets import PRESETS, TRAINED_PRESETS, WORLD_MODEL_ENV

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


def is_preset(model: str) -> bool:
    """A random-weight preset (`tiny`, `sd14-random`, `tiny-sdxl`, `sdxl-random`); trained presets load through
    `load_pipeline` too."""
    return model in PRESETS


def is_any_preset(model: str) -> bool:
    """A preset of either kind: random weights, or trained weights shipped with the package."""
    return model in PRESETS or model in TRAINED_PRESETS


def resolve_model(model: str) -> str:
    """The folder behind a trained preset's name, or `model` unchanged."""
    if model not in TRAINED_PRESETS:
        return model
    path = TRAINED_PRESETS[model]()
    if not (path / "model_index.json").is_file():
        raise OstafError(
            f"the {model} model is not at {path}: it ships inside the ostaf package (reinstall it), or rebuild it "
            f"with `python -m ostaf.world.pretrain --out {path}` (about 30 min on 2 cores), or point "
            f"${WORLD_MODEL_ENV} at a copy"
        )
    return str(path)


def model_resolution(model: str) -> int:
    """The native image size of `model` without loading weights (presets, local folders; else SD's 512)."""
    import json

    if model in PRESETS:
        return PRESETS[model].resolution
    folder = Path(resolve_model(model)).expanduser()
    if folder.is_file():
        from ostaf.single_file import single_file_resolution

        return single_file_resolution(folder) if is_single_file(model) else 512
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return 512
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def model_kind(model: str) -> str:
    """ "preset" (random weights), "trained" (a preset with weights: a folder), "single-file", "folder" or "hub"."""
    if model in PRESETS:
        return "preset"
    if model in TRAINED_PRESETS:
        return "trained"
    path = Path(model).expanduser()
    if path.is_file() and is_single_file(model):
        return "single-file"
    return "folder" if path.is_dir() else "hub"
