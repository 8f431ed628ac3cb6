"""The words of captioned views (`--views`), torch-free: what each attribute's views change, and how it is named.

A shape's views keep its silhouette and fill it with a named colour (``a blue object in the shape of *m``), or,
with `--view-textures`, a named colour and texture (``a blue striped object in the shape of *m``); an
appearance's views keep its surface and cut it to a named primitive (``a circle in the appearance of *a``), or
with `--view-extend` continue it over a whole one; a style's views draw what the reference has along its object's
edge and around it (a rim, a cast shadow; its frame stays) around a named primitive in a named colour and texture
(``a red striped star in the style of *s``).
The attribute world draws the palette's and the textures' words with these very values (it imports them).
"""

from __future__ import annotations

import string
from typing import NamedTuple

import numpy as np

from ostaf.errors import OstafError

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "green": (30, 150, 50),
    "blue": (30, 60, 200),
    "yellow": (225, 200, 20),
    "purple": (130, 40, 160),
    "orange": (235, 120, 20),
    "cyan": (20, 180, 200),
    "black": (25, 25, 25),
}
# an appearance's view outlines, drawn by `ostaf.mechanisms.views.primitive` (the first four fit a cut inside the
# object; `--view-extend` draws any of them whole)
PRIMITIVES = ("circle", "square", "triangle", "diamond", "star", "heart", "cross", "ring", "crescent", "hexagon")
TEXTURES = ("plain", "striped", "dotted", "checkered")  # a fill's texture words (plain: one flat colour)
TEXTURE_SECOND = (250, 250, 250)  # every texture's second colour: white stripes, dots and squares
TEXTURE_REPEATS = 8  # a texture's periods across the image (the world: 8 px at 64 px)


def texture_mask(texture: str, height: int, width: int, period: int) -> np.ndarray:
    """Boolean (H, W): True where `texture`'s second colour goes, anchored to the image's top-left corner."""
    yy, xx = np.mgrid[:height, :width]
    if texture == "plain":
        return np.zeros((height, width), bool)
    if texture == "striped":  # horizontal bands, half a period each
        return (yy % period) >= period // 2
    if texture == "dotted":  # one dot per period cell, 1.6 px across at the world's period of 8
        return np.hypot((xx % period) - period / 2 + 0.5, (yy % period) - period / 2 + 0.5) <= period * 1.6 / 8
    if texture == "checkered":
        return ((xx // (period // 2)) + (yy // (period // 2))) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}; known: {', '.join(TEXTURES)}")


def texture_period(height: int, width: int) -> int:
    """The period in px of a view's texture: `TEXTURE_REPEATS` across the shorter side (at least 2)."""
    return max(2, min(height, width) // TEXTURE_REPEATS)


class ViewSlot(NamedTuple):
    """What an attribute's views change: the slots its view class fills (each with its `SLOT_WORDS`), and its
    default class."""

    slots: tuple[str, ...]
    default_class: str


SLOT_WORDS: dict[str, tuple[str, ...]] = {"colour": tuple(PALETTE), "texture": TEXTURES, "shape": PRIMITIVES}
VIEW_SLOTS: dict[str, ViewSlot] = {
    "shape": ViewSlot(("colour",), "{colour} object"),
    "appearance": ViewSlot(("shape",), "{shape}"),
    # a named outline in a named colour and texture, restyled: every look word of a style's prompts keeps working
    "style": ViewSlot(("colour", "texture", "shape"), "{colour} {texture} {shape}"),
}
TEXTURED_CLASS = "{colour} {texture} object"  # a shape's default view class with --view-textures


def unnamed_class(template: str) -> str:
    """A view class with its slots' words left out ('{colour} {texture} object' → 'object')."""
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    return " ".join(template.format(**dict.fromkeys(fields, "")).split())


def view_fills(attribute: str, views: int, textures: bool = False) -> list[dict[str, str]]:
    """What each of the `views` views is filled with, by slot: its colour, or its colour and texture (every
    colour once before any repeats, each with the next texture, so all 32 pairs are distinct), its primitive,
    or (a style's) its colour, texture and primitive, each slot's words in turn."""
    slots, _ = VIEW_SLOTS[attribute]
    if not textures:
        return [{slot: SLOT_WORDS[slot][i % len(SLOT_WORDS[slot])] for slot in slots} for i in range(views)]
    words = SLOT_WORDS["colour"]
    n = len(words)
    return [{"colour": words[i % n], "texture": TEXTURES[(i + i // n) % len(TEXTURES)]} for i in range(views)]


def view_class_of(attribute: str, view_class: str, textures: bool = False) -> str:
    """The class template of `attribute`'s views: `view_class`, or the attribute's default when empty."""
    return view_class or (TEXTURED_CLASS if textures else VIEW_SLOTS[attribute].default_class)


# the flags that change a shape's views: what each does, and what another attribute's views do instead
SHAPE_VIEW_FLAGS = {
    "--view-textures": "fills the views' silhouettes with textures",
    "--view-unnamed": "trains the views under a prompt without their words too",
    "--view-zoom": "enlarges the views' silhouettes",
}
VIEWS_DO = {  # what an attribute's views change (the error for a shape's flag on another attribute says it)
    "appearance": "keep the reference's surface on named outlines, which their class must say",
    "style": "keep the reference's style around named outlines in named looks, which their class must say",
}


def check_views(
    attribute: str,
    views: int,
    view_class: str,
    textures: bool = False,
    unnamed: bool = False,
    zoom: bool = False,
    extend: bool = False,
) -> None:
    """One error before any work for views the attribute cannot have."""
    if extend and not views:
        raise OstafError("--view-extend extends an appearance's surface over its views' outlines: add --views N")
    if extend and attribute != "appearance":
        raise OstafError(f"--view-extend extends an appearance's surface; {attribute}'s views have none: drop it")
    for (flag, does), on in zip(SHAPE_VIEW_FLAGS.items(), (textures, unnamed, zoom), strict=True):
        if on and not views:
            raise OstafError(f"{flag} {does}: add --views N (e.g. 8)")
        if on and attribute != "shape":
            raise OstafError(f"{flag} {does}; {attribute}'s views {VIEWS_DO[attribute]}: drop {flag}")
    if not views:
        return
    slots, _ = VIEW_SLOTS[attribute]
    words = max((SLOT_WORDS[slot] for slot in slots), key=len)
    most = len(words) * (len(TEXTURES) if textures else 1)
    if views > most:
        kinds = f"{len(words)} colours × {len(TEXTURES)} textures" if textures else ", ".join(words)
        raise OstafError(f"--views {views}: {attribute} has {most} ({kinds}); use ≤ {most}")
    template = view_class_of(attribute, view_class, textures)
    if not textures and "texture" not in slots and "{texture}" in template:
        raise OstafError(f"--view-class {template!r} names {{texture}}: add --view-textures, or drop it")
    for needed in (*slots, "texture") if textures else slots:
        if "{" + needed + "}" not in template:
            raise OstafError(
                f"--view-class {template!r} has no {{{needed}}}: write where each view's {needed} goes, "
                f"e.g. '{view_class_of(attribute, '', textures)}'"
            )
