"""The words of captioned views (`--views`), torch-free: what each attribute's views change, and how it is named.

A shape's views keep its silhouette and fill it with a named colour (``a blue object in the shape of *m``);
an appearance's views keep its surface and cut it to a named primitive (``a circle in the appearance of *a``).
The attribute world draws the palette's words with these very sRGB values (it imports them from here).
"""

from __future__ import annotations

from typing import NamedTuple

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
PRIMITIVES = ("circle", "square", "triangle", "diamond")  # drawn by `ostaf.mechanisms.views.primitive`


class ViewSlot(NamedTuple):
    """What an attribute's views change: the slot its view class fills, that slot's words, the default class."""

    slot: str
    words: tuple[str, ...]
    default_class: str


VIEW_SLOTS: dict[str, ViewSlot] = {
    "shape": ViewSlot("colour", tuple(PALETTE), "{colour} object"),
    "appearance": ViewSlot("shape", PRIMITIVES, "{shape}"),
}


def view_class_of(attribute: str, view_class: str) -> str:
    """The class template of `attribute`'s views: `view_class`, or the attribute's default when empty."""
    return view_class or VIEW_SLOTS[attribute].default_class


def check_views(attribute: str, views: int, view_class: str) -> None:
    """One error before any work for views the attribute cannot have."""
    if not views:
        return
    if attribute not in VIEW_SLOTS:
        raise OstafError(
            f"--views changes what the reference shares with nothing else: a shape's colour, an appearance's "
            f"outline; {attribute} has no views: drop --views"
        )
    slot, words, _ = VIEW_SLOTS[attribute]
    if views > len(words):
        raise OstafError(f"--views {views}: {attribute} has {len(words)} ({', '.join(words)}); use ≤ {len(words)}")
    template = view_class_of(attribute, view_class)
    if "{" + slot + "}" not in template:
        raise OstafError(
            f"--view-class {template!r} has no {{{slot}}}: write where each view's {slot} goes, "
            f"e.g. '{VIEW_SLOTS[attribute].default_class}'"
        )
