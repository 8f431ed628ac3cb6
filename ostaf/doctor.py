"""`ostaf doctor`: every model the pipeline needs, where it was looked for, and what to put where."""

from __future__ import annotations

import os
from pathlib import Path

from ostaf.image_encoder import CLIP_HUB_ID, CLIP_WEIGHTS_ENV, cached_hub_weights
from ostaf.metric_models import Location, locate_dino, locate_vgg
from ostaf.model_spec import is_preset
from ostaf.presets import TRAINED_PRESETS
from ostaf.segment import SAM_WEIGHTS_ENV, sam_weights_path


def locate_sd(model: str) -> Location:
    from huggingface_hub import try_to_load_from_cache

    name = "Stable Diffusion 1.x or XL (train, generate)"
    fix = "pass --model /path/to/folder (diffusers layout with model_index.json) or cache the hub snapshot"
    if is_preset(model):
        return Location(name, [f"preset {model}"], f"preset {model} (random weights)", fix)
    if model in TRAINED_PRESETS:
        path = TRAINED_PRESETS[model]()
        found = str(path) if (path / "model_index.json").is_file() else None
        return Location(name, [f"preset {model}: {path}"], found, "python -m ostaf.world.pretrain --out " + str(path))
    path = Path(model).expanduser()
    if path.is_file():
        return Location(name, [str(path)], _single_file_found(path), "pass an SD-1.x .safetensors file or a folder")
    if path.exists():
        found = str(path) if (path / "model_index.json").is_file() else None
        return Location(name, [str(path)], found, fix)
    try:
        cached = try_to_load_from_cache(model, "model_index.json")
    except ValueError:  # not a valid hub id either
        cached = None
    return Location(name, [f"HF cache: {model}"], str(Path(cached).parent) if isinstance(cached, str) else None, fix)


def _single_file_found(path: Path) -> str | None:
    from ostaf.errors import OstafError
    from ostaf.model_spec import is_single_file
    from ostaf.single_file import single_file_preset

    if not is_single_file(str(path)):
        return None
    try:
        return f"{path} (SD-1.x single file, {single_file_preset(path)} layout)"
    except OstafError:
        return None


def locate_clip() -> Location:
    env = os.environ.get(CLIP_WEIGHTS_ENV)
    found = env if env and Path(env).exists() else None
    cached = cached_hub_weights()
    return Location(
        "CLIP ViT-B/32 (token init, CLIP-T)",
        [f"${CLIP_WEIGHTS_ENV}={env or '(unset)'}", f"HF cache: {CLIP_HUB_ID}"],
        found or (str(cached) if cached else None),
        f"set {CLIP_WEIGHTS_ENV} to the open_clip ViT-B-32 laion2B-s34B-b79K checkpoint",
    )


def locate_sam() -> Location:
    path = sam_weights_path()
    return Location(
        "Segment Anything (foreground, IoU)",
        [f"${SAM_WEIGHTS_ENV}={path or '(unset)'}"],
        str(path) if path and path.is_file() else None,
        f"set {SAM_WEIGHTS_ENV} to e.g. sam_vit_b_01ec64.pth, or train with --no-segment",
    )


def report(model: str) -> tuple[str, bool]:
    """A readable report and whether everything was found."""
    locations = [locate_sd(model), locate_clip(), locate_sam(), locate_dino(), locate_vgg()]
    lines = []
    for loc in locations:
        lines.append(f"{'ok     ' if loc.found else 'MISSING'} {loc.name}")
        lines.append(f"        looked in: {'; '.join(loc.looked)}")
        lines.append(f"        found: {loc.found}" if loc.found else f"        to fix: {loc.fix}")
    lines.append("nothing is ever downloaded; presets (tiny, sd14-random, tiny-sdxl, sdxl-random) need no weights")
    return "\n".join(lines), all(loc.found for loc in locations)
