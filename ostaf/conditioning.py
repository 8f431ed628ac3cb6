"""The text side of a pipeline, for SD-1.x (one CLIP encoder) and SDXL (two) alike.

Training, the mechanisms and the benchmarks drive the U-Net themselves, so they need what the pipelines'
`encode_prompt` computes, exactly as diffusers computes it:

- SD-1.x: the text encoder's last hidden states;
- SDXL: the penultimate hidden states of both encoders, concatenated along the width, the second encoder's
  projected (pooled) output, and the six micro-conditioning numbers (original size, crop top-left, target
  size) that diffusers' SDXL trainers pass as ``add_time_ids``.

A placeholder token is one vector across the encoders: e* is the concatenation of one row per encoder (`widths`
splits it), so the token's init, regulariser, nearest-word searches and checkpoint stay the same code for both.
A placeholder of N vectors (`--num-vectors`) is N such rows, (N, ΣD), under diffusers' multi-vector convention:
the tokens `*m`, `*m_1`, …, `*m_{N-1}` with consecutive ids, and a prompt's `*m` read as all N of them
(`TextualInversionLoaderMixin.maybe_convert_prompt`, which the stock pipelines call too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import CLIPTokenizer

from ostaf.errors import OstafError
from ostaf.placeholder import add_placeholder, word_embedding


@dataclass
class Conditioning:
    """What the U-Net reads besides the noisy latents and t."""

    states: torch.Tensor  # (B, T, D): cross-attention context
    pooled: torch.Tensor | None = None  # (B, P): SDXL's pooled text embedding
    time_ids: torch.Tensor | None = None  # (B, 6): SDXL's size/crop micro-conditioning

    def expand(self, batch: int) -> Conditioning:
        """The same conditioning for `batch` samples (views, no copies)."""

        def grow(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.expand(batch, *x.shape[1:])

        return Conditioning(grow(self.states), grow(self.pooled), grow(self.time_ids))

    def select(self, index: torch.Tensor) -> Conditioning:
        """Row `index[b]` for each sample b: a batch drawn from several prompts' conditioning."""

        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[index.to(x.device)]

        return Conditioning(pick(self.states), pick(self.pooled), pick(self.time_ids))

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """The conditionings of several sets of samples as one batch, in order (one U-Net pass for all)."""

        def join(xs: list[torch.Tensor | None]) -> torch.Tensor | None:
            if all(x is None for x in xs):
                return None
            if any(x is None for x in xs):
                raise ValueError("conditionings to join must all carry SDXL's pooled embedding and time ids, or none")
            return torch.cat(xs)

        return Conditioning(*(join([getattr(p, f.name) for p in parts]) for f in fields(Conditioning)))

    def unet_kwargs(self, dtype: torch.dtype | None = None) -> dict:
        """Keyword arguments of `UNet2DConditionModel.forward` (`dtype`: the U-Net's, for its context)."""
        states = self.states if dtype is None else self.states.to(dtype)
        if self.pooled is None:
            return {"encoder_hidden_states": states}
        if self.time_ids is None:
            raise OstafError("an SDXL U-Net needs the size/crop micro-conditioning (add_time_ids) with the prompt")
        added = {"text_embeds": self.pooled.to(states), "time_ids": self.time_ids.to(states)}
        return {"encoder_hidden_states": states, "added_cond_kwargs": added}


def micro_conditioning(
    original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]
) -> torch.Tensor:
    """SDXL's ``add_time_ids``, (1, 6): as `StableDiffusionXLPipeline._get_add_time_ids` and the SDXL trainers."""
    return torch.tensor([[*original_size, *crop_top_left, *target_size]], dtype=torch.float32)


class PromptEncoder:
    """The (tokenizer, text encoder) pairs of a pipeline and the conditioning they give a prompt."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.pairs: list[tuple[CLIPTokenizer, nn.Module]] = [(pipe.tokenizer, pipe.text_encoder)]
        if getattr(pipe, "text_encoder_2", None) is not None:
            self.pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
        # SDXL's unconditional context is zeros, not the empty prompt's (its base model's config)
        self.zeros_for_empty = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))

    @property
    def xl(self) -> bool:
        return len(self.pairs) > 1

    @property
    def tokenizer(self) -> CLIPTokenizer:
        return self.pairs[0][0]

    @property
    def widths(self) -> list[int]:
        """Each encoder's token-embedding width: e* is their concatenation."""
        return [encoder.get_input_embeddings().weight.shape[1] for _, encoder in self.pairs]

    @property
    def device(self) -> torch.device:
        return self.pairs[0][1].device

    # -- prompts -------------------------------------------------------------------------------
    def ids(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """(E, B, T) token ids, one row per encoder (each tokenizer pads its own way), on the encoders' device."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = [
            tokenizer(
                self.expand(prompts, tokenizer),
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for tokenizer, _ in self.pairs
        ]
        return torch.stack(rows).to(self.device)

    def expand(self, prompts: list[str], tokenizer: CLIPTokenizer) -> list[str]:
        """Each multi-vector placeholder written out as its N tokens, as the stock pipeline reads the prompt."""
        convert = getattr(self.pipe, "maybe_convert_prompt", None)
        return prompts if convert is None else convert(prompts, tokenizer)

    def token_ids(self, token: str) -> list[int]:
        """The ids of a placeholder's vectors: `token`, `token_1`, … (one id for a single vector)."""
        vocab = self.tokenizer.get_vocab()
        ids = [vocab[token]] if token in vocab else []
        while ids and f"{token}_{len(ids)}" in vocab:
            ids.append(vocab[f"{token}_{len(ids)}"])
        return ids

    def encode(self, ids: torch.Tensor) -> Conditioning:
        """The U-Net's conditioning for (E, B, T) ids, as the pipelines' `encode_prompt` computes it (SDXL: the
        time ids, which depend on the image and not on the prompt, are the caller's to set)."""
        if not self.xl:
            return Conditioning(self.pairs[0][1](ids[0])[0])
        states, pooled = [], None
        for (_, encoder), rows in zip(self.pairs, ids, strict=True):
            out = encoder(rows, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's projected output (CLIPTextModelWithProjection.text_embeds)
        return Conditioning(torch.cat(states, dim=-1), pooled)

    def at_size(self, prompts: str | Sequence[str], size: int) -> Conditioning:
        """What a generation of `size` × `size` px conditions on for `prompts` (SDXL: the pipeline's default
        micro-conditioning, original = target = the image size, no crop)."""
        return self._sized(self.encode(self.ids(prompts)), size)

    def unconditional_at(self, size: int, batch: int = 1) -> Conditioning:
        """The unconditional half of a `size` × `size` px generation, as the pipeline makes it (SDXL's base
        model: zeros, `force_zeros_for_empty_prompt`)."""
        return self._sized(self.unconditional(batch), size)

    def _sized(self, cond: Conditioning, size: int) -> Conditioning:
        if self.xl:
            cond.time_ids = micro_conditioning((size, size), (0, 0), (size, size)).expand(cond.pooled.shape[0], -1)
        return cond

    def unconditional(self, batch: int) -> Conditioning:
        """The empty prompt's conditioning (zeros where the model says so), for `batch` samples."""
        cond = self.encode(self.ids([""] * batch))
        if self.zeros_for_empty:
            cond.states, cond.pooled = torch.zeros_like(cond.states), torch.zeros_like(cond.pooled)
        return cond

    # -- the placeholder's rows ------------------------------------------------------------------
    def split(self, row: torch.Tensor) -> list[torch.Tensor]:
        """e* (concatenated; (N, ΣD) for N vectors) → one slice per encoder; one clear error if it was learned on
        another model."""
        if row.shape[-1] != sum(self.widths):
            raise OstafError(
                f"token embedding has width {row.shape[-1]} but this model's text encoders need "
                f"{' + '.join(map(str, self.widths))}: the checkpoint was trained on another model"
            )
        return list(torch.split(row, self.widths, dim=-1))

    def word_row(self, word: str) -> torch.Tensor:
        """The input embedding of `word` in every encoder, concatenated."""
        return torch.cat([word_embedding(tokenizer, encoder, word) for tokenizer, encoder in self.pairs])

    def rows(self, count: int) -> torch.Tensor:
        """(count, ΣD): the first `count` vocabulary rows of every encoder, concatenated (the same ids in each)."""
        return torch.cat([e.get_input_embeddings().weight[:count].detach().float() for _, e in self.pairs], dim=-1)

    def add_token(self, token: str, row: torch.Tensor) -> int:
        """Add `token` (and `token_1`, … for a row per vector) to every tokenizer with its slice of `row` as the
        embedding; the first vector's id (the same in each tokenizer; the others follow it)."""
        rows = self.split(row.reshape(-1, row.shape[-1]))
        names = vector_tokens(token, rows[0].shape[0])
        firsts = []  # each vector's id, the same in every tokenizer
        for index, name in enumerate(names):
            ids = {
                add_placeholder(tokenizer, encoder, name, part[index])
                for (tokenizer, encoder), part in zip(self.pairs, rows, strict=True)
            }
            if len(ids) != 1:
                raise OstafError(
                    f"{name} got ids {sorted(ids)} in the two tokenizers: their vocabularies differ in size"
                )
            firsts.extend(ids)
        if firsts != list(range(firsts[0], firsts[0] + len(firsts))):  # the injection and λ address vector i as id + i
            raise OstafError(f"{token}'s vectors got ids {firsts}, not consecutive ones")
        return firsts[0]

    @torch.no_grad()
    def write_row(self, token_id: int, row: torch.Tensor) -> None:
        """Put e* (its slice per encoder; a row per vector) into the token's rows: a stock pipeline then reads it
        from the prompt."""
        for (_, encoder), part in zip(self.pairs, self.split(row), strict=True):
            table = encoder.get_input_embeddings().weight
            rows = part.reshape(-1, part.shape[-1])
            table[token_id : token_id + rows.shape[0]] = rows.to(table.device, table.dtype)

    def inject(self, token_id: int, embedding: nn.Module) -> list[RemovableHandle]:
        """Route the live e* (with its gradient) into every position of `token_id`, in each encoder."""
        bounds = torch.tensor([0, *self.widths]).cumsum(0).tolist()
        return [
            _inject_slice(encoder, token_id, embedding, start, stop)
            for (_, encoder), start, stop in zip(self.pairs, bounds[:-1], bounds[1:], strict=True)
        ]


def vector_tokens(token: str, count: int) -> list[str]:
    """A placeholder's token per vector, as diffusers names a multi-vector embedding's: `*m`, `*m_1`, …"""
    return [token, *(f"{token}_{i}" for i in range(1, count))]


def _inject_slice(encoder: nn.Module, token_id: int, embedding: nn.Module, start: int, stop: int) -> RemovableHandle:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        rows = embedding()
        rows = rows.reshape(-1, rows.shape[-1])[:, start:stop].to(output.dtype)  # (N, d): a row per vector
        vector = args[0] - token_id  # (B, T): which vector a position holds, where 0 <= it < N
        is_token = ((vector >= 0) & (vector < rows.shape[0])).unsqueeze(-1)  # (B, T, 1)
        return torch.where(is_token, rows[vector.clamp(0, rows.shape[0] - 1)], output)

    return encoder.get_input_embeddings().register_forward_hook(hook)
