"""A style's views (`--views` on a style): what is drawn along an object's edge, carried to another outline.

In a flat picture a style lives where the object meets its surroundings and along the picture's border: a rim
inside the object's edge, a shadow cast beside it, a frame along the image's edge. `EdgeBand.of` reads the
reference around its object's edge without naming any of them — the rings of pixels at each distance inside the
edge (while their colour is one the object's inside does not have: its rim) and outside it (up to
`OUTER_REACH` of the image), each pixel with the direction the edge faces there — and `restyled` draws those
rings around a new outline: each pixel takes the reference's pixel at the same distance from the edge, facing
the same way. A shadow cast down and to the right stays down and to the right of a star; the frame, away from
the object, is the canvas, kept as it is. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RIM_TOLERANCE = 60.0  # RGB: an inner ring mostly this far from every colour deeper inside is a rim
MAX_RIM = 1 / 16  # the deepest rim ring read, as a share of the image's shorter side (4 px at 64)
OUTER_REACH = 1 / 8  # the outermost ring read outside the object, as a share of the shorter side (8 px at 64)
FILL_DISTANCE = 90.0  # RGB: a view's fill colour keeps this far from the band's colours
MAX_BODY_COLOURS = 512  # the body's distinct colours compared with a ring's (a photo has thousands: a sample)
NORMAL_BLUR = 1.5  # px: the blur of the mask whose gradient gives the edge's direction
BAND_COLOUR_SHARE = 0.05  # a colour covering this share of the outer band is one of the band's colours


def _rings(mask: np.ndarray, inside: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, its ring (the whole distance in px to the edge of `mask`, from the inside or the outside; 0
    on the other side) and the angle of the edge's outward normal at the edge point nearest to it (the gradient
    of the blurred mask there: smooth along a pixelated curve, where the step to the nearest pixel is not)."""
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    region = mask if inside else ~mask
    # the image's own border is not an edge: pad with the region's own value
    distance, (near_r, near_c) = distance_transform_edt(np.pad(region, 1, mode="edge"), return_indices=True)
    distance, near_r, near_c = distance[1:-1, 1:-1], near_r[1:-1, 1:-1] - 1, near_c[1:-1, 1:-1] - 1
    near_r, near_c = near_r.clip(0, mask.shape[0] - 1), near_c.clip(0, mask.shape[1] - 1)
    grad_r, grad_c = np.gradient(gaussian_filter(mask.astype(np.float64), NORMAL_BLUR, mode="nearest"))
    angle = np.arctan2(-grad_r[near_r, near_c], -grad_c[near_r, near_c])
    ring = np.where(region, np.rint(distance).astype(int), 0)
    return ring, angle


def inside_frame(shape: tuple[int, int], frame: int) -> np.ndarray:
    """Boolean (H, W): everything but the outer `frame` px of the image."""
    inside = np.zeros(shape, bool)
    inside[frame : shape[0] - frame, frame : shape[1] - frame] = True
    return inside


@dataclass(frozen=True)
class Ring:
    """One ring of the band: its pixels' edge directions, sorted, and their colours."""

    angles: np.ndarray  # (N,) radians, ascending
    colours: np.ndarray  # (N, 3) uint8

    @classmethod
    def of(cls, pixels: np.ndarray, where: np.ndarray, angle: np.ndarray) -> Ring:
        order = np.argsort(angle[where], kind="stable")
        return cls(angle[where][order], pixels[where][order])

    def facing(self, angles: np.ndarray) -> np.ndarray:
        """(M, 3): the colour of the ring's pixel whose edge faces closest to each of `angles` (circularly)."""
        wrapped = np.concatenate([self.angles - 2 * np.pi, self.angles, self.angles + 2 * np.pi])
        right = np.clip(np.searchsorted(wrapped, angles), 1, len(wrapped) - 1)
        left = right - 1
        nearest = np.where(angles - wrapped[left] <= wrapped[right] - angles, left, right)
        return self.colours[nearest % len(self.angles)]


@dataclass(frozen=True)
class EdgeBand:
    """The reference's style as rings along its object's edge, and the picture without the object."""

    canvas: np.ndarray  # (H, W, 3) uint8: the object and its outer rings filled from the nearest pixel beyond
    inner: list[Ring]  # rings 1, 2, … inside the edge that are its rim (none: no rim)
    outer: list[Ring]  # rings 1 … OUTER_REACH outside the edge (a cast shadow, or the background)
    drawable: np.ndarray  # (H, W) bool: where the rings may be drawn (inside the picture's frame)
    colours: np.ndarray  # (K, 3): the colours the band draws with (a view's fill keeps away from them)

    @classmethod
    def of(cls, image: np.ndarray, mask: np.ndarray, frame: int = 0) -> EdgeBand:
        """The band around `mask` in `image`; `frame`: the width of a band along the image's edge that is the
        picture's own (a frame), left out of the object's rings and kept on the canvas."""
        from scipy.ndimage import distance_transform_edt

        pixels = np.asarray(image, np.uint8)
        side = min(mask.shape)
        reach = max(2, round(OUTER_REACH * side))
        drawable = inside_frame(mask.shape, frame)
        ring_out, angle_out = _rings(mask, inside=False)
        outer = [Ring.of(pixels, (ring_out == k) & drawable, angle_out) for k in range(1, reach + 1)]
        ring_in, angle_in = _rings(mask, inside=True)
        deepest = max(1, round(MAX_RIM * side))
        body = ring_in > deepest
        if body.sum() < 4:  # a thin object: whatever is deepest in it
            body = ring_in >= max(1, ring_in.max())
        body_colours = np.unique(pixels[body].reshape(-1, 3), axis=0).astype(np.float64)
        body_colours = body_colours[:: max(1, len(body_colours) // MAX_BODY_COLOURS)]

        def unlike_body(where: np.ndarray) -> np.ndarray:
            colours = pixels[where].astype(np.float64)
            return np.linalg.norm(colours[:, None] - body_colours[None], axis=2).min(axis=1) > RIM_TOLERANCE

        inner: list[Ring] = []
        for k in range(1, deepest + 1):
            ring = ring_in == k
            if not ring.any():
                break
            rim = unlike_body(ring)
            if rim.mean() <= 0.5:  # mostly the body's colours: the rim (if any) ended
                break
            ring[ring] = rim  # a rounded ring also crosses a few body pixels: not the rim's
            inner.append(Ring.of(pixels, ring, angle_in))
        zone = (mask | ((ring_out >= 1) & (ring_out <= reach))) & drawable
        beyond = drawable & ~zone  # the picture's own background: what fills the object's place
        canvas = pixels.copy()
        if beyond.any():
            _, (near_r, near_c) = distance_transform_edt(~beyond, return_indices=True)
            canvas[zone] = pixels[near_r[zone], near_c[zone]]
        band = pixels[(ring_out >= 1) & (ring_out <= reach) & drawable].reshape(-1, 3)
        colours, counts = np.unique(band, axis=0, return_counts=True)
        common = colours[counts >= BAND_COLOUR_SHARE * max(1, len(band))]
        rims = np.reshape([np.median(r.colours.astype(np.float64), axis=0) for r in inner], (-1, 3))
        return cls(canvas, inner, outer, drawable, np.concatenate([common.astype(np.float64), rims]))

    def region(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Boolean (H, W): where `image` (the picture the band was read from, its object `mask`) draws the band —
        the edge's own rings (one each side), the rim's rings inside it, the pixels of the outer rings that are
        not the canvas (a cast shadow, a halo), and the picture's frame: the pixels a style draws, not the
        object's inside nor the plain background around it (`--mask-region edge`)."""
        pixels = np.asarray(image, np.float64)
        ring_in, _ = _rings(mask, inside=True)
        ring_out, _ = _rings(mask, inside=False)
        rim = (ring_in >= 1) & (ring_in <= max(1, len(self.inner)))
        drawn = np.linalg.norm(pixels - self.canvas, axis=-1) > RIM_TOLERANCE
        around = (ring_out == 1) | ((ring_out >= 1) & (ring_out <= len(self.outer)) & drawn)
        return rim | around | ~self.drawable

    def allows(self, colour: tuple[int, int, int]) -> bool:
        """Whether a view may fill its outline with `colour`: far from every colour the band draws with."""
        return bool(
            len(self.colours) == 0
            or np.linalg.norm(self.colours - np.asarray(colour, np.float64), axis=1).min() > FILL_DISTANCE
        )

    def restyled(self, target: np.ndarray, fill: np.ndarray | tuple[int, int, int]) -> np.ndarray:
        """(H, W, 3) uint8: the canvas with `target` filled from `fill` (a colour, or an (H, W, 3) image) and the
        band drawn along its edge (each pixel the reference's at the same ring, facing the same way)."""
        out = self.canvas.copy()
        ring_out, angle_out = _rings(target, inside=False)
        for k, ring in enumerate(self.outer, 1):
            where = (ring_out == k) & self.drawable
            if where.any() and len(ring.angles):
                out[where] = ring.facing(angle_out[where])
        out[target] = fill if np.ndim(fill) == 1 else np.asarray(fill)[target]
        ring_in, angle_in = _rings(target, inside=True)
        for k, ring in enumerate(self.inner, 1):
            where = ring_in == k
            if where.any():
                out[where] = ring.facing(angle_in[where])
        return out
