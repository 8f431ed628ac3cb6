"""Device, precision and seeding: decided once per run, from the config."""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ostaf.errors import OstafError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OstafError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OstafError(f"device {name} asked for but no CUDA GPU is visible: use --device cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for frozen weights and activations, or None for plain fp32.

    Mixed precision is a GPU feature here: on CPU every run is fp32.
    """
    if device.type != "cuda":
        if precision in ("fp16", "bf16"):
            warnings.warn(f"precision {precision} is for GPUs; running fp32 on {device}", stacklevel=2)
        return None
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return the generator that drives a run's own sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build random weights from `seed` alone, leaving the caller's global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def progress_bar(iterable, **kwargs):
    """A tqdm bar; when nobody watches a terminal (KFP logs, files keep every redraw) it writes a line every
    ~10 % of the way instead (step, postfix such as the loss, and the rate)."""
    import sys

    from tqdm.auto import tqdm

    if sys.stderr.isatty():
        return tqdm(iterable, mininterval=0.1, **kwargs)
    total = kwargs.get("total") or (len(iterable) if hasattr(iterable, "__len__") else 0)
    every = max(1, total // 10) if total else 1
    return tqdm(iterable, mininterval=0, miniters=every, maxinterval=float("inf"), **kwargs)
