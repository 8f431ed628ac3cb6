"""Attention behaviours as processor wrappers, diffusers-style: one place wraps and unwraps them.

A wrapper holds the processor it wraps as `inner` and is swapped in through `Attention.set_processor`
(diffusers' public hook); unwrapping puts `inner` back wherever a wrapper of that type sits, however
deep in a stack of wrappers (a probe around a detached context around offsets, …).
"""

from __future__ import annotations

from collections.abc import Callable


def attention_layers(unet, keep: Callable[[str], bool] = lambda layer: True) -> list[str]:
    """The U-Net's attention module names (``…attn1``, ``…attn2``) that `keep` accepts, in U-Net order."""
    return [n.removesuffix(".processor") for n in unet.attn_processors if keep(n.removesuffix(".processor"))]


def wrap(unet, layers: list[str], make: Callable[[object, str], object]) -> list[str]:
    """Swap `make(current processor, layer)` into each of `layers`; returns them."""
    for layer in layers:
        attn = unet.get_submodule(layer)
        attn.set_processor(make(attn.processor, layer))
    return layers


def unwrap(unet, kind: type) -> None:
    """Remove every wrapper of type `kind`: its `inner` takes its place (also under other wrappers)."""
    for layer in attention_layers(unet):
        attn = unet.get_submodule(layer)
        outer, current = None, attn.processor
        while current is not None:
            if isinstance(current, kind):
                if outer is None:
                    attn.set_processor(current.inner)
                else:
                    outer.inner = current.inner
                current = current.inner
                continue
            outer, current = current, getattr(current, "inner", None)


def innermost(processor):
    """The processor at the bottom of a stack of wrappers."""
    while hasattr(processor, "inner"):
        processor = processor.inner
    return processor
