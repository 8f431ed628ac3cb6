"""OSTAF checkpoints: the one home of the format — write, find, load, resume, `apply`.

A checkpoint folder holds
    ostaf.safetensors     offsets.<layer>.<param>   the hypernetworks
                          token.embedding           the learned e* (what generation uses; SDXL: both
                                                    encoders' rows, concatenated)
                          token.init.<param>        the token-init MLP f and its inputs (to resume)
                          unet.<param>              U-Net weights that trained (`paper`, `blocks`, `unet`;
                                                    `lora`: its peft LoRA layers, `…to_q.lora_A.ostaf_m.weight`)
    ostaf.json            the card: format, attribute, token, base model (name and the seed that built
                          it), architecture (sd1 | sdxl), offsets config, trainable, `lora` (its layers
                          and rank, for `lora`), step, training config, optimizer param groups
    trainer.safetensors   only in the newest folder of a run: what resuming needs
                          optim.<index>.<name>      AdamW moments and step counts
                          rng.generator, rng.torch, rng.cuda.<i>   the run's random states
                          scaler.<name>             the fp16 GradScaler (when enabled)
Tensors are written before the card: a folder with a card is complete.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ostaf.attributes import get_attribute
from ostaf.checkpoint_format import CARD, CHECKPOINT_FORMAT, TENSORS, checkpoint_card
from ostaf.conditioning import PromptEncoder
from ostaf.config import OFFSET_TRAINABLES, default_of
from ostaf.errors import OstafError
from ostaf.io import atomic_write, write_json
from ostaf.lora import LoraAdapter, LoraSpec
from ostaf.models import BaseModel, Pipeline, architecture, base_of, load_pipeline
from ostaf.offsets import OffsetsAdapter, OffsetsConfig
from ostaf.strength import (
    FixedStrength,
    Strength,
    TokenStrength,
    WeightBlendStrength,
    prediction_blend_refusal,
)

if TYPE_CHECKING:  # type hints only: the training setup imports what this module imports
    from ostaf.training_setup import TrainingSetup

log = logging.getLogger(__name__)
TRAINER_STATE = "trainer.safetensors"
CHECKPOINTS = "checkpoints"  # intermediate checkpoints: <out>/checkpoints/step-NNNNNN/
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK")  # pickle protocols 2-5, torch zip
# options that may differ when resuming (they change where or how fast, not what is learned)
RESUME_MAY_CHANGE = {"steps", "checkpoint_every", "device", "gradient_checkpointing", "channels_last", "compile"}


@dataclass
class Checkpoint:
    card: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def token(self) -> str:
        return self.card["token"]

    @property
    def base(self) -> BaseModel:
        """How the base model was made (checkpoints before the `base` entry: the model name, seed 0)."""
        base = self.card.get("base") or {"model": self.card["model"], "seed": 0}
        return BaseModel(base["model"], int(base["seed"]))

    @property
    def architecture(self) -> str:
        """sd1 or sdxl (cards before SDXL support: sd1)."""
        return self.card.get("architecture", "sd1")

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def step_folder(out: str | Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS / f"step-{step:06d}"


def save_checkpoint(folder: str | Path, card: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write tensors first, card last: a folder with a card is always complete."""
    folder = Path(folder)
    flat = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    atomic_write(folder / TENSORS, lambda tmp: save_file(flat, str(tmp), metadata={"format": CHECKPOINT_FORMAT}))
    write_json(folder / CARD, {"format": CHECKPOINT_FORMAT, **card})
    return folder


def load_checkpoint(folder: str | Path) -> Checkpoint:
    folder = Path(folder)
    card = checkpoint_card(folder)
    tensor_path = folder / TENSORS
    with open(tensor_path, "rb") as f:
        head = f.read(2)
    if head in PICKLE_MAGIC:
        raise OstafError(
            f"{tensor_path} is a pickle / torch.save file, not safetensors: refused, because loading a pickle can "
            "run code. Re-save the tensors with safetensors.torch.save_file"
        )
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as err:
        raise OstafError(f"checkpoint {folder} is damaged ({err}); use another step's checkpoint") from None
    return Checkpoint(card, tensors)


def load_base_pipeline(ckpt: Checkpoint, model: str = "", dtype: torch.dtype = torch.float32) -> Pipeline:
    """The base model `ckpt` was trained on, rebuilt exactly (a preset from the same seed), or `model` instead."""
    base = ckpt.base
    if model and model != base.model:
        return load_pipeline(model, dtype=dtype)
    return load_pipeline(base.model, seed=base.seed, dtype=dtype)


def apply(
    pipe: Pipeline,
    ckpt: str | Path | Checkpoint,
    lam: float = 1.0,
    token_lambda: bool = False,
    token_lambda_origin: str = "nearest",
    token_lambda_blend: str = "row",
) -> Strength:
    """Turn a stock `StableDiffusionPipeline` (or `StableDiffusionXLPipeline`) into a personalised one, in place.

    Adds the checkpoint's placeholder token with its learned embedding, installs
    its offsets with strength `lam`, and loads the U-Net weights that trained (for
    `paper` and the fine-tuning baselines). Apply a shape and an appearance checkpoint
    to the same pipeline to use both tokens in one prompt. Returns what carries λ
    (`ostaf.strength`): the offsets, the LoRA (`--trainable lora`), or for a token or
    fine-tuned checkpoint a `FixedStrength` (nothing for λ to scale: it says so when asked
    for per-block λ or the dual path), or with `token_lambda` a `TokenStrength` (λ blends its placeholder
    from the nearest word — or with `token_lambda_origin="attribute"` the attribute's word — to the learned one;
    for fine-tuned weights a `WeightBlendStrength`, which blends them from the base model's too);
    `token_lambda_blend="prediction"` keeps the learned row at every λ for `PredictionBlend` (a token only).
    """
    ckpt = ckpt if isinstance(ckpt, Checkpoint) else load_checkpoint(ckpt)
    check_architecture(ckpt, pipe)
    if token_lambda and token_lambda_blend == "prediction":
        reason = prediction_blend_refusal(ckpt.token, ckpt.card.get("trainable", "lite"))
        if reason:
            raise OstafError(reason)
    offsets = ckpt.section("offsets.")
    trained_offsets = bool(offsets) and ckpt.card.get("trainable", "lite") in OFFSET_TRAINABLES
    adapter = None
    if trained_offsets:
        adapter = OffsetsAdapter.install(pipe.unet, OffsetsConfig.from_dict(ckpt.card["offsets"]), ckpt.token)
    try:
        if adapter is not None:
            adapter.load_state_dict(offsets)
        if "lora" in ckpt.card:
            adapter = LoraAdapter.install(pipe.unet, LoraSpec.from_dict(ckpt.card["lora"]), ckpt.token)
        tuned = ckpt.section("unet.")
        # λ blends fine-tuned weights from the base's (--token-lambda): keep W₀ of each weight before loading W₁
        own = dict(pipe.unet.named_parameters()) if token_lambda and adapter is None else {}
        base = {n: own[n].detach().float().clone() for n in tuned if n in own}
        load_unet_weights(pipe.unet, tuned)
        token_id = PromptEncoder(pipe).add_token(ckpt.token, ckpt.tensors["token.embedding"])
    except BaseException:
        if isinstance(adapter, OffsetsAdapter):
            adapter.uninstall()
        raise
    trainable = ckpt.card.get("trainable", "token")
    origin = None
    if token_lambda and token_lambda_origin == "attribute":
        origin = PromptEncoder(pipe).word_row(get_attribute(ckpt.card["attribute"]).word)
    if adapter is not None:
        driven = adapter
    elif token_lambda and base:
        weights = {n: (own[n], base[n].to(own[n].device), tuned[n].float().to(own[n].device)) for n in base}
        driven = WeightBlendStrength(
            ckpt.token, trainable, PromptEncoder(pipe), token_id, ckpt.tensors["token.embedding"], weights, origin
        )
    elif token_lambda:
        driven = TokenStrength(
            ckpt.token,
            trainable,
            PromptEncoder(pipe),
            token_id,
            ckpt.tensors["token.embedding"],
            origin,
            token_lambda_blend,
        )
    else:
        driven = FixedStrength(ckpt.token, trainable)
    driven.set_scale(lam)
    return driven


def check_architecture(ckpt: Checkpoint, pipe: Pipeline) -> None:
    """One clear error for an SD-1.x checkpoint on SDXL or the other way round (before anything is installed)."""
    own = architecture(pipe)
    if ckpt.architecture != own:
        raise OstafError(
            f"the {ckpt.token} checkpoint was trained on an {ckpt.architecture} model ({ckpt.base.model}) and this "
            f"pipeline is {own}: generate with its base model (leave --model empty) or another "
            f"{ckpt.architecture} model"
        )


def load_unet_weights(unet: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved U-Net weights in, after checking every name and shape (a checkpoint of another model is one error)."""
    if not weights:
        return
    own = dict(unet.named_parameters())
    for name, tensor in weights.items():
        if name not in own or own[name].shape != tensor.shape:
            raise OstafError(f"checkpoint weight unet.{name} does not fit this U-Net: it was trained on another model")
    with torch.no_grad():
        for name, tensor in weights.items():
            own[name].copy_(tensor.to(own[name].dtype))


# -- what training writes and resumes from --------------------------------------------------------


def model_tensors(setup: TrainingSetup) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors: offsets, token (final e* and its init MLP), and the U-Net weights that train."""
    offsets = setup.adapter.state_dict() if isinstance(setup.adapter, OffsetsAdapter) else {}
    tensors = {f"offsets.{k}": v for k, v in offsets.items()}
    tensors["token.embedding"] = setup.token().detach().float().cpu()
    tensors.update({f"token.init.{k}": v for k, v in setup.token.state_dict().items() if v.numel()})
    ids = {id(p) for p in setup.trainable}  # derived from what trains, not from a list of trainable names
    tensors.update(
        {f"unet.{n}": p for n, p in setup.unet.named_parameters() if id(p) in ids and ".processor." not in n}
    )
    return tensors


def card(setup: TrainingSetup, step: int) -> dict:
    base = base_of(setup.pipe) or BaseModel(setup.config.model, setup.config.seed)
    return {
        "attribute": setup.attribute.name,
        "token": setup.attribute.token,
        "class_name": setup.config.class_name,
        "model": setup.config.model,
        "base": {"model": base.model, "seed": base.seed},
        "architecture": architecture(setup.pipe),
        "offsets": setup.offsets.to_dict(),
        "trainable": setup.config.trainable,
        **({"lora": setup.adapter.spec.to_dict()} if isinstance(setup.adapter, LoraAdapter) else {}),
        "step": step,
        "train": setup.config.to_dict(),
    }


def save_training_checkpoint(
    setup: TrainingSetup,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    folder: Path,
    step: int,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Model tensors + card, plus the trainer state needed to resume (kept only in the newest folder)."""
    state = optimizer.state_dict()
    trainer = {f"optim.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    trainer["rng.generator"] = generator.get_state()
    trainer["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        trainer.update({f"rng.cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    if scaler is not None and scaler.is_enabled():  # fp16: the loss scale and its growth counter
        trainer.update({f"scaler.{k}": torch.tensor(v) for k, v in scaler.state_dict().items()})
    trainer = {k: v.detach().cpu().contiguous() for k, v in trainer.items()}
    info = card(setup, step) | {"optimizer": {"param_groups": state["param_groups"]}}
    atomic_write(folder / TRAINER_STATE, lambda tmp: save_file(trainer, str(tmp)))
    save_checkpoint(folder, info, model_tensors(setup))
    for older in _trainer_states(Path(setup.config.out)):
        if older.parent != folder:
            older.unlink(missing_ok=True)


def _trainer_states(out: Path) -> Iterator[Path]:
    yield from (out / CHECKPOINTS).glob(f"step-*/{TRAINER_STATE}")
    if (out / TRAINER_STATE).exists():
        yield out / TRAINER_STATE


def latest_resumable(out: str | Path) -> Path | None:
    """The newest folder under `out` holding a complete checkpoint and trainer state."""
    candidates = [p.parent for p in _trainer_states(Path(out)) if (p.parent / CARD).is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda f: json.loads((f / CARD).read_text())["step"])  # cards only


def resume(
    setup: TrainingSetup,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    out: Path,
    scaler: torch.amp.GradScaler | None = None,
) -> int:
    """Restore model, optimizer and RNG state from the newest checkpoint in `out`; return its step."""
    folder = latest_resumable(out)
    if folder is None:
        return 0
    saved = load_checkpoint(folder)
    mine, theirs = setup.config.to_dict(), dict(saved.card["train"])
    defaults = {f.name: default_of(f) for f in fields(setup.config)}  # options newer than the checkpoint
    differ = sorted(k for k in mine if k not in RESUME_MAY_CHANGE and mine[k] != theirs.get(k, defaults[k]))
    if differ:
        raise OstafError(
            f"{out} holds a run with different settings ({', '.join(differ)}): use a new --out, "
            "or the same options to resume it"
        )
    step = saved.card["step"]
    if step > setup.config.steps:
        raise OstafError(
            f"{out} is already at step {step} > --steps {setup.config.steps}: raise --steps or use a new --out"
        )
    if isinstance(setup.adapter, OffsetsAdapter):
        setup.adapter.load_state_dict(saved.section("offsets."))
    setup.token.load_state_dict({**setup.token.state_dict(), **saved.section("token.init.")})
    load_unet_weights(setup.unet, saved.section("unet."))
    trainer = load_file(str(folder / TRAINER_STATE))
    _load_optimizer(optimizer, trainer, saved.card["optimizer"]["param_groups"])
    _load_random_state(generator, trainer)
    saved_scaler = {k.removeprefix("scaler."): v.item() for k, v in trainer.items() if k.startswith("scaler.")}
    if saved_scaler and scaler is not None and scaler.is_enabled():
        scaler.load_state_dict(saved_scaler)
    log.info("resumed %s from step %d", out, step)
    return step


def _load_optimizer(optimizer: torch.optim.Optimizer, trainer: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state = optimizer.state_dict()
    for key, value in trainer.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = value
    state["param_groups"] = [
        g | {"params": own["params"]} for g, own in zip(groups, state["param_groups"], strict=True)
    ]
    optimizer.load_state_dict(state)


def _load_random_state(generator: torch.Generator, trainer: dict[str, torch.Tensor]) -> None:
    generator.set_state(trainer["rng.generator"])
    torch.set_rng_state(trainer["rng.torch"])
    keys = sorted((k for k in trainer if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    cuda = [trainer[k] for k in keys]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
