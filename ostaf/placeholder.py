"""Placeholder tokens `*a`, `*m`, `*s`: their embedding, its image-conditioned init, and injection.

    e* = emb(attribute word) + α · f(CLIP image embedding of the reference)

with f a small LayerNorm-MLP (the authors' "appearance filter": Linear, ReLU,
Linear, LayerNorm) and α = 0.1. During training e* is computed from f on every
step and written into the text encoder's token-embedding *output* by a forward
hook, so the embedding table itself is never touched; afterwards the final e*
becomes the token's row, and a stock pipeline uses it from the prompt string.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
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


class PlaceholderEmbedding(nn.Module):
    """Computes e* for one token.

    With an image embedding, e* = emb(word) + α·f(image) and f trains. Without one
    (word-only init, no CLIP weights), e* = emb(word) + r with a zero-initialised
    learnable residual r, i.e. textual inversion started from the attribute word.
    """

    def __init__(self, word_embedding: torch.Tensor, image_embedding: torch.Tensor | None, alpha: float) -> None:
        super().__init__()
        self.register_buffer("word_embedding", word_embedding.detach().float().clone())
        self.alpha = alpha
        self.initializer: TokenInitializer | None = None
        if image_embedding is None:
            self.register_buffer("image_embedding", torch.zeros(0))
            self.residual = nn.Parameter(torch.zeros_like(self.word_embedding))
        else:
            self.register_buffer("image_embedding", image_embedding.detach().float().clone())
            self.initializer = TokenInitializer(image_embedding.shape[-1], word_embedding.shape[-1])

    def forward(self) -> torch.Tensor:
        if self.initializer is None:
            return self.word_embedding + self.residual
        return self.word_embedding + self.alpha * self.initializer(self.image_embedding)


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


def inject(text_encoder: CLIPTextModel, token_id: int, embedding: PlaceholderEmbedding) -> RemovableHandle:
    """Route the live e* (with its gradient) into every position of `token_id`."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        input_ids = args[0]  # (B, T)
        is_token = (input_ids == token_id).unsqueeze(-1)  # (B, T, 1)
        return torch.where(is_token, embedding().to(output.dtype), output)

    return text_encoder.get_input_embeddings().register_forward_hook(hook)
