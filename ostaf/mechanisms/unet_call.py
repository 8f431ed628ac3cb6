"""A U-Net call as torch's hooks see it: its text context swapped, its noise prediction read and replaced.

The generation-time mechanisms that change what one denoising step's U-Net reads (`--compose-switch`, the
prediction blend of `--token-lambda-blend prediction`) hook the stock pipeline's U-Net; the pipelines pass the
context by keyword, other callers positionally, and ask for a tuple or an output object.
"""

from __future__ import annotations

import torch

from ostaf.errors import OstafError


def with_context(args: tuple, kwargs: dict, context: torch.Tensor, option: str) -> tuple[tuple, dict]:
    """The call's arguments with `context` as its `encoder_hidden_states` (keyword or third positional); one error
    naming `option` when the call's batch is not the one the context was prepared for."""
    if "encoder_hidden_states" in kwargs:
        current = kwargs["encoder_hidden_states"]
        kwargs = kwargs | {"encoder_hidden_states": context.to(current.device, current.dtype)}
    else:
        current = args[2]
        args = (*args[:2], context.to(current.device, current.dtype), *args[3:])
    if current.shape != context.shape:
        raise OstafError(
            f"{option} prepared a context of shape {tuple(context.shape)} for a U-Net call with "
            f"{tuple(current.shape)}: it cannot be combined with a pass of another batch (reference attention)"
        )
    return args, kwargs


def output_sample(output) -> torch.Tensor:
    """The noise prediction of a U-Net call's output (a tuple with `return_dict=False`, else an output object)."""
    return output[0] if isinstance(output, tuple) else output.sample


def with_sample(output, sample: torch.Tensor):
    """`output` with its noise prediction replaced, in the form the caller asked for."""
    if isinstance(output, tuple):
        return (sample, *output[1:])
    return type(output)(sample=sample)
