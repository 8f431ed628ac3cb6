"""Attention behaviours as processor wrappers, diffusers-style: one place wraps and unwraps them.

A wrapper holds the processor it wraps as `inner` and is swapped in through `Attention.set_processor`
(diffusers' public hook); unwrapping puts `inner` back wherever a wrapper of that type sits, however
deep in a stack of wrappers (a probe around a detached context around offsets, …).

Where a wrapper goes in a stack is its class's `stack_order` (larger: further out), whatever order they are
installed in: an attention probe (binding) outermost, so it records the layer once; the dual path around the
reference attention, so both of its paths see the reference; the reference attention and the detached
context around the processor that computes attention (offsets, or diffusers' own), which is innermost.
"""

from __future__ import annotations

from collections.abc import Callable


def attention_layers(unet, keep: Callable[[str], bool] = lambda layer: True) -> list[str]:
    """The U-Net's attention module names (``…attn1``, ``…attn2``) that `keep` accepts, in U-Net order."""
    return [n.removesuffix(".processor") for n in unet.attn_processors if keep(n.removesuffix(".processor"))]


def order_of(processor) -> int:
    """A processor's place in a stack (`stack_order`; one that wraps nothing is the innermost, 0)."""
    return getattr(processor, "stack_order", 0) if hasattr(processor, "inner") else 0


def wrap(unet, layers: list[str], make: Callable[[object, str], object]) -> list[str]:
    """Insert `make(inner, layer)` into each of `layers`' stack at its `stack_order`: around the first processor
    of a lower order (every wrapper of a higher one stays outside it); returns the layers."""
    for layer in layers:
        attn = unet.get_submodule(layer)
        outer, current = None, attn.processor
        wrapper = make(current, layer)
        while order_of(current) > order_of(wrapper):
            outer, current = current, current.inner
        wrapper.inner = current
        if outer is None:
            attn.set_processor(wrapper)
        else:
            outer.inner = wrapper
    return layers


def unwrap(unet, kind: type, layers: list[str] | None = None) -> None:
    """Remove every wrapper of type `kind` (in `layers`, default all): its `inner` takes its place (also under
    other wrappers)."""
    for layer in attention_layers(unet) if layers is None else layers:
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
