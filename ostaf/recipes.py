"""Named recipes: option values for `TrainConfig` and `GenerateConfig` that belong together.

A recipe is the one place a setting is written (the Makefile, the demo, the world experiment
and `--recipe` all read it); explicit options still win over it. Recipes layer: `--recipe A B` takes
A's values, then B's over them, so a model's settings (`world`) and a method's combine. A recipe can be for some
attributes only (`views`: shape): it layers in where the run's item has one of them, and is skipped elsewhere, so
`--recipe world disentangled views appearance-views style-views` trains each attribute with its own views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ostaf.attributes import get_attribute
from ostaf.config import EvaluateConfig, GenerateConfig, TrainConfig, validate_options
from ostaf.errors import OstafError


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    train: dict[str, Any] = field(default_factory=dict)
    generate: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    attributes: tuple[str, ...] = ()  # the attributes it is for; () = every one

    def applies_to(self, attribute: str | None) -> bool:
        """Whether the recipe layers in for an item of `attribute` (None: no item, only recipes for every one)."""
        return not self.attributes or attribute in self.attributes

    def __post_init__(self) -> None:
        for name in self.attributes:
            get_attribute(name)
        validate_options(TrainConfig, self.train)
        validate_options(GenerateConfig, self.generate)
        validate_options(EvaluateConfig, self.evaluate)


WORLD = Recipe(
    "world",
    "the Attribute World setting: no SAM (the background is known), word init (no CLIP weights), 200 steps at "
    "lr 1e-3 (chosen on validation references), each step's two micro-batches in one U-Net pass (--fused-accum: "
    "the same gradients, faster on a CPU), 25 DDIM steps at guidance 5, a 5-value λ sweep over 3 seeds",
    train=dict(segment=False, token_init="word", steps=200, lr=1e-3, checkpoint_every=50, fused_accum=True),
    generate=dict(num_steps=25, guidance=5.0, seeds=[0, 1, 2], lam=[0.0, 0.25, 0.5, 0.75, 1.0]),
)

DISENTANGLED = Recipe(
    "disentangled",
    "the world-v2 winner, chosen on validation references: the placeholder token alone (textual inversion; no "
    "offsets, so λ has no effect and one λ is generated) trained on the noisy three quarters of the noise schedule "
    "(--timestep-range 0.25 1), where the loss singles the attribute out. Test references (16 × 3 seeds): shape "
    "match 0.54, appearance 0.94, style 0.83, against 0.44 / 0.94 / 0.63 for the token on the whole schedule and "
    "0.46 / 0.23 / 0.44 for OSTAF lite (benchmarks/results/world-v2/timesteps/)",
    train=dict(trainable="token", timestep_range=[0.25, 1.0]),
    generate=dict(lam=[1.0]),
)

VIEWS = Recipe(
    "views",
    "for shapes (world v3's unnamed silhouettes; shape only): every weight of the U-Net's encoder blocks fine-tuned "
    "with the token, and 8 captioned views — the reference's silhouette in 8 named colours, each in a named texture "
    "('a blue striped object in the shape of *m'), each under its own prompt — so the silhouette is all the "
    "training images share and colour and texture words keep working; trained on the noisy three quarters of the "
    "schedule (--timestep-range 0.25 1), where the loss depends on the silhouette, for 400 steps (with --recipe "
    "world: lr 1e-3), generated at guidance 2.5 (the world's 5 rounds small lobes off). 16 test shapes × 3 seeds: "
    "seen match 0.88, 68 % of the nearest-word → VAE-limit gap closed, text control 1.00; novel 0.85, 66 %, 0.98 "
    "(at guidance 5: 0.81 / 62 % / 1.00 and 0.85 / 57 % / 0.96; at 200 steps: 48 % / 47 %; the floor 0.19; chosen "
    "on 12 + 12 validation shapes: 79 % / 57 % at 2.5, 68 % / 42 % at 5). At guidance 5 λ is its strength "
    "(--token-lambda: weights and token blended from the base model's): lam_rho 0.67 seen, 0.75 novel, text drop "
    "0.06 (benchmarks/results/world-v3/ablation/)",
    train=dict(trainable="blocks", views=8, view_textures=True, timestep_range=[0.25, 1.0], steps=400),
    # λ blends the tuned weights and token from the base's: a strength; guidance 2.5: the world's 5 rounds the
    # silhouette's lobes off (chosen on validation shapes; a real model's own scale replaces it: --guidance)
    generate=dict(token_lambda=True, guidance=2.5),
    attributes=("shape",),
)

APPEARANCE_VIEWS = Recipe(
    "appearance-views",
    "for appearances (world v3's unnamed looks; appearance only): every weight of the U-Net's decoder blocks "
    "fine-tuned with the token, and 10 captioned views — the reference's surface continued over each named outline "
    "(circle, square, triangle, diamond, star, heart, cross, ring, crescent, hexagon) at the object's own area, by "
    "the shifts by which it repeats ('a star in the appearance of *a') — so the look is all the training images "
    "share and the outline words keep working; trained on the noisy three quarters of the schedule for 400 steps "
    "(with --recipe world: lr 1e-3). λ is its strength (--token-lambda). 4 validation looks × 2 seeds: seen gap "
    "closed 0.78, novel 0.73, text control 1.00; 16 test looks × 3 seeds: novel 0.42 at text control 0.92, seen "
    "-0.15 at 0.96 (the token: -1.25 / -2.61), named match 0.94 (benchmarks/results/world-v3/ablation/)",
    train=dict(trainable="blocks", views=10, view_extend=True, timestep_range=[0.25, 1.0], steps=400),
    generate=dict(token_lambda=True),
    attributes=("appearance",),
)

STYLE_VIEWS = Recipe(
    "style-views",
    "for styles (style only): the placeholder token alone (no weights: every word of the prompt keeps its say) "
    "learns from the reference and 10 style views — a named outline of the object's area in a named colour and "
    "texture with what the reference draws along its edge and around it (rim, cast shadow) on its canvas (its frame "
    "kept), 'a red plain circle in the style of *s' — so the style is all the training images share; on the noisy "
    "three quarters of the schedule, 400 steps at lr 1e-2 (at the world's 1e-3 a named style's token stops half way "
    "to its word and draws the style under the reference's own caption only). λ blends e* from its nearest word "
    "(--token-lambda). 8 named validation styles × 2 seeds: match 1.00 against 0.75 for `disentangled`; 4 seen: gap "
    "closed -0.33 against -0.66 (text control 0.75 / 0.88); 4 novel: -0.91 against -0.75 (text control 1.00 / 0.88). "
    "16 test styles × 3 seeds: named match 1.00 at text control 0.94 (the token: 0.94 at 0.90); styles no word names "
    "lose — seen gap closed -1.63, novel -1.39 against the token's -1.03 / -0.93: a token reaches a style word, not "
    "past it (benchmarks/results/world-v3/ablation/)",
    train=dict(trainable="token", views=10, timestep_range=[0.25, 1.0], steps=400, lr=1e-2),
    generate=dict(token_lambda=True),
    attributes=("style",),
)

PAPER = Recipe(
    "paper",
    "the authors' settings: every option at its default (OSTAF paper hypernetworks with their random init, "
    "3000 steps at lr 1e-6, SAM, CLIP token init, 50 denoising steps)",
)
RECIPES: dict[str, Recipe] = {r.name: r for r in (PAPER, WORLD, DISENTANGLED, VIEWS, APPEARANCE_VIEWS, STYLE_VIEWS)}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise OstafError(f"unknown recipe {name!r}: use one of {', '.join(RECIPES)}") from None


def layered(names: list[str] | tuple[str, ...], attribute: str | None = None) -> Recipe | None:
    """Several recipes as one, later ones winning (`--recipe world disentangled`: the world's settings,
    then a method's); None for none. A recipe for some attributes only takes part where `attribute` is one of
    them (with no attribute: nowhere)."""
    recipes = [r for r in map(get_recipe, names) if r.applies_to(attribute)]
    if not recipes:
        return None
    train: dict[str, Any] = {}
    generate: dict[str, Any] = {}
    evaluate: dict[str, Any] = {}
    for r in recipes:
        train |= r.train
        generate |= r.generate
        evaluate |= r.evaluate
    return Recipe(
        "+".join(r.name for r in recipes), "; ".join(r.description for r in recipes), train, generate, evaluate
    )
