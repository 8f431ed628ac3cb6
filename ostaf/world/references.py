"""Held-out Attribute World references for personalisation: prompts, exact scores, a benchmark folder.

A reference is a world image whose (shape, colour, texture) combination pretraining never saw.
Its test prompts ask for the learned attribute through the placeholder and for the *other*
attribute in words, so one image tells both whether the attribute transferred and whether the
prompt still controls the rest:

    shape       "a green dotted object in the shape of *m"   → shape_iou ↑, text_control (colour+texture) ↑
    appearance  "a heart in the appearance of *a"            → appearance_dist ↓, appearance_match ↑,
                                                               text_control (shape) ↑
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ostaf import groups
from ostaf.benchmark import load_manifest, write_manifest
from ostaf.images import load_image, save_image
from ostaf.sweep import SweepIndex
from ostaf.world.evaluate import (
    appearance_distance,
    classify_colour,
    classify_shape,
    classify_texture,
    recover_mask,
    shape_iou,
)
from ostaf.world.generator import COLOURS, SHAPES, TEXTURE_WORDS, TEXTURES, Factors, WorldImage, render, sample

GROUP = "attribute-world"  # the benchmark group of world items (how the pipeline knows to score them exactly)
SOURCE = "world"  # --source world: held-out world references instead of the DVC benchmark
BENCHMARK_ITEMS = 8  # references per attribute in the `world` source


@dataclass(frozen=True)
class Reference:
    """A held-out world image, the attribute to learn from it, and the prompt that tests it."""

    id: str
    attribute: str
    seed: int
    class_name: str
    prompt: str
    words: str  # the prompt with the placeholder replaced by the reference's attribute in words

    def world(self) -> WorldImage:
        return sample(self.seed, held_out=True)


def _look(colour: str, texture: str) -> str:
    return f"{colour} {TEXTURE_WORDS[texture]}"


def prompt_for(attribute: str, factors: Factors, variant: int) -> tuple[str, str]:
    """(prompt, the same in words) asking for another look (shape) or another shape (appearance)."""
    colours = list(COLOURS)
    if attribute == "shape":
        colour = next(c for c in colours[variant % 8 :] + colours if c != factors.colour)
        texture = next(t for t in TEXTURES[variant % 4 :] + TEXTURES if t != factors.texture)
        head = f"a {_look(colour, texture)} object in the shape of"
        return f"{head} *m", f"{head} a {factors.shape}"
    shape = next(s for s in SHAPES[variant % len(SHAPES) :] + SHAPES if s != factors.shape)
    head = f"a {shape} in the appearance of"
    return f"{head} *a", f"{head} a {_look(factors.colour, factors.texture)} object"


def words_in(prompt: str) -> dict[str, str]:
    """The world's colour, texture and shape words a prompt names (outside the placeholders)."""
    words = prompt.replace(",", " ").split()
    texture_of = {word: texture for texture, word in TEXTURE_WORDS.items()}
    found = {}
    for word in words:
        if word in COLOURS:
            found["colour"] = word
        elif word in texture_of:
            found["texture"] = texture_of[word]
        elif word in SHAPES:
            found["shape"] = word
    return found


def class_name_of(attribute: str, factors: Factors) -> str:
    """The training prompt's class: the reference in words minus the attribute being learned."""
    return f"{_look(factors.colour, factors.texture)} object" if attribute == "shape" else factors.shape


def references(per_attribute: int) -> list[Reference]:
    """`per_attribute` held-out shape references (distinct shapes first) and appearance references
    (distinct colours first), each with its first test prompt."""
    refs: list[Reference] = []
    for attribute, start, key in (("shape", 10_000, "shape"), ("appearance", 20_000, "colour")):
        seen: set[str] = set()
        looks: set[tuple[str, str]] = set()
        seed = start
        while sum(r.attribute == attribute for r in refs) < per_attribute:
            f = sample(seed, held_out=True).factors
            value = getattr(f, key)
            pool = SHAPES if key == "shape" else tuple(COLOURS)
            fresh = value not in seen or len(seen) == len(pool)
            if fresh and (attribute == "shape" or (f.colour, f.texture) not in looks):
                seen.add(value)
                looks.add((f.colour, f.texture))
                prompt, words = prompt_for(attribute, f, len(seen))
                name = f.shape if attribute == "shape" else f"{f.colour}-{f.texture}"
                refs.append(
                    Reference(f"{attribute}-{name}-{seed}", attribute, seed, class_name_of(attribute, f), prompt, words)
                )
            seed += 1
    return refs


def score(image: np.ndarray, attribute: str, prompt: str, world: WorldImage) -> dict[str, float]:
    """The exact metrics of one generated image of `prompt` against the reference `world`."""
    mask = recover_mask(image)
    target = words_in(prompt)
    if attribute == "shape":
        text = classify_colour(image, mask) == target.get("colour") and classify_texture(image, mask) == target.get(
            "texture"
        )
        return {
            "shape_iou": shape_iou(image, world.mask),
            "shape_match": float(classify_shape(mask)[0] == world.factors.shape),
            "text_control": float(text and mask.any()),
        }
    f = world.factors
    match = classify_colour(image, mask) == f.colour and classify_texture(image, mask) == f.texture
    return {
        "appearance_dist": appearance_distance(image, world.image),
        "appearance_match": float(match and mask.any()),
        "text_control": float(classify_shape(mask)[0] == target.get("shape")),
    }


def score_composition(image: np.ndarray, shape_world: WorldImage, look_world: WorldImage) -> dict[str, float]:
    """A shape and an appearance learned from two references, in one image: does each come through?"""
    mask = recover_mask(image)
    look = look_world.factors
    match = classify_colour(image, mask) == look.colour and classify_texture(image, mask) == look.texture
    return {
        "shape_iou": shape_iou(image, shape_world.mask),
        "shape_match": float(classify_shape(mask)[0] == shape_world.factors.shape),
        "appearance_dist": appearance_distance(image, look_world.image),
        "appearance_match": float(match and mask.any()),
    }


def chance(ref: Reference) -> dict[str, float]:
    """What an answer with the *wrong* attribute scores, averaged over every wrong one (exact, by rendering):
    the floor that a learned attribute has to beat."""
    world = ref.world()
    f = world.factors
    if ref.attribute == "shape":
        others = [s for s in SHAPES if s != f.shape]
        ious = [
            shape_iou(render(Factors(s, f.colour, f.texture, "flat", f.cx, f.cy, f.scale)).image, world.mask)
            for s in others
        ]
        return {"shape_iou": float(np.mean(ious)), "shape_match": 1 / len(SHAPES)}
    looks = [(c, t) for c in COLOURS for t in TEXTURES if (c, t) != (f.colour, f.texture)]
    shape = words_in(ref.prompt)["shape"]
    dists = [appearance_distance(render(Factors(shape, c, t)).image, world.image) for c, t in looks]
    return {"appearance_dist": float(np.mean(dists)), "appearance_match": 1 / (len(COLOURS) * len(TEXTURES))}


def benchmark_item(ref: Reference, prompts: int = 3) -> dict:
    """`ref` as an Attribute Benchmark manifest entry (its image at images/<id>.png)."""
    f = ref.world().factors
    return {
        "id": ref.id,
        "attribute": ref.attribute,
        "image": f"images/{ref.id}.png",
        "class_name": ref.class_name,
        "prompts": list(dict.fromkeys([ref.prompt, *(prompt_for(ref.attribute, f, v)[0] for v in range(12))]))[
            :prompts
        ],
        "source": f"ostaf.world.sample({ref.seed}, held_out=True)",
        "license": "CC0-1.0 (procedurally generated)",
        "group": GROUP,
        "note": f.caption(),
    }


def seed_of(item: dict) -> int:
    """The generator seed of a world benchmark item (the last part of its id)."""
    return int(str(item["id"]).rsplit("-", 1)[1])


def write_benchmark(dest: str | Path, per_attribute: int = BENCHMARK_ITEMS) -> Path:
    """A benchmark folder (manifest.yaml + images/) of held-out world references, like the DVC one."""
    dest = Path(dest)
    refs = references(per_attribute)
    for ref in refs:
        save_image(Image.fromarray(ref.world().image), dest / "images" / f"{ref.id}.png")
    manifest = {
        "name": "attribute-world",
        "version": 1,
        "description": "Held-out Attribute World references (ostaf.world); exact ground truth from the seed",
        "items": [benchmark_item(r) for r in refs],
    }
    write_manifest(dest, manifest)
    load_manifest(dest)  # validate what was written
    return dest


def score_sweep(sweep: SweepIndex, item: dict) -> dict[tuple[str, float], dict[str, float]]:
    """(prompt, λ) → the exact world metrics averaged over seeds, for a sweep written by `ostaf generate`."""
    world = sample(seed_of(item), held_out=True)
    scores: dict[tuple[str, float], list[dict[str, float]]] = defaultdict(list)
    for key, paths in sweep.by_prompt_and_lambda().items():
        for path in paths:
            scores[key].append(score(np.asarray(load_image(path)), item["attribute"], key[0], world))
    return {key: {m: float(np.mean([s[m] for s in per])) for m in per[0]} for key, per in scores.items()}


groups.register(
    groups.Group(
        name=GROUP,
        source=SOURCE,
        write_benchmark=write_benchmark,
        score_sweep=score_sweep,
        columns={
            "shape": ("shape_iou", "shape_match", "text_control"),
            "appearance": ("appearance_dist", "appearance_match", "text_control"),
        },
        models=("attribute-world",),
    )
)
