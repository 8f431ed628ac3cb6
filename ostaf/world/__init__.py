"""Attribute World: a procedural domain where OSTAF's claims can be measured exactly.

`generator` renders objects with independent shape / appearance / style factors and exact masks;
`evaluate` scores images with the known rendering rules (no pretrained networks).
"""

from ostaf.world.generator import Factors, WorldImage, is_held_out, render, sample

__all__ = ["Factors", "WorldImage", "is_held_out", "render", "sample"]
