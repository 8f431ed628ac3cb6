"""Score a λ sweep against its reference with the paper's metrics for that attribute."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ostaf.config import EvaluateConfig
from ostaf.images import load_image
from ostaf.metrics import clip_t, dino_similarity, gram_distance, gram_matrices, mask_iou
from ostaf.model_spec import is_any_preset
from ostaf.preprocess import Preprocessed
from ostaf.report import COLUMNS
from ostaf.sweep import SweepIndex


@dataclass
class MetricModels:
    clip: Any = None  # None: the metric is not computed (no weights, and no stand-ins asked for)
    dino: Any = None
    vgg: Any = None
    sam: Any = None


def metric_spec(config: EvaluateConfig, model: str) -> str:
    """What the metric loaders take for a run on `model`: 'auto' (real weights), 'tiny' (random stand-ins, only
    when asked for), or 'none' (a preset with `auto`: no real weights exist for it here, and stand-in numbers
    would mean nothing, so the paper's metrics are n/a)."""
    if config.metric_models == "tiny":
        return "tiny"
    if config.metric_models == "auto" and is_any_preset(model):
        return "none"
    return "auto"


def load_metric_models(attribute: str, spec: str = "auto") -> MetricModels:
    """The networks `attribute`'s metrics need (`spec` as `metric_spec` gives it); `tiny`: random stand-ins."""
    from ostaf.image_encoder import load_image_encoder
    from ostaf.metric_models import load_dino, load_vgg_features
    from ostaf.segment import load_sam

    if spec == "none":
        return MetricModels()
    clip = load_image_encoder("tiny" if spec == "tiny" else "real").model
    if "iou" in COLUMNS[attribute]:
        return MetricModels(clip, sam=load_sam(spec))
    return MetricModels(clip, dino=load_dino(spec), vgg=load_vgg_features(spec))


def evaluate_sweep(generated: str | Path, reference: Preprocessed, models: MetricModels) -> list[dict]:
    """One row per (prompt, λ): the attribute's metrics averaged over seeds."""
    from ostaf.segment import foreground_mask

    groups = SweepIndex.read(generated).by_prompt_and_lambda()
    reference_grams = gram_matrices(models.vgg, reference.image) if models.vgg is not None else None
    rows = []
    for (prompt, lam), paths in groups.items():
        images = [load_image(p) for p in paths]
        row: dict[str, Any] = {"prompt": prompt, "lam": lam, "n": len(images)}
        if models.clip is not None:
            row |= clip_t(models.clip, images, prompt)
        if models.dino is not None:
            row["dino"] = dino_similarity(models.dino, images, reference.image)
        if models.vgg is not None:
            row["gram"] = gram_distance(models.vgg, images, reference.image, reference_grams)
        if models.sam is not None:
            row["iou"] = float(np.mean([mask_iou(foreground_mask(im, models.sam), reference.mask) for im in images]))
        rows.append(row)
    return rows
