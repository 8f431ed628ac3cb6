"""Score a λ sweep against its reference with the paper's metrics for that attribute."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ostaf.images import load_image
from ostaf.metrics import clip_t, dino_similarity, gram_distance, gram_matrices, mask_iou
from ostaf.preprocess import Preprocessed
from ostaf.report import COLUMNS


@dataclass
class MetricModels:
    clip: Any
    dino: Any = None
    vgg: Any = None
    sam: Any = None


def load_metric_models(attribute: str, spec: str = "auto") -> MetricModels:
    """The networks `attribute`'s metrics need; `tiny` gives random stand-ins (code path only)."""
    from ostaf.image_encoder import load_image_encoder
    from ostaf.metric_models import load_dino, load_vgg_features
    from ostaf.segment import load_sam

    clip = load_image_encoder("tiny" if spec == "tiny" else "real").model
    if "iou" in COLUMNS[attribute]:
        return MetricModels(clip, sam=load_sam(spec))
    return MetricModels(clip, dino=load_dino(spec), vgg=load_vgg_features(spec))


def evaluate_sweep(generated: str | Path, reference: Preprocessed, models: MetricModels) -> list[dict]:
    """One row per (prompt, λ): the attribute's metrics averaged over seeds."""
    from ostaf.segment import foreground_mask

    generated = Path(generated)
    index = json.loads((generated / "images.json").read_text())["images"]
    groups: dict[tuple[str, float], list[Path]] = defaultdict(list)
    for entry in index:
        groups[(entry["prompt"], entry["lam"])].append(generated / entry["path"])
    reference_grams = gram_matrices(models.vgg, reference.image) if models.vgg is not None else None
    rows = []
    for (prompt, lam), paths in sorted(groups.items()):
        images = [load_image(p) for p in paths]
        row: dict[str, Any] = {"prompt": prompt, "lam": lam, "n": len(images), **clip_t(models.clip, images, prompt)}
        if models.dino is not None:
            row["dino"] = dino_similarity(models.dino, images, reference.image)
        if models.vgg is not None:
            row["gram"] = gram_distance(models.vgg, images, reference.image, reference_grams)
        if models.sam is not None:
            row["iou"] = float(np.mean([mask_iou(foreground_mask(im, models.sam), reference.mask) for im in images]))
        rows.append(row)
    return rows


def by_lambda(rows: list[dict]) -> dict[float, dict[str, float]]:
    """Metric means over prompts, per λ."""
    out: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for key, value in row.items():
            if key not in ("lam", "n") and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[row["lam"]][key].append(value)
    return {lam: {k: float(np.mean(v)) for k, v in metrics.items()} for lam, metrics in sorted(out.items())}
