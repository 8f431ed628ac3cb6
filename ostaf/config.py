"""Run configurations: the one source of every parameter.

CLI flags (`ostaf.flags`), KFP parameters and MLflow params are all derived from
these dataclasses; a field is added here and nowhere else.
"""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from ostaf.attributes import get_attribute
from ostaf.errors import OstafError
from ostaf.offsets import OffsetsConfig

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
TRAINABLES = ("lite", "paper", "token", "blocks", "unet")
# which trainables use the hypernetwork; the others are the paper's baselines (ΔW held at 0)
OFFSET_TRAINABLES = ("lite", "paper")
TOKEN_INITS = ("clip", "word")
OPTIMIZERS = ("adamw", "adamw8bit")
SCHEDULERS = ("ddim", "pndm", "dpm", "euler")


def opt(default: Any = MISSING, help: str = "", choices: tuple | None = None, **kw: Any) -> Any:
    """A dataclass field with its CLI help (and choices) attached."""
    meta = {"help": help, **({"choices": choices} if choices else {})}
    if isinstance(default, (list, tuple)):
        value = list(default)
        return field(default_factory=lambda: list(value), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


class _Config:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build from JSON-like data (a KFP struct turns every number into a float; integral ones come back)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OstafError(f"{cls.__name__} has no option(s) {unknown}: known are {sorted(known)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(v, hints[k]) for k, v in data.items()})


def normalize_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """A partial option dict with each value in its field's type (undoing JSON's float-only numbers)."""
    hints = typing.get_type_hints(cls)
    return {k: _coerce(v, hints[k]) if k in hints else v for k, v in options.items()}


def _coerce(value: Any, kind: Any) -> Any:
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typing.get_origin(kind) is list and isinstance(value, list):
        (inner,) = typing.get_args(kind)
        return [_coerce(v, inner) for v in value]
    return value


@dataclass
class TrainConfig(_Config):
    """One reference image, one attribute → one OSTAF checkpoint."""

    image: str = opt(help="reference image (PNG/JPEG), or a folder written by `ostaf preprocess`")
    class_name: str = opt(help="what the reference shows, e.g. 'dog'; goes into the training prompt")
    attribute: str = opt("appearance", "attribute to learn", choices=("shape", "appearance", "style"))
    model: str = opt(
        "tiny", "SD-1.x weights: a local diffusers folder, a cached hub id, or a preset (tiny, sd14-random)"
    )
    out: str = opt("runs/ostaf", "output directory for checkpoints")
    part: str = opt(
        "auto",
        "U-Net part to modulate; auto = encoder for shape, decoder otherwise",
        choices=("auto", "encoder", "decoder"),
    )
    include_mid: bool = opt(False, "also modulate the mid block's attention")
    trainable: str = opt(
        "lite",
        "lite: offsets + token; paper: also every weight of the targeted blocks (authors' code); baselines "
        "without the hypernetwork: token (textual inversion), blocks (token + targeted blocks' weights, "
        "the paper's fine-tuned SD), unet (token + the whole U-Net, DreamBooth-like)",
        choices=TRAINABLES,
    )
    offset_mode: str = opt(
        "multiplicative", "W ⊙ (1 + λΔW) (authors' code) or W + λΔW", choices=("multiplicative", "additive")
    )
    zero_init: bool = opt(False, "initialise so that ΔW = 0 at step 0 (default: the authors' random init)")
    segment: bool = opt(True, "cut the foreground out with SAM (appearance/style) and keep its mask")
    sam: str = opt("auto", "SAM weights: auto (OSTAF_SAM_WEIGHTS), a file, tiny, or random-vit_b|l|h")
    augment_bank: int = opt(8, "augmented crops/flips encoded once and sampled per step (shape uses 1)")
    token_init: str = opt(
        "clip", "placeholder init: clip = word + α·f(CLIP image features); word = word only", choices=TOKEN_INITS
    )
    train_token: bool = opt(True, "train the placeholder token's init MLP with the offsets")
    token_grad: str = opt(
        "full",
        "full: the token learns through every cross-attention (faithful); confined: only "
        "through the targeted blocks (faster: backward stops there)",
        choices=("full", "confined"),
    )
    token_alpha: float = opt(0.1, "α in e* = emb(word) + α·f(image)")
    token_reg: float = opt(0.01, "weight of the ‖e*‖² regulariser")
    steps: int = opt(3000, "optimizer steps")
    checkpoint_every: int = opt(100, "save a checkpoint every N steps (0: only the final one)")
    lr: float = opt(1e-6, "learning rate (the paper's value)")
    scale_lr: bool = opt(False, "multiply lr by grad_accum × batch_size, as the authors' scripts do")
    grad_accum: int = opt(2, "gradient accumulation steps")
    batch_size: int = opt(1, "images per micro-step")
    seed: int = opt(42, "seed for weights init, noise and timesteps")
    resolution: int = opt(0, "training resolution in px (0: the model's native size)")
    precision: str = opt(
        "auto", "auto = bf16 on a GPU that has it, fp16 on other GPUs, fp32 on CPU", choices=PRECISIONS
    )
    optimizer: str = opt("adamw", "adamw, or adamw8bit (bitsandbytes, CUDA only)", choices=OPTIMIZERS)
    device: str = opt("auto", "torch device (auto: cuda if available)")
    gradient_checkpointing: bool = opt(False, "recompute U-Net block activations in the backward pass (less memory)")
    channels_last: bool = opt(False, "U-Net convolutions in channels-last memory format (faster on some GPUs)")
    compile: bool = opt(False, "torch.compile the U-Net (slow first steps; pays off on long GPU runs)")

    def __post_init__(self) -> None:
        attribute = get_attribute(self.attribute)
        if not self.class_name.strip():
            raise OstafError("class name is empty: say what the reference shows, e.g. --class-name dog")
        if attribute.token in self.class_name:
            raise OstafError(f"class name {self.class_name!r} must not contain the placeholder {attribute.token}")
        _positive(
            steps=self.steps, grad_accum=self.grad_accum, batch_size=self.batch_size, augment_bank=self.augment_bank
        )
        _non_negative(checkpoint_every=self.checkpoint_every, resolution=self.resolution)
        _finite(lr=self.lr, token_alpha=self.token_alpha, token_reg=self.token_reg)
        if self.lr <= 0:
            raise OstafError(f"lr must be > 0, got {self.lr}")

    def offsets_config(self) -> OffsetsConfig:
        part = get_attribute(self.attribute).part if self.part == "auto" else self.part
        parts = (part, "mid") if self.include_mid else (part,)
        zero = self.zero_init or not self.uses_offsets
        return OffsetsConfig(parts=parts, mode=self.offset_mode, zero_init=zero)

    @property
    def uses_offsets(self) -> bool:
        """False for the baselines: their offsets stay at ΔW = 0, so λ has no effect."""
        return self.trainable in OFFSET_TRAINABLES

    def effective_lr(self) -> float:
        return self.lr * self.grad_accum * self.batch_size if self.scale_lr else self.lr


@dataclass
class GenerateConfig(_Config):
    """Prompts × seeds × λ → images and one grid per prompt."""

    ckpt: list[str] = opt(help="checkpoint folder(s); give a shape and an appearance one to compose them")
    prompt: list[str] = opt(help="prompts using the placeholder(s), e.g. 'a vase in the appearance of *a'")
    lam: list[float] = opt([0.0, 0.5, 1.0], "λ values (offset strength); 0 = base model")
    seeds: list[int] = opt([0, 1, 2], "one image per seed (and λ)")
    out: str = opt("runs/generate", "output directory")
    model: str = opt("", "base weights (default: the model the checkpoint was trained on)")
    num_steps: int = opt(50, "denoising steps")
    guidance: float = opt(7.5, "classifier-free guidance scale")
    scheduler: str = opt("ddim", "sampler", choices=SCHEDULERS)
    resolution: int = opt(0, "image size in px (0: the model's native size)")
    batch_size: int = opt(8, "images per denoising batch (several λ share one batch)")
    precision: str = opt("auto", "auto = fp16/bf16 on GPU, fp32 on CPU", choices=PRECISIONS)
    device: str = opt("auto", "torch device (auto: cuda if available)")

    def __post_init__(self) -> None:
        if not self.ckpt:
            raise OstafError("no checkpoint given: pass --ckpt DIR (the --out of `ostaf train`)")
        if not self.prompt:
            raise OstafError("no prompt given: pass --prompt 'a vase in the appearance of *a'")
        _finite(guidance=self.guidance, **{f"lam[{i}]": v for i, v in enumerate(self.lam)})
        _positive(
            num_steps=self.num_steps, batch_size=self.batch_size, lam_count=len(self.lam), seed_count=len(self.seeds)
        )
        _non_negative(resolution=self.resolution)
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise OstafError(f"seeds must be integers, got {seed!r}")


def _positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise OstafError(f"{name} must be > 0, got {value}")


def _non_negative(**values: int) -> None:
    for name, value in values.items():
        if value < 0:
            raise OstafError(f"{name} must be ≥ 0, got {value}")


def _finite(**values: float) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise OstafError(f"{name} must be a finite number, got {value!r}")
