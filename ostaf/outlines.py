"""Named outlines in unit coordinates, torch-free: the star, heart, cross, ring and crescent that the attribute
world renders and that an appearance's extended views (`--view-extend`) are drawn as — one definition, so a view
captioned "a star" is the star the world's model learned the word from.

Each takes x (right) and y (down) arrays, the outline fitting the unit disc, and returns where it is inside.
"""

from __future__ import annotations

import numpy as np


def star(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Five rounded points, one up."""
    r, theta = np.hypot(x, y), np.arctan2(y, x)
    return r <= 0.45 + 0.55 * ((1 + np.cos(5 * (theta + np.pi / 2))) / 2) ** 3


def heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    hx, hy = 1.15 * x, -1.15 * y + 0.25
    return (hx**2 + hy**2 - 0.6) ** 3 - hx**2 * hy**3 <= 0


def cross(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ((np.abs(x) <= 0.3) & (np.abs(y) <= 0.95)) | ((np.abs(y) <= 0.3) & (np.abs(x) <= 0.95))


def ring(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = np.hypot(x, y)
    return (r <= 1) & (r >= 0.55)


def crescent(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (np.hypot(x, y) <= 1) & (np.hypot(x - 0.45, y + 0.1) >= 0.8)


OUTLINES = {"star": star, "heart": heart, "cross": cross, "ring": ring, "crescent": crescent}
