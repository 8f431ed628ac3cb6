"""Run configurations: the one source of every parameter.

CLI flags (`ostaf.flags`), KFP parameters and MLflow params are all derived from
these dataclasses; a field is added here and nowhere else. Field metadata says what
a field is for: its help and choices, and whether it is *per item* (set by each
benchmark item or pipeline step, never by the pipeline's shared option dicts).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, TypeVar

from ostaf.attributes import get_attribute
from ostaf.errors import OstafError
from ostaf.offsets import OffsetsConfig
from ostaf.offsets.config import PROJECTIONS, parse_block_scales, parse_targets
from ostaf.strength import DUAL_PATH, PER_SAMPLE, refusal
from ostaf.view_words import check_views

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
TOKEN_INITS = ("clip", "word")
TOKEN_LAMBDA_ORIGINS = ("nearest", "attribute")  # λ = 0 of --token-lambda
TOKEN_LAMBDA_BLENDS = ("row", "prediction")  # what --token-lambda's λ blends
MAX_VECTORS = 16  # a placeholder's vectors (--num-vectors): tokens out of CLIP's 77
OPTIMIZERS = ("adamw", "adamw8bit")
SCHEDULERS = ("ddim", "pndm", "dpm", "euler")
METRIC_MODELS = ("auto", "real", "tiny")
TRAIN_LAMS = ("fixed", "uniform")
REFERENCE_BLOCKS = ("decoder", "encoder", "all", "auto")
LAM_LIMIT = 10.0  # |λ| beyond this saturates every modulated weight (W ⊙ (1 + λΔW)): refused, not rendered black
DEFAULT_MODEL = "tiny"  # random weights, seconds on a CPU, no weights to find (attribute-world: small but trained)


@dataclass(frozen=True)
class Trainable:
    """What one `--trainable` trains, as data: training installs `adapter` on the targeted attention and
    unfreezes `blocks`; nothing branches on the trainable's name."""

    adapter: str = "none"  # what carries λ (`ostaf.strength`): "offsets" (the hypernetwork), "lora", "none"
    blocks: str = "none"  # U-Net weights fine-tuned: "targeted" (the part's blocks), "all", "none"

    @property
    def modulates_projections(self) -> bool:
        """Whether the offsets modulate q/k/v (LoRA takes those projections instead)."""
        return self.adapter != "lora"


TRAINABLE = {
    "lite": Trainable(adapter="offsets"),  # the hypernetwork's offsets (the shipped OSTAF)
    "paper": Trainable(adapter="offsets", blocks="targeted"),  # offsets and the part's weights (authors' code)
    "token": Trainable(),  # textual inversion: the placeholder alone
    "blocks": Trainable(blocks="targeted"),  # fine-tune the part's blocks
    "unet": Trainable(blocks="all"),  # fine-tune the whole U-Net
    "lora": Trainable(adapter="lora"),  # peft LoRA on the q/k/v the offsets would modulate
}
TRAINABLES = tuple(TRAINABLE)
# which trainables use the hypernetwork; the others are the paper's baselines (ΔW held at 0)
OFFSET_TRAINABLES = tuple(name for name, t in TRAINABLE.items() if t.adapter == "offsets")
# the adapter that carries λ for each trainable (`ostaf.strength`); the others have none
ADAPTER_OF = {name: t.adapter for name, t in TRAINABLE.items() if t.adapter != "none"}

C = TypeVar("C", bound="_Config")


def _adapter_can(trainable: str, asked: bool, feature: str, option: str) -> None:
    """One error before any model loads when an option asks the trained adapter for what it cannot do."""
    reason = refusal(ADAPTER_OF.get(trainable, "none"), feature) if asked else None
    if reason:
        raise OstafError(f"{option} with --trainable {trainable}: {reason}; use --trainable lite or paper")


def opt(
    default: Any = MISSING,
    help: str = "",
    choices: tuple | None = None,
    per_item: bool = False,
    item_key: str | None = None,
    repeatable: bool = False,
    pipeline: bool = False,
    pairwise: tuple | None = None,
    reference_input: bool = False,
    **kw: Any,
) -> Any:
    """A dataclass field with its CLI help attached.

    `per_item`: set by each benchmark item or step, not by shared options (`item_key` names the
    manifest key that supplies it, if any); `repeatable`: the flag may be given more than once;
    `pipeline`: one of the options people change, a typed top-level parameter of the pipelines (the rest
    go through their `extra_options`); `pairwise`: the values the all-pairs combination test tries (a method
    or mechanism option: a new one joins the test by declaring them; `choices` are tried when it says "choices");
    `reference_input`: one of a reference's own inputs (the personalization pipeline's parameters and the
    pipeline CLI's item flags, `ostaf.options.reference_inputs`).
    """
    meta = {
        "help": help,
        "per_item": per_item or item_key is not None,
        "repeatable": repeatable,
        "pipeline": pipeline,
        "reference_input": reference_input,
        **({"choices": choices} if choices else {}),
        **({"item_key": item_key} if item_key else {}),
        **({"pairwise": tuple(choices) if pairwise == "choices" else tuple(pairwise)} if pairwise else {}),
    }
    if isinstance(default, (list, tuple)):
        value = list(default)
        return field(default_factory=lambda: list(value), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def default_of(f) -> Any:
    """A field's default value (a fresh copy for list fields), or MISSING."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def pipeline_fields(cls: type) -> tuple[str, ...]:
    """The fields that are typed top-level pipeline parameters (`opt(pipeline=True)`)."""
    return tuple(f.name for f in fields(cls) if f.metadata.get("pipeline"))


def per_item_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.metadata.get("per_item"))


def shared_defaults(cls: type) -> dict[str, Any]:
    """The defaults of `cls`'s shared (not per-item) fields: the pipeline's option dict for that config."""
    return {f.name: default_of(f) for f in fields(cls) if not f.metadata.get("per_item")}


PER_ATTRIBUTE = "per_attribute"  # in a run's resolved options: attribute → what differs for its items (a recipe's)


def for_attribute(options: Mapping[str, Any], attribute: str | None) -> dict[str, Any]:
    """One item's options from a run's resolved section: the shared values, with what a recipe for the item's
    attribute changes (`ostaf.options.resolve_options`) over them."""
    shared = {k: v for k, v in options.items() if k != PER_ATTRIBUTE}
    return shared | options.get(PER_ATTRIBUTE, {}).get(attribute, {})


def validate_options(cls: type[C], options: Mapping[str, Any]) -> dict[str, Any]:
    """Check a partial dict of shared options (names, types, choices, ranges); return it with defaults filled in.

    What a pipeline or the CLI validates before any work, without inventing per-item values.
    """
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise OstafError(f"{cls.__name__} has no option(s) {unknown}: known are {sorted(known)}")
    per_item = sorted(k for k in options if known[k].metadata.get("per_item"))
    if per_item:
        raise OstafError(f"{per_item} are set per item, not by shared {cls.__name__} options")
    hints = typing.get_type_hints(cls)
    for name, value in options.items():
        _check_field(known[name], hints[name], value)
    values = shared_defaults(cls) | dict(options)
    cls.check_options(values)
    return values


def dual_path_option() -> Any:
    """The dual path's β: one field of both configs (it applies while training and while generating)."""
    return opt(
        1.0,
        "Domain-Agnostic Tuning-Encoder dual path β: targeted attentions blend β·personalised + (1−β)·vanilla "
        "(no offsets, the placeholder replaced by its nearest word); 1 = off",
        pairwise=(1.0, 0.5),
    )


class _Config:
    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            _check_field(f, hints[f.name], getattr(self, f.name))
        self.check_options(vars(self))
        self.check_item()

    @staticmethod
    def check_options(values: Mapping[str, Any]) -> None:
        """Range checks of the shared options (`values` holds every shared field)."""

    def check_item(self) -> None:
        """Checks of the per-item fields."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a dict of field values (a card, a JSON file); unknown keys are one error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OstafError(f"{cls.__name__} has no option(s) {unknown}: known are {sorted(known)}")
        return cls(**data)

    @classmethod
    def for_item(cls: type[C], item: Mapping[str, Any], options: Mapping[str, Any], **per_step: Any) -> C:
        """The config of one benchmark item: shared `options`, the item's own fields, and the step's (`per_step`).

        Per-item fields with an `item_key` come from `item` (e.g. `class_name`, `prompts`); the
        others (`image`, `out`, `model`, …) from `per_step` or their defaults.
        """
        values = validate_options(cls, for_attribute(options, item.get("attribute")))
        for f in fields(cls):
            key = f.metadata.get("item_key")
            if key and f.name not in per_step:
                if key not in item:
                    raise OstafError(f"benchmark item {item.get('id', '?')} has no {key!r} (needed for {f.name})")
                values[f.name] = item[key]
        unknown = sorted(set(per_step) - set(per_item_fields(cls)))
        if unknown:
            raise OstafError(f"{unknown} are not per-item fields of {cls.__name__}")
        return cls(**(values | per_step))


def _check_field(f, kind: Any, value: Any) -> None:
    """One clear error for a value of the wrong type or outside the field's choices."""
    if not _has_type(value, kind):
        raise OstafError(f"option {f.name} must be {_type_name(kind)}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise OstafError(f"unknown {f.name} {value!r}: use one of {', '.join(map(str, choices))}")


def _has_type(value: Any, kind: Any) -> bool:
    if typing.get_origin(kind) is list:
        (inner,) = typing.get_args(kind)
        return isinstance(value, (list, tuple)) and all(_has_type(v, inner) for v in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        inner = typing.get_args(kind)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(inner, str(inner))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, str(kind))


@dataclass
class TrainConfig(_Config):
    """One reference image, one attribute → one OSTAF checkpoint."""

    image: str = opt(
        help="reference image (PNG/JPEG), or a folder written by `ostaf preprocess`",
        per_item=True,
        reference_input=True,
    )
    class_name: str = opt(
        help="what the reference shows, e.g. 'dog'; goes into the training prompt",
        item_key="class_name",
        reference_input=True,
    )
    attribute: str = opt(
        "appearance",
        "attribute to learn",
        choices=("shape", "appearance", "style"),
        item_key="attribute",
        reference_input=True,
    )
    model: str = opt(
        DEFAULT_MODEL,
        "SD-1.x or SDXL weights: a local diffusers folder, an SD-1.x single file (.safetensors), a cached hub id, "
        "or a preset (attribute-world: small and trained; tiny, sd14-random, tiny-sdxl, sdxl-random: random weights)",
        per_item=True,
    )
    out: str = opt("runs/ostaf", "output directory for checkpoints", per_item=True)
    part: str = opt(
        "auto",
        "U-Net part to modulate; auto = encoder for shape, decoder otherwise",
        choices=("auto", "encoder", "decoder"),
    )
    include_mid: bool = opt(False, "also modulate the mid block's attention")
    targets: str = opt(
        "",
        "attention modules to modulate instead of --part: comma-separated module name patterns, each covering "
        "the modules under it, * a wildcard (e.g. 'up_blocks.0.attentions.1', B-LoRA's style module on SDXL)",
    )
    trainable: str = opt(
        "lite",
        "lite: offsets + token; paper: also every weight of the targeted blocks (authors' code); baselines "
        "without the hypernetwork: token (textual inversion), blocks (token + targeted blocks' weights, "
        "the paper's fine-tuned SD), unet (token + the whole U-Net, DreamBooth-like), lora (token + peft LoRA on "
        "the q/k/v the offsets would modulate; λ is its scale)",
        choices=TRAINABLES,
        pipeline=True,
        pairwise="choices",
    )
    keep_text_projections: bool = opt(
        False,
        "fine-tuning (blocks, unet, paper) leaves the cross-attention's key and value projections of the text at the "
        "base model's: the tuned blocks read every word and placeholder as the base model does, so another "
        "checkpoint's placeholder in the same prompt (a composition) keeps its meaning",
        pairwise=(False, True),
    )
    lora_rank: int = opt(4, "LoRA rank (--trainable lora)")
    offset_mode: str = opt(
        "multiplicative", "W ⊙ (1 + λΔW) (authors' code) or W + λΔW", choices=("multiplicative", "additive")
    )
    zero_init: bool = opt(False, "initialise so that ΔW = 0 at step 0 (default: the authors' random init)")
    hyper_rank: int = opt(
        0,
        "rank R of the hypernetwork's out×out and in×in matrices (0 = the authors' full form; e.g. 16 or 64 cuts "
        "the trainable state of an SD-1.4 decoder run from ~1.2 GB to a few MB)",
    )
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
        "through the targeted blocks (faster: backward stops there; on SDXL not through the pooled embedding)",
        choices=("full", "confined"),
        pairwise="choices",
    )
    token_alpha: float = opt(0.1, "α in e* = emb(word) + α·f(image)")
    num_vectors: int = opt(
        1,
        "vectors of the placeholder (diffusers' textual inversion --num_vectors): *m is read as N tokens *m, "
        "*m_1, …, each starting at e* with a residual of its own, for what one word-sized vector cannot hold "
        "(attributes CLIP spells with several tokens)",
        pairwise=(1, 2),
    )
    token_reg: float = opt(0.01, "weight of the ‖e*‖² regulariser")
    steps: int = opt(3000, "optimizer steps", pipeline=True)
    checkpoint_every: int = opt(100, "save a checkpoint every N steps (0: only the final one)")
    lr: float = opt(1e-6, "learning rate (default: the paper's 1e-6)", pipeline=True)
    token_lr: float = opt(
        0.0,
        "learning rate of the placeholder token (0: --lr); the weights (offsets, LoRA, fine-tuned blocks) keep --lr, "
        "so a token can move at textual inversion's rate while weights move at the paper's",
        pairwise=(0.0, 1e-3),
    )
    scale_lr: bool = opt(False, "multiply lr by grad_accum × batch_size, as the authors' scripts do")
    grad_accum: int = opt(2, "gradient accumulation steps")
    fused_accum: bool = opt(
        False,
        "run a step's --grad-accum micro-batches in one U-Net pass: the same draws, losses and gradients as "
        "accumulating them, in less time and --grad-accum times the activation memory (the world recipe: a CPU)",
        pairwise=(False, True),
    )
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
    # -- the seeds' disentangling mechanisms (ostaf/mechanisms/); each is off by default, off = today's training
    attn_binding: float = opt(
        0.0,
        "DisenDiff attention binding: weight of 1 − soft IoU between the placeholder's cross-attention map and "
        "the reference mask (the class word's map without a mask); 0 = off",
        pairwise=(0.0, 0.5),
    )
    attn_binding_res: int = opt(
        0, "cross-attention resolution (px of the feature map) that binding reads; 0: DisenDiff's middle one"
    )
    nn_contrastive: float = opt(
        0.0,
        "Domain-Agnostic Tuning-Encoder: weight of an InfoNCE loss keeping e* near its nearest vocabulary words; "
        "0 = off",
        pairwise=(0.0, 0.1),
    )
    nn_k: int = opt(5, "positives of the contrastive loss: e*'s k nearest vocabulary embeddings (cosine)")
    nn_temperature: float = opt(0.07, "temperature of the contrastive loss")
    nn_vocab: int = opt(4096, "negatives: vocabulary rows sampled per step (0: the whole vocabulary)")
    dual_path: float = dual_path_option()
    train_lam: str = opt(
        "fixed",
        "λ during training: fixed (1, today) or uniform (drawn in [0, 1] per sample)",
        choices=TRAIN_LAMS,
        pairwise="choices",
    )
    token_steps: int = opt(
        0, "train the token alone (λ = 0) for N steps, then freeze it and train the offsets", pairwise=(0, 1)
    )
    token_search: int = opt(
        0,
        "word search: before training, e*'s word becomes the vocabulary word whose prompt best denoises the "
        "reference (first-order ranking of every row, the best N scored exactly, per round); 0 = off",
        pairwise=(0, 4),
    )
    token_search_rounds: int = opt(3, "rounds of the word search (--token-search); each re-ranks from the best word")
    token_search_samples: int = opt(64, "fixed (noise, timestep) draws of the reference each candidate is scored on")
    masked_loss: bool = opt(
        False, "count the denoising loss only inside the (dilated) reference mask", pairwise=(False, True)
    )
    mask_dilation: int = opt(1, "latent pixels the loss mask grows by (--masked-loss)")
    mask_region: str = opt(
        "object",
        "what --masked-loss counts: object (the reference mask) or edge (the band along the object's edge — rim, "
        "cast shadow, the picture's frame: what a style draws, not the object's inside nor the background beyond)",
        choices=("object", "edge"),
    )
    masked_loss_start: int = opt(
        0, "the step from which --masked-loss counts (before it: the whole picture; = --token-steps: the weights only)"
    )
    prior_images: int = opt(
        0,
        "prior preservation (DreamBooth): N images of the class prompt from the base model, generated once and "
        "cached, whose denoising loss under the trained weights joins every step; 0 = off",
        pairwise=(0, 2),
    )
    prior_loss_weight: float = opt(1.0, "weight of the prior-preservation loss (--prior-images)")
    prior_prompt: list[str] = opt(
        [],
        "the class prompt(s) of the prior images (default: 'a <class name>'); several share the images in turn, "
        "e.g. the class with other values of the attributes not learned ('a blue dotted object', 'a green "
        "plain object'), so the weights keep following those words",
        repeatable=True,
    )
    views: int = opt(
        0,
        "captioned views: N copies of the reference in which only the attribute is kept — a shape's silhouette "
        "filled with a named colour, an appearance cut to a named primitive, a style's rim and cast shadow drawn "
        "around a named primitive in a named colour and texture (its frame kept) — each trained under a prompt "
        "naming what changed, so the attribute is all the views share; 0 = off",
        pairwise=(0, 2),
    )
    view_class: str = opt(
        "",
        "the class of each view's prompt: {colour} (shape), {shape} (appearance), {colour} {texture} {shape} "
        "(style) are the view's words (default: '{colour} object', '{shape}', '{colour} {texture} {shape}'), e.g. "
        "'{colour} vase'",
    )
    view_textures: bool = opt(
        False,
        "fill a shape's views with a named texture as well as a colour (plain, striped, dotted, checkered: 'a blue "
        "striped object'), so the weights keep following texture words too; the class gains {texture}",
        pairwise=(False, True),
    )
    view_unnamed: bool = opt(
        False,
        "train each shape view under the prompt without its colour and texture words too ('an object in the shape "
        "of *m'), so a prompt that names no look draws no look of the reference's in particular, and a look given "
        "by another placeholder (a composition) is the one drawn (shape only)",
        pairwise=(False, True),
    )
    view_zoom: bool = opt(
        False,
        "draw every other shape view's silhouette enlarged to fill the frame, centred: a small silhouette's notches "
        "span a few latent pixels at its own size and more there (shape only)",
        pairwise=(False, True),
    )
    view_extend: bool = opt(
        False,
        "an appearance's views: its surface extended over a whole named primitive of the object's own area, by the "
        "shifts by which the surface repeats (its texture's period), instead of cut inside the object's largest "
        "disc (appearance only)",
        pairwise=(False, True),
    )
    view_loss_weight: float = opt(1.0, "weight of the views' denoising loss (--views)")
    timestep_range: list[float] = opt(
        [0.0, 1.0],
        "the band of the noise schedule training draws t from, as fractions [a, b] of it (e.g. 0.25 1: skip the "
        "nearly clean quarter, where the loss barely depends on the prompt)",
    )
    snr_gamma: float = opt(0.0, "min-SNR-γ loss weighting (diffusers' --snr_gamma; e.g. 5); 0 = every t weighs 1")

    @staticmethod
    def check_options(values: Mapping[str, Any]) -> None:
        positive = ("steps", "grad_accum", "batch_size", "augment_bank", "nn_k", "lora_rank", "num_vectors")
        _positive(**{k: values[k] for k in (*positive, "token_search_rounds", "token_search_samples")})
        counts = ("checkpoint_every", "resolution", "attn_binding_res", "nn_vocab", "token_steps", "token_search")
        _non_negative(**{k: values[k] for k in counts}, mask_dilation=values["mask_dilation"])
        _multiple_of_8(resolution=values["resolution"])
        _finite(**{k: values[k] for k in ("lr", "token_alpha", "token_reg", "attn_binding", "nn_contrastive")})
        _non_negative(attn_binding=values["attn_binding"], nn_contrastive=values["nn_contrastive"])
        _unit(dual_path=values["dual_path"])
        _band(timestep_range=values["timestep_range"])
        _finite(snr_gamma=values["snr_gamma"])
        _non_negative(snr_gamma=values["snr_gamma"])
        if values["nn_temperature"] <= 0 or not math.isfinite(values["nn_temperature"]):
            raise OstafError(f"nn_temperature must be a finite number > 0, got {values['nn_temperature']}")
        _adapter_can(values["trainable"], values["train_lam"] == "uniform", PER_SAMPLE, "--train-lam uniform")
        if values["keep_text_projections"] and TRAINABLE[values["trainable"]].blocks == "none":
            raise OstafError(
                f"--keep-text-projections keeps fine-tuned blocks' text projections; --trainable "
                f"{values['trainable']} fine-tunes no block: drop it (or --trainable blocks, unet or paper)"
            )
        _adapter_can(values["trainable"], values["dual_path"] < 1.0, DUAL_PATH, f"--dual-path {values['dual_path']}")
        _needs_weights_and_token(values)
        if values["token_steps"] >= values["steps"]:
            raise OstafError(
                f"token_steps ({values['token_steps']}) must be < steps ({values['steps']}): the offsets need steps too"
            )
        if values["lr"] <= 0:
            raise OstafError(f"lr must be > 0, got {values['lr']}")
        _non_negative(token_lr=values["token_lr"], prior_images=values["prior_images"], views=values["views"])
        _finite(view_loss_weight=values["view_loss_weight"])
        _non_negative(view_loss_weight=values["view_loss_weight"])
        if values["num_vectors"] > MAX_VECTORS:
            raise OstafError(
                f"num_vectors {values['num_vectors']} is past {MAX_VECTORS}: every vector is a token of CLIP's 77, "
                "and the prompts need theirs; use fewer"
            )

    def check_item(self) -> None:
        attribute = get_attribute(self.attribute)
        check_view_options(attribute.name, vars(self))
        if not self.class_name.strip():
            raise OstafError("class name is empty: say what the reference shows, e.g. --class-name dog")
        if attribute.token in self.class_name:
            raise OstafError(f"class name {self.class_name!r} must not contain the placeholder {attribute.token}")

    def offsets_config(self) -> OffsetsConfig:
        part = get_attribute(self.attribute).part if self.part == "auto" else self.part
        parts = (part, "mid") if self.include_mid else (part,)
        zero = self.zero_init or not self.uses_offsets
        projections = PROJECTIONS if TRAINABLE[self.trainable].modulates_projections else ()
        return OffsetsConfig(
            parts=parts,
            projections=projections,
            mode=self.offset_mode,
            zero_init=zero,
            hyper_rank=self.hyper_rank,
            targets=parse_targets(self.targets),
        )

    @property
    def uses_offsets(self) -> bool:
        """False for the baselines: their offsets stay at ΔW = 0, so λ has no effect."""
        return self.trainable in OFFSET_TRAINABLES

    def effective_lr(self, token: bool = False) -> float:
        """The optimiser's rate of the weights, or of the token (`--token-lr`, else the same)."""
        lr = self.token_lr if token and self.token_lr else self.lr
        return lr * self.grad_accum * self.batch_size if self.scale_lr else lr


VIEW_OPTIONS = ("views", "view_class", "view_textures", "view_unnamed", "view_zoom", "view_extend")  # check_views'


def check_view_options(attribute: str, options: Mapping[str, Any]) -> None:
    """`check_views` on a run's view options (a config's fields, or a recipe's training options): an option not
    given takes TrainConfig's default, so the defaults are written once."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name in VIEW_OPTIONS}
    check_views(attribute, *(options.get(name, defaults[name]) for name in VIEW_OPTIONS))


@dataclass
class GenerateConfig(_Config):
    """Prompts × seeds × λ → images and one grid per prompt."""

    ckpt: list[str] = opt(
        [],
        "checkpoint folder(s); give a shape and an appearance one to compose them",
        per_item=True,
        repeatable=True,
    )
    prompt: list[str] = opt(
        [],
        "prompts using the placeholder(s), e.g. 'a vase in the appearance of *a'",
        item_key="prompts",
        repeatable=True,
        reference_input=True,
    )
    lam: list[float] = opt(
        [0.0, 0.5, 1.0], "λ values (offset strength); 0 = no offsets (the learned token stays)", pipeline=True
    )
    lam_blocks: str = opt(
        "",
        "per-block λ multipliers, e.g. 'down.0=0.5,up.1=1.2' (blocks down.N, mid, up.N; unlisted blocks keep 1), "
        "for every checkpoint's blocks",
    )
    lam_per_ckpt: list[float] = opt(
        [], "one strength per --ckpt, multiplying each checkpoint's λ (e.g. 0.8 1.0 for a shape + an appearance one)"
    )
    seeds: list[int] = opt([0, 1, 2], "one image per seed (and λ)", pipeline=True)
    out: str = opt("runs/generate", "output directory", per_item=True)
    model: str = opt("", "base weights (default: the model the checkpoint was trained on)", per_item=True)
    num_steps: int = opt(50, "denoising steps", pipeline=True)
    guidance: float = opt(7.5, "classifier-free guidance scale")
    scheduler: str = opt("ddim", "sampler", choices=SCHEDULERS)
    resolution: int = opt(0, "image size in px (0: the model's native size)")
    batch_size: int = opt(8, "images per denoising batch (several λ share one batch)")
    precision: str = opt("auto", "auto = fp16/bf16 on GPU, fp32 on CPU", choices=PRECISIONS)
    device: str = opt("auto", "torch device (auto: cuda if available)")
    dual_path: float = dual_path_option()
    reference_attention: float = opt(
        0.0,
        "DreamTuner self-subject-attention ω: generated queries also attend to the reference's foreground "
        "(noised to each step's timestep; one extra U-Net pass per step); 0 = off",
        pairwise=(0.0, 0.5),
    )
    reference_image: str = opt(
        "", "the reference for --reference-attention (default: the checkpoint's own)", per_item=True
    )
    token_lambda: bool = opt(
        False,
        "λ of a checkpoint without weight offsets (a token, fine-tuned weights) blends its placeholder from the "
        "nearest vocabulary word (λ = 0: the hard prompt) to the learned e* (λ = 1), and fine-tuned U-Net weights "
        "from the base model's to the tuned ones, so λ is a strength there too",
        pairwise=(False, True),
    )
    token_lambda_origin: str = opt(
        "nearest",
        "what --token-lambda's λ = 0 reads the placeholder as: nearest (the vocabulary word nearest e*, the hard "
        "prompt: λ dials how far past that word) or attribute (the attribute's own word, 'in the appearance of "
        "appearance': no particular value, so λ dials the learned attribute from none to all of it, as a LoRA's "
        "scale does)",
        choices=TOKEN_LAMBDA_ORIGINS,
        pairwise="choices",
    )
    token_lambda_blend: str = opt(
        "row",
        "what --token-lambda's λ blends for a token checkpoint: row (the placeholder's embedding, (1 − λ)·e_word + "
        "λ·e*: the text encoder reads a vector between two words) or prediction (the noise predictions of the two "
        "prompts, ε_word + λ·(ε* − ε_word), as guidance weighs a prompt: both ends are real prompts; one more U-Net "
        "pass per step where λ ≠ 1)",
        choices=TOKEN_LAMBDA_BLENDS,
        pairwise="choices",
    )
    reference_lambda: bool = opt(
        False,
        "ω follows λ: the reference's weight is ω·λ per image (λ = 0: no reference), so λ dials everything "
        "taken from the reference, not only the offsets",
        pairwise=(False, True),
    )
    compose_switch: float = opt(
        0.0,
        "compose by timestep split (ProSpect): the shape checkpoint acts in the steps with t ≥ s·T, the other "
        "checkpoint below (each one's adapter at 0 and placeholder read as its nearest word outside its steps); "
        "0 = both everywhere",
    )
    compose_look: str = opt(
        "late",
        "where the appearance or style checkpoint acts under --compose-switch: late (only the steps below s·T, its "
        "placeholder read as its nearest word above) or everywhere (every step: only the shape checkpoint is "
        "switched off in the late steps, so the look is there while the noisy steps set the colours)",
        choices=("late", "everywhere"),
        pairwise="choices",
    )
    reference_blocks: str = opt(
        "decoder",
        "U-Net blocks whose self-attention looks at the reference; auto: the checkpoints' own parts (encoder "
        "for shape, decoder otherwise)",
        choices=REFERENCE_BLOCKS,
    )

    @property
    def blends_predictions(self) -> bool:
        """Whether λ weighs a token's two noise predictions (`--token-lambda --token-lambda-blend prediction`)."""
        return self.token_lambda and self.token_lambda_blend == "prediction"

    @staticmethod
    def check_options(values: Mapping[str, Any]) -> None:
        _unit(dual_path=values["dual_path"])
        _finite(reference_attention=values["reference_attention"])
        _non_negative(reference_attention=values["reference_attention"])
        if not 0.0 <= values["compose_switch"] < 1.0:
            raise OstafError(
                f"--compose-switch is a fraction of the noise schedule in (0, 1) (0 = off), "
                f"got {values['compose_switch']}"
            )
        if values["compose_look"] != "late" and not values["compose_switch"]:
            raise OstafError(
                f"--compose-look {values['compose_look']} says where the look acts under --compose-switch: add "
                "--compose-switch s (e.g. 0.4), or drop --compose-look"
            )
        if values["compose_switch"] and values["reference_attention"]:
            raise OstafError(
                "--compose-switch and --reference-attention cannot be combined yet (the reference pass is a U-Net "
                "call of its own): drop one of them"
            )
        parse_block_scales(values["lam_blocks"])
        if values["reference_lambda"] and not values["reference_attention"]:
            raise OstafError("--reference-lambda scales the reference's weight ω: set --reference-attention ω > 0")
        if values["token_lambda_origin"] != "nearest" and not values["token_lambda"]:
            raise OstafError(
                f"--token-lambda-origin {values['token_lambda_origin']} says what λ = 0 of --token-lambda reads: add "
                "--token-lambda, or drop --token-lambda-origin"
            )
        if values["token_lambda_blend"] != "row":
            check_prediction_blend(values)
        _finite(guidance=values["guidance"], **{f"lam[{i}]": v for i, v in enumerate(values["lam"])})
        _positive(
            num_steps=values["num_steps"],
            batch_size=values["batch_size"],
            lam_count=len(values["lam"]),
            seed_count=len(values["seeds"]),
        )
        _non_negative(resolution=values["resolution"])
        _multiple_of_8(resolution=values["resolution"])
        for lam in [*values["lam"], *values["lam_per_ckpt"]]:
            if abs(lam) > LAM_LIMIT:
                raise OstafError(
                    f"λ = {lam:g} is far outside what offsets are trained for (|λ| ≤ {LAM_LIMIT:g}; 0 = no offsets, "
                    "1 = as trained): a λ that large saturates every modulated weight"
                )

    def check_item(self) -> None:
        if self.lam_per_ckpt and len(self.lam_per_ckpt) != len(self.ckpt):
            raise OstafError(
                f"--lam-per-ckpt gives {len(self.lam_per_ckpt)} strength(s) for {len(self.ckpt)} checkpoint(s): "
                "give one per --ckpt, in the same order"
            )
        if self.compose_switch and len(self.ckpt) < 2:
            raise OstafError(
                f"--compose-switch {self.compose_switch:g} splits the steps between checkpoints: pass a shape --ckpt "
                "and an appearance or style --ckpt"
            )
        if not self.ckpt and not (self.reference_attention > 0 and self.reference_image):
            raise OstafError(
                "no checkpoint given: pass --ckpt DIR (the --out of `ostaf train`), or --reference-attention ω with "
                "--reference-image PATH for the training-free path"
            )
        if not self.prompt:
            raise OstafError("no prompt given: pass --prompt 'a vase in the appearance of *a'")


@dataclass
class EvaluateConfig(_Config):
    """How a sweep is scored."""

    metric_models: str = opt(
        "auto",
        "networks behind CLIP-T/DINO/Gram/IoU: real (local weights, see `ostaf doctor`), tiny (random stand-ins: "
        "the code path only, numbers without meaning), auto (real for real models; for presets n/a: not computed)",
        choices=METRIC_MODELS,
        pipeline=True,
    )


EXPORT_FORMATS = ("diffusers", "kohya")


@dataclass
class ExportConfig(_Config):
    """A checkpoint at one λ as LoRA factors and a textual-inversion embedding, for tools without ostaf."""

    ckpt: str = opt(help="checkpoint folder (the --out of `ostaf train`)")
    out: str = opt(help="the LoRA file to write (.safetensors); the embedding and the report go beside it")
    lam: float = opt(1.0, "the strength whose weight change is exported")
    rank: int = opt(0, "LoRA rank of every layer (0: full rank, exact; see --max-error)")
    max_error: float = opt(
        0.0, "pick the smallest rank whose relative error is at most this in every layer (0: use --rank)"
    )
    format: str = opt("diffusers", "key layout: diffusers (peft names) or kohya (lora_unet_…)", choices=EXPORT_FORMATS)

    @staticmethod
    def check_options(values: Mapping[str, Any]) -> None:
        _non_negative(rank=values["rank"])
        _finite(lam=values["lam"], max_error=values["max_error"])
        if not 0.0 <= values["max_error"] < 1.0:
            raise OstafError(f"max_error is a relative error in [0, 1), got {values['max_error']}")
        if values["max_error"] and values["rank"]:
            raise OstafError("give --rank or --max-error, not both")
        if abs(values["lam"]) > LAM_LIMIT:
            raise OstafError(f"λ = {values['lam']:g} is outside |λ| ≤ {LAM_LIMIT:g}")

    def check_item(self) -> None:
        if not self.out.endswith(".safetensors"):
            raise OstafError(f"--out {self.out!r} must end in .safetensors (the LoRA file other tools load)")


def _multiple_of_8(**values: int) -> None:
    for name, value in values.items():
        if value % 8:
            nearest = max(8, (value + 4) // 8 * 8)  # the nearest multiple, ties up (12 → 16)
            raise OstafError(f"{name} {value} is not a multiple of 8 (the latent grid needs it): use e.g. {nearest}")


def check_prediction_blend(values: Mapping[str, Any]) -> None:
    """`--token-lambda-blend prediction` weighs two prompts' predictions per U-Net call: it needs the blend it
    belongs to, one λ for every checkpoint, and no other option that changes the U-Net call's context."""
    if not values["token_lambda"]:
        raise OstafError(
            f"--token-lambda-blend {values['token_lambda_blend']} says what --token-lambda's λ blends: add "
            "--token-lambda, or drop --token-lambda-blend"
        )
    clashes = {
        "--compose-switch": values["compose_switch"],
        "--reference-attention": values["reference_attention"],
        "--lam-per-ckpt": values["lam_per_ckpt"],
        "--dual-path": values["dual_path"] < 1.0,
    }
    named = [option for option, on in clashes.items() if on]
    if named:
        raise OstafError(
            f"--token-lambda-blend prediction runs a second U-Net pass with the hard prompt, which {named[0]} would "
            "change as well: drop one of them (or use --token-lambda-blend row)"
        )


def _unit(**values: float) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise OstafError(f"{name} must be in [0, 1], got {value!r}")


def _band(**values: list[float]) -> None:
    for name, value in values.items():
        if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value) or not 0 <= value[0] < value[1] <= 1:
            raise OstafError(f"{name} must be two fractions a < b in [0, 1] (e.g. 0.25 1), got {value!r}")


def _positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise OstafError(f"{name} must be > 0, got {value}")


# option → why it needs weights to train (refused with --trainable token), and why it needs a trainable token
NEEDS_WEIGHTS = {
    "token_steps": "--token-steps trains the token, then the weights with the token frozen; --trainable token has "
    "no weights to train after it: drop --token-steps",
    "prior_images": "--prior-images keeps trained weights from redrawing the class prompt; --trainable token has no "
    "weights (the class prompt has no placeholder): drop --prior-images",
}
NEEDS_TOKEN = {
    "token_steps": "--token-steps trains the token first: it needs a trainable token (drop --no-train-token)",
    "token_lr": "--token-lr is the token's rate: it needs a trainable token (drop --no-train-token)",
}


def _needs_weights_and_token(values: dict) -> None:
    """One error for an option set on a run without what it acts on (weights, or a trainable token)."""
    for option, message in NEEDS_WEIGHTS.items():
        if values[option] and values["trainable"] == "token":
            raise OstafError(message)
    for option, message in NEEDS_TOKEN.items():
        if values[option] and not values["train_token"]:
            raise OstafError(message)


def _non_negative(**values: int) -> None:
    for name, value in values.items():
        if value < 0:
            raise OstafError(f"{name} must be ≥ 0, got {value}")


def _finite(**values: float) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise OstafError(f"{name} must be a finite number, got {value!r}")
