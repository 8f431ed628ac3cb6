"""CLIP BPE tokenizer built offline from the vocabulary that open_clip ships.

No hub access: open_clip_torch carries OpenAI's BPE merges
(`bpe_simple_vocab_16e6.txt.gz`); the byte-level vocabulary is derived from them
exactly as CLIP does, and handed to transformers' `CLIPTokenizer`, the class
`StableDiffusionPipeline` expects.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from ostaf.errors import OstafError

N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes ×2 (+ "</w>"), merges, 2 specials = 49408
MODEL_MAX_LENGTH = 77


def bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise OstafError("open_clip_torch is not installed: `pip install open_clip_torch` (it ships the CLIP BPE)")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable-unicode table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")
    merges = tuple(tuple(m.split()) for m in lines[1 : N_MERGES + 1])  # line 0 is a header
    tokens = list(_bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


SDXL_PAD_TOKEN = "!"  # SDXL's second tokenizer (OpenCLIP bigG's) pads with "!" (id 0), not <|endoftext|>


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A fresh CLIP tokenizer (fresh, because placeholder tokens get added to it); SD-1.x and SDXL's first
    encoder pad with <|endoftext|>, SDXL's second with `SDXL_PAD_TOKEN`."""
    vocab, merges = _vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token)
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    return tokenizer
