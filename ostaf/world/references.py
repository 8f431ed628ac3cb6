"""Held-out Attribute World references for personalisation: prompts, exact scores, a benchmark folder.

A reference is a world image whose (shape, colour, texture, style) combination pretraining never
saw. Its test prompts ask for the learned attribute through the placeholder and for the *other*
attributes in words, so one image tells whether the attribute transferred, whether the prompt still
controls the rest, and whether the reference's other attributes leaked in:

    shape       "a green dotted object in the shape of *m"   → shape_iou ↑, shape_match ↑,
                                                               text_control (colour + texture) ↑
    appearance  "a heart in the appearance of *a"            → appearance_dist ↓, appearance_match ↑,
                                                               text_control (shape) ↑
    style       "a blue striped ring in the style of *s"     → style_dist ↓, style_match ↑,
                                                               text_control (shape + colour + texture) ↑
    every one   leakage ↓: the reference's own value of an attribute the prompt names otherwise
                (its colour or texture for a shape reference, its shape for an appearance one)

References come in two splits drawn from disjoint seed streams: `validation` (every choice of
learning rate, steps, λ, loss weights is made there) and `test` (the table). `offset` skips the
first references of a stream, so a table can be re-run on references nobody tuned on.

World v3 adds references whose learned attribute no word names (`kind` = `seen`: a value of the
family's seen pool that pretraining drew without its word; `novel`: one it never drew), the other
attributes named as above. They are scored by `ostaf.world.measure` (the same columns: `shape_iou`
is the area-normalised silhouette IoU, `*_dist` the appearance or style gap, `*_match` the
calibrated threshold); their `words` prompt names the *nearest word* (the named value whose render
is closest to the reference), so the `words` row is the floor a textual inversion that found a word
could reach.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ostaf import groups
from ostaf.benchmark import load_manifest, write_manifest
from ostaf.errors import OstafError
from ostaf.images import load_image, save_image
from ostaf.sweep import SweepIndex
from ostaf.world import measure
from ostaf.world import unnamed as un
from ostaf.world.evaluate import (
    appearance_distance,
    classify_colour,
    classify_shape,
    classify_style,
    classify_texture,
    recover_mask,
    shape_iou,
    style_distance,
)
from ostaf.world.generator import (
    COLOURS,
    OUTLINE_WIDTH,
    SHAPES,
    STYLES,
    TEXTURE_WORDS,
    TEXTURES,
    Factors,
    WorldImage,
    render,
    sample,
    sample_factors,
    style_fits,
    with_value,
)

GROUP = "attribute-world"  # the benchmark group of world items (how the pipeline knows to score them exactly)
SOURCE = "world"  # --source world: held-out world references instead of the DVC benchmark
SOURCE_LAYOUT = 2  # 2: named and novel items in turn; a change rewrites the source's folder, as WORLD_VERSION does
BENCHMARK_ITEMS = 8  # references per attribute in the `world` source
WORLD_VERSION = "3"  # 2: styles, splits; 3: unnamed kinds; the `world` source's folder is rewritten on a change
ATTRIBUTES = ("shape", "appearance", "style")
SPLITS = ("validation", "test")
KINDS = ("named", "seen", "novel")  # named: v2's references; seen / novel: unnamed values (module doc)
UNNAMED_START = {
    ("validation", "seen"): 210_000,
    ("validation", "novel"): 240_000,
    ("test", "seen"): 310_000,
    ("test", "novel"): 340_000,
}  # + attribute index × STREAM
LOOK_BLOCK = 16  # appearance references: no look (colour and texture) twice among 16 in a row
STREAM = 10_000  # seeds per (split, attribute) stream: streams never overlap
STREAM_START = {
    ("test", "shape"): 10_000,
    ("test", "appearance"): 20_000,
    ("test", "style"): 30_000,
    ("validation", "shape"): 110_000,
    ("validation", "appearance"): 120_000,
    ("validation", "style"): 130_000,
}


@dataclass(frozen=True)
class Reference:
    """A held-out world image, the attribute to learn from it, and the prompt that tests it."""

    id: str
    attribute: str
    seed: int
    class_name: str
    prompt: str
    words: str  # the prompt with the placeholder replaced by the reference's attribute in words
    value: str = ""  # the unnamed value learned (`shape#17`); "" for a named reference

    @property
    def kind(self) -> str:
        return "named" if not self.value else "novel" if un.is_novel(self.value) else "seen"

    def world(self) -> WorldImage:
        return reference_world(self.attribute, self.seed, self.value)


def reference_world(attribute: str, seed: int, value: str = "") -> WorldImage:
    """The held-out world image of a reference: flat for shape and appearance, any style for style.

    With an unnamed `value`, the other attributes are named ones drawn from `seed` (a look that would
    hide a style's rim is drawn again)."""
    if not value:
        return sample(seed, held_out=True, style=None if attribute == "style" else "flat")
    rng = np.random.default_rng(seed)
    while True:
        f = with_value(sample_factors(rng, held_out=None, style="flat"), attribute, value)
        if style_fits(f.colour, f.style):
            return render(f)


def _look(colour: str, texture: str) -> str:
    return "" if un.is_unnamed(colour) else f"{colour} {TEXTURE_WORDS[texture]}"


def _other(values: tuple[str, ...], start: int, avoid: str) -> str:
    return next(v for v in values[start % len(values) :] + values if v != avoid)


def prompt_for(attribute: str, factors: Factors, variant: int) -> tuple[str, str]:
    """(prompt, the same in words) asking for the learned attribute and, in words, for other values of
    the rest: another look (shape), another shape (appearance), another shape and look (style)."""
    f = factors
    colour = _other(tuple(COLOURS), variant, f.colour)
    texture = _other(TEXTURES, variant, f.texture)
    shape = _other(SHAPES, variant, f.shape)
    if attribute == "shape":
        head = f"a {_look(colour, texture)} object in the shape of"
        return f"{head} *m", f"{head} a {f.shape}"
    if attribute == "appearance":
        head = f"a {shape} in the appearance of"
        return f"{head} *a", f"{head} a {_look(f.colour, f.texture)} object"
    head = f"a {_look(colour, texture)} {shape} in the style of"
    return f"{head} *s", f"{head} {f.style}"


def varied_class_prompts(attribute: str, factors: Factors, count: int = 4) -> list[str]:
    """The training prompt's class with other named values of the attributes not learned (variants after the
    test prompts' own): prior images of these keep fine-tuned weights following those words."""
    f, prompts = factors, []
    for variant in range(2, 2 + count):
        look = _look(_other(tuple(COLOURS), variant, f.colour), _other(TEXTURES, variant, f.texture))
        shape = _other(SHAPES, variant, f.shape)
        classes = {"shape": f"a {look} object", "appearance": f"a {shape}", "style": f"a {look} {shape}"}
        prompts.append(classes[attribute])
    return prompts


def named_answers(attribute: str, world: WorldImage, prompt: str) -> dict[str, tuple[float, bool]]:
    """Each named value of the attribute, drawn as the prompt asks for the rest (rendered, exact) → its
    (similarity or gap, match) against the unnamed reference: what answering with a word can score."""
    f, target = world.factors, words_in(prompt)
    colour, texture, shape = target.get("colour", "red"), target.get("texture", "solid"), target.get("shape", "circle")
    at = (f.cx, f.cy, f.scale)
    if attribute == "shape":
        answers = {s: Factors(s, colour, texture, "flat", *at) for s in SHAPES}
    elif attribute == "appearance":
        answers = {_look(c, t): Factors(shape, c, t, "flat", *at) for c in COLOURS for t in TEXTURES}
    else:
        answers = {y: Factors(shape, colour, texture, y, *at) for y in STYLES}
    out = {}
    for name, factors in answers.items():
        image = render(factors).image
        out[name] = unnamed_strength(image, recover_mask(image), attribute, world)
    return out


def nearest_word(attribute: str, world: WorldImage, prompt: str) -> str:
    """The named value whose render, as the prompt asks for it, is closest to the unnamed reference."""
    return _best(attribute, named_answers(attribute, world, prompt))


def _best(attribute: str, answers: dict[str, tuple[float, bool]]) -> str:
    sign = 1.0 if attribute == "shape" else -1.0  # a similarity (shape) or a gap
    return max(answers, key=lambda name: sign * answers[name][0])


def in_words(attribute: str, value: str) -> str:
    """How a prompt names a value in the placeholder's place: "a star", "a red striped object", "outlined"."""
    return {"shape": f"a {value}", "appearance": f"a {value} object", "style": value}[attribute]


def unnamed_stream(attribute: str, split: str, kind: str):
    """The references of one (split, attribute, kind) stream of unnamed values, in order: the n-th takes
    the n-th value of its kind (seen: the pool's even ids for validation, odd for test, less the
    `REDRAWN_SHAPES`; novel: ids from NOVEL_BASE × (1 validation, 2 test)) on the n-th seed."""
    if (split, kind) not in UNNAMED_START or attribute not in ATTRIBUTES:
        raise OstafError(
            f"unknown split/attribute/kind {split}/{attribute}/{kind}: splits {SPLITS}, "
            f"attributes {ATTRIBUTES}, unnamed kinds seen, novel"
        )
    start = UNNAMED_START[(split, kind)] + ATTRIBUTES.index(attribute) * STREAM
    if kind == "seen":
        ids = [i for i in range(split == "test", un.SEEN_POOL, 2) if attribute != "shape" or i not in un.REDRAWN_SHAPES]
    else:
        ids = range(un.NOVEL_BASE * (1 + (split == "test")), un.NOVEL_BASE * (2 + (split == "test")))
    for n, vid in enumerate(ids):
        value = un.unnamed(attribute, vid)
        seed = start + n
        world = reference_world(attribute, seed, value)
        f = world.factors
        prompt, _ = prompt_for(attribute, f, n + 1)
        words = prompt.replace(PLACEHOLDERS[attribute], in_words(attribute, nearest_word(attribute, world, prompt)))
        yield Reference(
            f"{attribute}-{kind}-{vid}-{seed}", attribute, seed, class_name_of(attribute, f), prompt, words, value
        )
    raise OstafError(f"the {split}/{attribute}/{kind} reference stream ran out of values; use a smaller offset")


PLACEHOLDERS = {"shape": "*m", "appearance": "*a", "style": "*s"}


def value_of(item_id: str) -> str:
    """The unnamed value of a world item id (`shape-novel-1000003-240003` → `shape#1000003`); "" if named."""
    parts = str(item_id).split("-")
    return un.unnamed(parts[0], int(parts[2])) if len(parts) == 4 and parts[1] in ("seen", "novel") else ""


def words_in(prompt: str) -> dict[str, str]:
    """The world's colour, texture, shape and style words a prompt names (outside the placeholders)."""
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
        elif word in STYLES:
            found["style"] = word
    return found


def class_name_of(attribute: str, factors: Factors) -> str:
    """The training prompt's class: the reference in words minus the attribute being learned."""
    f = factors
    if attribute == "shape":
        return f"{_look(f.colour, f.texture)} object"
    return f.shape if attribute == "appearance" else f"{_look(f.colour, f.texture)} {f.shape}"


def _distinct_key(attribute: str, f: Factors) -> str:
    """What references of an attribute differ in first: their shapes, colours or styles."""
    return {"shape": f.shape, "appearance": f.colour, "style": f.style}[attribute]


def _pool(attribute: str) -> tuple[str, ...]:
    return {"shape": SHAPES, "appearance": tuple(COLOURS), "style": STYLES}[attribute]


def reference_stream(attribute: str, split: str = "test"):
    """The references of one (split, attribute) stream, in order: every value of the attribute once
    before any repeats (distinct shapes, colours or styles), no appearance look twice in a block."""
    if (split, attribute) not in STREAM_START:
        raise OstafError(f"unknown split/attribute {split}/{attribute}: splits {SPLITS}, attributes {ATTRIBUTES}")
    start = STREAM_START[(split, attribute)]
    pool = _pool(attribute)
    seen: list[str] = []
    looks: list[tuple[str, str]] = []
    for seed in range(start, start + STREAM):
        f = reference_world(attribute, seed).factors
        value = _distinct_key(attribute, f)
        round_ = len(seen) // len(pool)  # values already used in this round of the pool
        fresh = value not in seen[round_ * len(pool) :]
        block = len(seen) // LOOK_BLOCK * LOOK_BLOCK  # looks differ within each block of references
        if fresh and (attribute != "appearance" or (f.colour, f.texture) not in looks[block:]):
            seen.append(value)
            looks.append((f.colour, f.texture))
            prompt, words = prompt_for(attribute, f, len(seen))
            name = {"shape": f.shape, "appearance": f"{f.colour}-{f.texture}", "style": f.style}[attribute]
            yield Reference(f"{attribute}-{name}-{seed}", attribute, seed, class_name_of(attribute, f), prompt, words)
    raise OstafError(f"the {split}/{attribute} reference stream ran out of seeds ({STREAM}); use a smaller offset")


def references(
    per_attribute: int,
    split: str = "test",
    offset: int = 0,
    attributes: tuple[str, ...] | list[str] = ATTRIBUTES,
    kind: str = "named",
) -> list[Reference]:
    """`per_attribute` references of each attribute from `split` and `kind`, skipping the first `offset` of
    each stream."""
    refs: list[Reference] = []
    for attribute in attributes:
        stream = reference_stream(attribute, split) if kind == "named" else unnamed_stream(attribute, split, kind)
        for _ in range(offset):
            next(stream)
        refs.extend(next(stream) for _ in range(per_attribute))
    return refs


def _appearance_is(image: np.ndarray, mask: np.ndarray, colour: str, texture: str, rim: int = 0) -> tuple[bool, bool]:
    """(colour, texture) as asked, read on the body inside a style's rim `rim` px wide (`measure.body_of`): the rim
    is the style's, not the prompt's colour (the texture's reader steps in `OUTLINE_WIDTH` by itself)."""
    colour_is = classify_colour(image, measure.body_of(mask, rim)) == colour
    return colour_is, classify_texture(image, measure.body_of(mask, rim - OUTLINE_WIDTH)) == texture


def unnamed_strength(image: np.ndarray, mask: np.ndarray, attribute: str, world: WorldImage) -> tuple[float, bool]:
    """(similarity or gap, match) of an image's attribute against an unnamed reference value."""
    if attribute == "shape":
        similarity = measure.shape_similarity(mask, world.mask)
        return similarity, similarity >= measure.SHAPE_MATCH
    if attribute == "appearance":
        gap = measure.appearance_gap(measure.look_of(image, mask), measure.look_of(world.image, world.mask)).total()
        return gap, gap <= measure.APPEARANCE_MATCH
    gap = measure.style_gap(measure.style_of(image, mask), measure.style_of(world.image, world.mask)).total()
    return gap, gap <= measure.STYLE_MATCH


# how each attribute's images are scored (`score`): a job's rows scored under another version are scored again
# from its images (`ostaf.world.jobs`). Style 2: the prompt's colour and texture are read inside the rim
# (`measure.body_of`), not over it — a rim of an unnamed colour read as the body failed text control.
SCORE_VERSION = {"shape": 1, "appearance": 1, "style": 2}

# the one place that says which metric is an attribute's strength (registered on the group: every table reads it)
STRENGTH = {
    "shape": groups.Strength("shape_iou", "shape_match", 1.0),
    "appearance": groups.Strength("appearance_dist", "appearance_match", -1.0),
    "style": groups.Strength("style_dist", "style_match", -1.0),
}


def score(image: np.ndarray, attribute: str, prompt: str, world: WorldImage) -> dict[str, float]:
    """The exact metrics of one generated image of `prompt` against the reference `world`: the attribute's
    strength (classifiers for a named value, `ostaf.world.measure` for an unnamed one), then what the prompt
    controls — the same for both."""
    mask = recover_mask(image)
    f = world.factors
    found = bool(mask.any())
    shape = classify_shape(mask)[0]
    colour_is_ref, texture_is_ref = _appearance_is(image, mask, f.colour, f.texture)
    if un.is_unnamed({"shape": f.shape, "appearance": f.colour, "style": f.style}[attribute]):
        value, match = unnamed_strength(image, mask, attribute, world)
        strength = {STRENGTH[attribute].score: value, STRENGTH[attribute].match: float(match and found)}
    elif attribute == "shape":
        strength = {"shape_iou": shape_iou(image, world.mask), "shape_match": float(shape == f.shape)}
    elif attribute == "appearance":
        strength = {
            "appearance_dist": appearance_distance(image, world.image),
            "appearance_match": float(colour_is_ref and texture_is_ref and found),
        }
    else:
        strength = {
            "style_dist": style_distance(image, world.image),
            "style_match": float(classify_style(image, mask) == f.style and found),
        }
    target = words_in(prompt)
    leaked_look = (colour_is_ref or texture_is_ref) and found
    if attribute == "shape":
        text = all(_appearance_is(image, mask, target.get("colour"), target.get("texture")))
        return strength | {"text_control": float(text and found), "leakage": float(leaked_look)}
    if attribute == "appearance":
        return strength | {"text_control": float(shape == target.get("shape")), "leakage": float(shape == f.shape)}
    rim = measure.rim_width(image, mask)
    look = _appearance_is(image, mask, target.get("colour"), target.get("texture"), rim)
    leaked_look = any(_appearance_is(image, mask, f.colour, f.texture, rim)) and found
    return strength | {
        "text_control": float(shape == target.get("shape") and all(look)),
        "leakage": float(shape == f.shape or leaked_look),
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
    the floor that a learned attribute has to beat. For an unnamed reference every word is wrong: the mean
    over all named values."""
    world = ref.world()
    f = world.factors
    if ref.value:
        answers = list(named_answers(ref.attribute, world, ref.prompt).values())
        value, match, _ = STRENGTH[ref.attribute]
        return {value: float(np.mean([a[0] for a in answers])), match: float(np.mean([a[1] for a in answers]))}
    if ref.attribute == "shape":
        others = [s for s in SHAPES if s != f.shape]
        ious = [
            shape_iou(render(Factors(s, f.colour, f.texture, "flat", f.cx, f.cy, f.scale)).image, world.mask)
            for s in others
        ]
        return {"shape_iou": float(np.mean(ious)), "shape_match": 1 / len(SHAPES)}
    target = words_in(ref.prompt)
    if ref.attribute == "appearance":
        looks = [(c, t) for c in COLOURS for t in TEXTURES if (c, t) != (f.colour, f.texture)]
        dists = [appearance_distance(render(Factors(target["shape"], c, t)).image, world.image) for c, t in looks]
        return {"appearance_dist": float(np.mean(dists)), "appearance_match": 1 / (len(COLOURS) * len(TEXTURES))}
    answer = (target["shape"], target["colour"], target["texture"])
    dists = [style_distance(render(Factors(*answer, s)).image, world.image) for s in STYLES if s != f.style]
    return {"style_dist": float(np.mean(dists)), "style_match": 1 / len(STYLES)}


def word_floor(ref: Reference) -> dict[str, float]:
    """The nearest-word floor of an unnamed reference: the best any named value scores (rendered exactly as
    the prompt asks) — what a perfect textual inversion that finds a word could reach."""
    answers = named_answers(ref.attribute, ref.world(), ref.prompt)
    value, match, _ = STRENGTH[ref.attribute]
    best = answers[_best(ref.attribute, answers)]
    return {value: float(best[0]), match: float(best[1])}


def reconstruction_limit(ref: Reference, vae) -> dict[str, float]:
    """The reference through the model's VAE and back, scored like a generated image: the most any method
    that generates through this VAE can reach."""
    import torch

    world = ref.world()
    pixels = torch.from_numpy(world.image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mean
        decoded = vae.decode(latents).sample.float()
    image = ((decoded[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    value, match, _ = STRENGTH[ref.attribute]
    scored = score(image, ref.attribute, ref.prompt.replace(PLACEHOLDERS[ref.attribute], ""), world)
    return {value: scored[value], match: scored[match]}


MIN_GAP = 0.02  # a reference whose limit beats its floor by less has no gap to close (gap_closed: n/a)


def gap_closed(attribute: str, value: float, floor: float, limit: float) -> float | None:
    """(value − floor) / (limit − floor) on the attribute's continuous metric (1: as good as the reference
    through the VAE; 0: no better than the nearest word); None where the VAE keeps less of the value than
    the nearest word has (no gap to close)."""
    span = limit - floor
    better = 1.0 if attribute == "shape" else -1.0  # a similarity (shape) or a gap
    return (value - floor) / span if better * span >= MIN_GAP else None


def reference_of(item: dict, prompt: str) -> Reference:
    """The reference behind a world benchmark item, asked with `prompt` (one of its prompts)."""
    return Reference(item["id"], item["attribute"], seed_of(item), item["class_name"], prompt, "", value_of(item["id"]))


def benchmark_item(ref: Reference, prompts: int = 2) -> dict:
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
        "source": f"ostaf.world.references.reference_world({ref.attribute!r}, {ref.seed}, {ref.value!r})",
        "license": "CC0-1.0 (procedurally generated)",
        "group": GROUP,
        "note": f.caption(),
    }


def seed_of(item: dict) -> int:
    """The generator seed of a world benchmark item (the last part of its id)."""
    return int(str(item["id"]).rsplit("-", 1)[1])


def write_benchmark(dest: str | Path, per_attribute: int = BENCHMARK_ITEMS) -> Path:
    """A benchmark folder (manifest.yaml + images/) of held-out world references, like the DVC one: per
    attribute, named and novel unnamed references in turn (`--per-attribute 2` takes one of each)."""
    dest = Path(dest)
    named, novel = references(per_attribute), references(per_attribute, kind="novel")
    refs = [
        ref
        for attribute in ATTRIBUTES
        for pair in zip(*((r for r in kind if r.attribute == attribute) for kind in (named, novel)), strict=True)
        for ref in pair
    ]
    for ref in refs:
        save_image(Image.fromarray(ref.world().image), dest / "images" / f"{ref.id}.png")
    manifest = {
        "name": "attribute-world",
        "version": 1,
        "description": "Held-out Attribute World references (ostaf.world), named and novel (no word names the "
        "attribute); exact ground truth from the seed",
        "items": [benchmark_item(r) for r in refs],
    }
    write_manifest(dest, manifest)
    load_manifest(dest)  # validate what was written
    return dest


def score_sweep(sweep: SweepIndex, item: dict, model: str) -> dict[tuple[str, float], dict[str, float]]:
    """(prompt, λ) → the exact world metrics averaged over seeds, for a sweep written by `ostaf generate`; an
    unnamed item's also hold its `floor` (the nearest word, as that prompt asks), `limit` (the reference
    through `model`'s VAE) and `gap_closed`."""
    world = reference_world(item["attribute"], seed_of(item), value_of(item["id"]))
    scores: dict[tuple[str, float], list[dict[str, float]]] = defaultdict(list)
    for key, paths in sweep.by_prompt_and_lambda().items():
        for path in paths:
            scores[key].append(score(np.asarray(load_image(path)), item["attribute"], key[0], world))
    means = {key: {m: float(np.mean([s[m] for s in per])) for m in per[0]} for key, per in scores.items()}
    if not value_of(item["id"]):
        return means
    metric = STRENGTH[item["attribute"]].score
    limit = reconstruction_limit(reference_of(item, item["prompts"][0]), _vae(model))[metric]
    floors = {prompt: word_floor(reference_of(item, prompt))[metric] for prompt, _ in means}
    for (prompt, _), metrics in means.items():
        closed = gap_closed(item["attribute"], metrics[metric], floors[prompt], limit)
        metrics |= {"floor": floors[prompt], "limit": limit} | ({"gap_closed": closed} if closed is not None else {})
    return means


@lru_cache(maxsize=2)
def _vae(model: str):
    """`model`'s VAE in float32 (the reconstruction limit's), loaded once per process."""
    from ostaf.models import load_pipeline

    return load_pipeline(model).vae.float()


groups.register(
    groups.Group(
        name=GROUP,
        source=SOURCE,
        write_benchmark=write_benchmark,
        score_sweep=score_sweep,
        columns={
            "shape": ("shape_iou", "shape_match", "gap_closed", "text_control", "leakage"),
            "appearance": ("appearance_dist", "appearance_match", "gap_closed", "text_control", "leakage"),
            "style": ("style_dist", "style_match", "gap_closed", "text_control", "leakage"),
        },
        strength={a: STRENGTH[a] for a in ATTRIBUTES},
        models=("attribute-world",),
        version=f"{WORLD_VERSION}.{SOURCE_LAYOUT}",
    )
)
