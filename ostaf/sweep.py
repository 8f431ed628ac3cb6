"""What a λ sweep leaves on disk, and the one reader of it: images, grids and ``images.json``."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ostaf.errors import OstafError
from ostaf.images import save_image
from ostaf.io import write_json


def slug(text: str, limit: int = 60) -> str:
    """A safe file name for a prompt."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower().replace("*", "")).strip("-")
    return name[:limit] or "prompt"


@dataclass
class PromptResult:
    prompt: str
    images: dict[tuple[float, int], Image.Image]  # (λ, seed) → image
    grid: Image.Image


@dataclass(frozen=True)
class SweepIndex:
    """The one reader (and namer) of a sweep's files: ``images.json`` and ``<prompt slug>/lam{λ}_seed{s}.png``."""

    root: Path
    entries: tuple[dict, ...]  # {"prompt", "lam", "seed", "path" (relative to root)}
    FILE = "images.json"

    @classmethod
    def read(cls, folder: str | Path) -> SweepIndex:
        folder = Path(folder)
        try:
            entries = json.loads((folder / cls.FILE).read_text())["images"]
        except (OSError, ValueError, KeyError) as err:
            raise OstafError(
                f"{folder} holds no readable {cls.FILE} ({err}): pass the --out of `ostaf generate`"
            ) from None
        return cls(folder, tuple(entries))

    @staticmethod
    def image_name(prompt: str, lam: float, seed: int) -> Path:
        return Path(slug(prompt)) / f"lam{lam:g}_seed{seed}.png"

    @staticmethod
    def grid_name(prompt: str) -> Path:
        return Path(slug(prompt)) / "grid.png"

    def path(self, prompt: str, lam: float, seed: int) -> Path:
        return self.root / self.image_name(prompt, lam, seed)

    def by_prompt_and_lambda(self) -> dict[tuple[str, float], list[Path]]:
        """(prompt, λ) → the image files of every seed, in a stable order."""
        groups: dict[tuple[str, float], list[Path]] = defaultdict(list)
        for entry in self.entries:
            groups[(entry["prompt"], entry["lam"])].append(self.root / entry["path"])
        return dict(sorted(groups.items()))


def write_sweep(out: str | Path, results: list[PromptResult], config: dict[str, Any]) -> SweepIndex:
    """Every image and grid of `results` under `out`, and the index that `SweepIndex.read` reads back."""
    out = Path(out)
    index = []
    for result in results:
        for (lam, seed), image in result.images.items():
            name = SweepIndex.image_name(result.prompt, lam, seed)
            save_image(image, out / name)
            index.append({"prompt": result.prompt, "lam": lam, "seed": seed, "path": str(name)})
        save_image(result.grid, out / SweepIndex.grid_name(result.prompt))
    write_json(out / SweepIndex.FILE, {"config": config, "images": index})
    return SweepIndex(out, tuple(index))
