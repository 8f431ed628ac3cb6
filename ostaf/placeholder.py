"""Placeholder tokens `*a`, `*m`, `*s`: their embedding, its image-conditioned init, and injection.

    e* = emb(attribute word) + α · f(CLIP image embedding of the reference)

with f a small LayerNorm-MLP (the authors' "appearance filter": Linear, ReLU,
Linear, LayerNorm) and α = 0.1. During training e* is computed from f on every
step and written into the text encoder's token-embedding *output* by a forward
hook, so the embedding table itself is never touched; afterwards the final e*
becomes the token's row, and a stock pipeline uses it from the prompt string.
On SDXL e* is one row per text encoder, concatenated, with one f per encoder's width
(`ostaf.conditioning.PromptEncoder` splits and routes it). A placeholder of N vectors (`--num-vectors`, as
diffusers' textual-inversion script) starts every vector at that e* and learns a residual per vector on top.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from ostaf.errors import OstafError


class TokenInitializer(nn.Module):
    """f: CLIP image embedding → text-embedding width."""

    def __init__(self, image_dim: int, text_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(image_dim, text_dim), nn.ReLU(), nn.Linear(text_dim, text_dim), nn.LayerNorm(text_dim)
        )

    def forward(self, image_embedding: torch.Tensor) -> torch.Tensor:
        return self.net(image_embedding)


class PerEncoderInitializer(nn.ModuleList):
    """One f per text encoder (SDXL), each projecting the image feature to its own width; outputs concatenated."""

    def __init__(self, image_dim: int, widths: list[int]) -> None:
        super().__init__([TokenInitializer(image_dim, width) for width in widths])

    def forward(self, image_embedding: torch.Tensor) -> torch.Tensor:
        return torch.cat([f(image_embedding) for f in self], dim=-1)


class PlaceholderEmbedding(nn.Module):
    """Computes e* for one token.

    With an image embedding, e* = emb(word) + α·f(image) and f trains. Without one
    (word-only init, no CLIP weights), e* = emb(word) + r with a zero-initialised
    learnable residual r, i.e. textual inversion started from the attribute word.
    With `vectors` = N > 1 the output is (N, D): e* + r_i, one zero-initialised residual per vector (the
    vectors start equal, as diffusers' script starts them all at the initializer token, and part where
    their positions in the prompt pull them apart); with one vector it is (D,), as before.
    """

    def __init__(
        self,
        word_embedding: torch.Tensor,
        image_embedding: torch.Tensor | None,
        alpha: float,
        widths: list[int] | None = None,
        vectors: int = 1,
    ) -> None:
        super().__init__()
        self.register_buffer("word_embedding", word_embedding.detach().float().clone())
        self.alpha = alpha
        self.initializer: nn.Module | None = None
        self.residual: nn.Parameter | None = None
        widths = widths or [word_embedding.shape[-1]]
        if sum(widths) != word_embedding.shape[-1]:
            raise OstafError(f"token widths {widths} do not add up to the word embedding's {word_embedding.shape[-1]}")
        if vectors < 1:
            raise OstafError(f"a placeholder needs at least one vector, got {vectors}")
        if vectors > 1 or image_embedding is None:
            shape = (vectors, *self.word_embedding.shape) if vectors > 1 else self.word_embedding.shape
            self.residual = nn.Parameter(torch.zeros(shape))
        if image_embedding is None:
            self.register_buffer("image_embedding", torch.zeros(0))
        else:
            self.register_buffer("image_embedding", image_embedding.detach().float().clone())
            dim = image_embedding.shape[-1]
            self.initializer = (
                TokenInitializer(dim, widths[0]) if len(widths) == 1 else PerEncoderInitializer(dim, widths)
            )

    def forward(self) -> torch.Tensor:
        row = self.word_embedding
        if self.initializer is not None:
            row = row + self.alpha * self.initializer(self.image_embedding)
        return row if self.residual is None else row + self.residual


def word_embedding(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, word: str) -> torch.Tensor:
    """Input embedding of `word` (the mean of its pieces if it is more than one token)."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    table = text_encoder.get_input_embeddings().weight
    return table[ids].detach().float().mean(dim=0)


def add_placeholder(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, token: str, row: torch.Tensor) -> int:
    """Add `token` to the vocabulary with embedding `row`; every existing row stays bit-identical."""
    if token in tokenizer.get_vocab():
        raise OstafError(
            f"the tokenizer already has {token!r}: a checkpoint of this attribute is already applied "
            "to this pipeline; load a fresh pipeline for a different one"
        )
    tokenizer.add_tokens([token])
    token_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = text_encoder.get_input_embeddings().weight
    if row.shape != table.shape[1:]:
        raise OstafError(
            f"token embedding for {token} has width {row.shape[-1]} but this text encoder needs {table.shape[1]}: "
            "the checkpoint was trained on another model"
        )
    with torch.no_grad():
        table[token_id] = row.to(table.dtype)
    return token_id
