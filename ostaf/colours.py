"""Colour words and the flat sRGB an image is painted with for each (`--views` fills silhouettes with them).

The attribute world draws these words with these values; a real model reads any red as "red".
"""

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
