"""OSTAF checkpoints: safetensors tensors + a JSON card, written atomically; `apply` loads them.

A checkpoint folder holds
    ostaf.safetensors   offsets.<layer>.<param>   the hypernetworks
                        token.embedding           the learned e* (what generation uses)
                        token.init.<param>        the token-init MLP f and its inputs (to resume)
                        unet.<param>              base weights of the targeted blocks (`paper` only)
    ostaf.json          format, attribute, token, model, offsets config, step, training config
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ostaf.errors import OstafError
from ostaf.io import atomic_write, write_json
from ostaf.offsets import OffsetsAdapter, OffsetsConfig
from ostaf.placeholder import add_placeholder

FORMAT = "ostaf-checkpoint/1"
TENSORS = "ostaf.safetensors"
CARD = "ostaf.json"
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK")  # pickle protocols 2-5, torch zip


@dataclass
class Checkpoint:
    card: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def token(self) -> str:
        return self.card["token"]

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def save_checkpoint(folder: str | Path, card: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write tensors first, card last: a folder with a card is always complete."""
    folder = Path(folder)
    flat = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    atomic_write(folder / TENSORS, lambda tmp: save_file(flat, str(tmp), metadata={"format": FORMAT}))
    write_json(folder / CARD, {"format": FORMAT, **card})
    return folder


def load_checkpoint(folder: str | Path) -> Checkpoint:
    folder = Path(folder)
    card_path, tensor_path = folder / CARD, folder / TENSORS
    if not card_path.is_file() or not tensor_path.is_file():
        raise OstafError(
            f"{folder} is not an OSTAF checkpoint (needs {CARD} and {TENSORS}): pass the --out folder of "
            "`ostaf train` or one of its checkpoints/step-* folders"
        )
    with open(tensor_path, "rb") as f:
        head = f.read(2)
    if head in PICKLE_MAGIC:
        raise OstafError(
            f"{tensor_path} is a pickle / torch.save file, not safetensors: refused, because loading a pickle can "
            "run code. Re-save the tensors with safetensors.torch.save_file"
        )
    try:
        card = json.loads(card_path.read_text())
        tensors = load_file(str(tensor_path))
    except (json.JSONDecodeError, SafetensorError, OSError) as err:
        raise OstafError(f"checkpoint {folder} is damaged ({err}); use another step's checkpoint") from None
    if card.get("format") != FORMAT:
        raise OstafError(f"checkpoint {folder} has format {card.get('format')!r}, this ostaf reads {FORMAT}")
    return Checkpoint(card, tensors)


def apply(pipe: StableDiffusionPipeline, ckpt: str | Path | Checkpoint, lam: float = 1.0) -> OffsetsAdapter:
    """Turn a stock `StableDiffusionPipeline` into a personalised one, in place.

    Adds the checkpoint's placeholder token with its learned embedding, installs
    its offsets with strength `lam`, and (for `paper` checkpoints) loads the tuned
    block weights. Apply a shape and an appearance checkpoint to the same pipeline
    to use both tokens in one prompt. Returns the adapter, whose `set_scale`,
    `merge` and `unmerge` control λ afterwards.
    """
    ckpt = ckpt if isinstance(ckpt, Checkpoint) else load_checkpoint(ckpt)
    config = OffsetsConfig.from_dict(ckpt.card["offsets"])
    adapter = OffsetsAdapter.install(pipe.unet, config, ckpt.token)
    try:
        adapter.load_state_dict(ckpt.section("offsets."))
        _load_block_weights(pipe, ckpt.section("unet."))
        add_placeholder(pipe.tokenizer, pipe.text_encoder, ckpt.token, ckpt.tensors["token.embedding"])
    except BaseException:
        adapter.uninstall()
        raise
    adapter.set_scale(lam)
    return adapter


def _load_block_weights(pipe: StableDiffusionPipeline, weights: dict[str, torch.Tensor]) -> None:
    if not weights:
        return
    own = dict(pipe.unet.named_parameters())
    for name, tensor in weights.items():
        if name not in own or own[name].shape != tensor.shape:
            raise OstafError(f"checkpoint weight unet.{name} does not fit this U-Net: it was trained on another model")
    with torch.no_grad():
        for name, tensor in weights.items():
            own[name].copy_(tensor.to(own[name].dtype))
