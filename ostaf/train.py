"""Fine-tune the hypernetwork offsets (and the placeholder token) on one reference image.

`train(config)` reads like the method: load models, install offsets, build the
placeholder, cache the reference latent, then optimise the noise-prediction loss
on the prompt ``a {class} in the {attribute} of {token}``, checkpointing as it
goes. Each step is a small named function so tests and benchmarks can drive them.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from diffusers import DDPMScheduler
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from ostaf import checkpoint as ckpt_io
from ostaf.attributes import Attribute, get_attribute
from ostaf.conditioning import PromptEncoder, micro_conditioning
from ostaf.config import TRAINABLE, TrainConfig
from ostaf.errors import OstafError
from ostaf.image_encoder import ImageEncoder, load_image_encoder, saved_image_embedding
from ostaf.lora import LoraAdapter, LoraSpec
from ostaf.mechanisms import schedule, timesteps
from ostaf.mechanisms.base import BaseModel
from ostaf.mechanisms.registry import build_mechanisms
from ostaf.models import Pipeline, base_of, load_pipeline, native_resolution
from ostaf.offsets import OffsetsAdapter, OffsetsConfig
from ostaf.offsets.config import block_of
from ostaf.offsets.inject import check_targets
from ostaf.offsets.processor import DetachedContextProcessor
from ostaf.placeholder import PlaceholderEmbedding
from ostaf.preflight import check_train_inputs
from ostaf.preprocess import Preprocessed, load_reference
from ostaf.processors import attention_layers, unwrap, wrap
from ostaf.runtime import autocast_dtype, progress_bar, resolve_device, seed_everything, seeded
from ostaf.training_setup import (  # noqa: F401 (text_context: read by tests and benchmarks from here)
    Batch,
    Frames,
    TrainingSetup,
    autocast,
    encode_reference,
    frame_conditioning,
    frame_mse,
    noised,
    predict,
    text_context,
    unet_conditioning,
)

log = logging.getLogger(__name__)


class Tracker(Protocol):
    """Where metrics go (MLflow, or nothing); training never asks which."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class NullTracker:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass


class NonFiniteLoss(OstafError):
    """The loss is NaN or infinite: stop at once (nothing of this step is applied)."""


@dataclass
class TrainResult:
    out: Path
    step: int
    losses: list[float]
    seconds_per_step: float
    nearest_words: list[str] = field(default_factory=list)  # e*'s nearest vocabulary words (--nn-contrastive)


def train(
    config: TrainConfig,
    pipe: Pipeline | None = None,
    image_encoder: ImageEncoder | None = None,
    tracker: Tracker | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train and write checkpoints under `config.out`; resumes if a checkpoint is there."""
    tracker = tracker or NullTracker()
    check_train_inputs(config)  # before minutes of work, not at the first save
    generator = seed_everything(config.seed)
    setup = prepare(config, pipe, image_encoder)
    optimizer = make_optimizer(setup)
    scaler = torch.amp.GradScaler("cuda", enabled=setup.amp_dtype == torch.float16)
    out = Path(config.out)
    start = ckpt_io.resume(setup, optimizer, generator, out, scaler)

    losses: list[float] = []
    started = time.perf_counter()
    bar = progress_bar(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        disable=not progress,
        desc=f"ostaf {config.attribute}",
        unit="step",
    )
    for step in bar:
        enter_step(setup, step)
        try:
            loss = optimizer_step(setup, optimizer, scaler, generator)
        except NonFiniteLoss as err:
            good = ckpt_io.latest_resumable(out)
            kept = f"the last good checkpoint, {good}, is intact" if good else "no checkpoint had been written yet"
            raise OstafError(f"step {step + 1}: {err}; {kept}") from None
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # shown at the bar's own pace
        with torch.no_grad():
            tracker.log_metrics({"loss": loss, "token_norm": float(setup.token().norm())}, step + 1)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            ckpt_io.save_training_checkpoint(
                setup, optimizer, generator, ckpt_io.step_folder(out, step + 1), step + 1, scaler
            )
    elapsed = time.perf_counter() - started
    ckpt_io.save_training_checkpoint(setup, optimizer, generator, out, config.steps, scaler)
    words = nearest_words(setup)
    if words:
        log.info("nearest vocabulary words of %s: %s", setup.attribute.token, ", ".join(words))
    finalize(setup)
    return TrainResult(out, config.steps, losses, elapsed / max(len(losses), 1), words)


def nearest_words(setup: TrainingSetup) -> list[str]:
    """What the mechanisms tell after training: e*'s nearest vocabulary words (only with --nn-contrastive)."""
    return [word for m in setup.mechanisms for word in m.words(setup)]


def enter_step(setup: TrainingSetup, step: int) -> None:
    """Step `step` (0-based) is next: each mechanism sets what trains at it (idempotent: a resume lands right)."""
    setup.step = step
    for mechanism in setup.mechanisms:
        mechanism.enter_step(setup, step)


@torch.no_grad()
def finalize(setup: TrainingSetup) -> None:
    """Leave `setup.pipe` personalised like `apply` would: e* in its token row, no hook, eval mode."""
    for hook in setup.token_hooks:
        hook.remove()
    setup.token_hooks = []
    for mechanism in reversed(setup.mechanisms):
        mechanism.close(setup)
    for hook in setup.prefix_hooks:
        hook.remove()
    setup.prefix_hooks = []
    release_token_gradient(setup.pipe)
    setup.prompts.write_row(setup.token_id, setup.token().detach())
    for p in setup.trainable:
        p.requires_grad_(False)


# -- setup ----------------------------------------------------------------------


def prepare(
    config: TrainConfig, pipe: Pipeline | None = None, image_encoder: ImageEncoder | None = None
) -> TrainingSetup:
    """Load and freeze the models, install offsets and the placeholder, cache the reference latent."""
    attribute = get_attribute(config.attribute)
    device = resolve_device(config.device)
    amp_dtype = autocast_dtype(config.precision, device)
    pipe = pipe or load_pipeline(config.model, seed=config.seed)
    reference = load_reference(config, config.resolution or native_resolution(pipe))
    pipe.to(device)
    prompts = PromptEncoder(pipe)
    encoders = [encoder for _, encoder in prompts.pairs]
    for module in (pipe.unet, pipe.vae, *encoders):
        module.requires_grad_(False).eval()
    if amp_dtype is not None:  # frozen weights in half precision; trainables below stay fp32
        pipe.unet.to(amp_dtype)  # the VAE stays fp32: it encodes the reference once, where fp16 overflows (SDXL's)
        for encoder in encoders:
            encoder.to(amp_dtype)

    # on the base model, before any adapter or placeholder is installed (prior preservation draws its images)
    base = BaseModel(pipe, prompts, reference, base_key(pipe, config), config.resolution or native_resolution(pipe))
    mechanisms = build_mechanisms(config, base)
    offsets = config.offsets_config()
    layers = targeted_layers(pipe.unet, offsets)
    adapter = install_adapter(config, pipe, offsets, layers, attribute.token)
    trainable = list(adapter.parameters()) if adapter else []
    trainable += unfreeze_blocks(
        pipe, fine_tuned_blocks(config, pipe.unet, offsets, layers), config.keep_text_projections
    )

    token = build_placeholder(config, attribute, prompts, reference.image, image_encoder).to(device)
    token_id = prompts.add_token(attribute.token, token().detach())
    hooks = prompts.inject(token_id, token)
    if config.train_token:
        trainable += list(token.parameters())
        if config.token_grad == "confined":
            confine_token_gradient(pipe, layers)
    else:
        token.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)

    input_ids = prompts.ids(attribute.training_prompt(config.class_name))
    mean, std = encode_reference(pipe, reference)
    speed_up(pipe.unet, config)
    setup = TrainingSetup(
        config=config,
        attribute=attribute,
        pipe=pipe,
        adapter=adapter,
        offsets=offsets,
        layers=layers,
        token=token,
        token_id=token_id,
        input_ids=input_ids,
        latent_mean=mean,
        latent_std=std,
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        device=device,
        amp_dtype=amp_dtype,
        trainable=trainable,
        token_hooks=hooks,
        time_ids=reference_time_ids(reference).to(device) if prompts.xl else None,
        mechanisms=mechanisms,
    )
    for mechanism in mechanisms:
        mechanism.attach(setup)
    if not any(p.requires_grad for p in token.parameters()):
        with torch.no_grad(), autocast(setup):
            setup.cached_context = text_context(setup)
    if prefix_needs_no_autograd(setup):
        setup.prefix_hooks = run_without_autograd([*pipe.unet.down_blocks, pipe.unet.mid_block])
    return setup


def prefix_needs_no_autograd(setup: TrainingSetup) -> bool:
    """Nothing before the first up block can reach a gradient: every modulated layer and every trainable U-Net
    weight is in the up blocks, and the token learns only through them (confined) or not at all."""
    config = setup.config
    token_stops = not config.train_token or config.token_grad == "confined"
    trained = [n for n, p in setup.unet.named_parameters() if p.requires_grad]
    return token_stops and all(name.startswith("up_blocks.") for name in [*setup.layers, *trained])


def run_without_autograd(blocks: list[torch.nn.Module]) -> list[RemovableHandle]:
    """Forward hooks (torch's public ones) that run `blocks` with autograd off and restore its state after each.

    Used where no gradient can flow through them (`prefix_needs_no_autograd`): the gradients are bit-identical,
    and the step saves what autograd keeps and the kernels' training-mode paths cost (benchmarks/no_grad_prefix.py).
    """
    states: list[bool] = []

    def leave(*_) -> None:  # returns None: a pre-hook's return value would replace the block's inputs
        states.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def restore(*_) -> None:
        torch.set_grad_enabled(states.pop())

    return [h for b in blocks for h in (b.register_forward_pre_hook(leave), b.register_forward_hook(restore))]


def speed_up(unet, config: TrainConfig) -> None:
    """The performance flags: each changes speed or memory, never what is learned (up to float rounding)."""
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if config.channels_last:
        unet.to(memory_format=torch.channels_last)
    if config.compile:
        unet.compile()  # in place: the module (and its attention processors) stay addressable


def confine_token_gradient(pipe: Pipeline, layers: list[str]) -> None:
    """Detach the text context at every cross-attention outside the targeted layers (undone by `finalize`)."""
    outside = attention_layers(pipe.unet, lambda layer: layer.endswith("attn2") and layer not in layers)
    wrap(pipe.unet, outside, lambda inner, _: DetachedContextProcessor(inner))


def release_token_gradient(pipe: Pipeline) -> None:
    unwrap(pipe.unet, DetachedContextProcessor)


def targeted_layers(unet, offsets: OffsetsConfig) -> list[str]:
    """The attention modules the run targets (one error naming the U-Net's modules when a pattern fits none)."""
    return check_targets(unet, offsets)


def install_adapter(
    config: TrainConfig, pipe: Pipeline, offsets: OffsetsConfig, layers: list[str], token: str
) -> OffsetsAdapter | LoraAdapter | None:
    """The trainable's adapter on the targeted layers (offsets for lite/paper, LoRA for lora), or None: the
    baselines train the token or U-Net weights, and no empty adapter stands in for them."""
    kind = TRAINABLE[config.trainable].adapter
    with seeded(config.seed):  # the adapter's initial weights depend on the seed only
        if kind == "offsets":
            return OffsetsAdapter.install(pipe.unet, offsets, token)
        if kind == "lora":
            return LoraAdapter.install(pipe.unet, LoraSpec(tuple(layers), rank=config.lora_rank), token)
    return None


def fine_tuned_blocks(config: TrainConfig, unet, offsets: OffsetsConfig, layers: list[str]) -> list[str]:
    """The U-Net modules whose weights the trainable fine-tunes ("" is the whole U-Net; none for the others)."""
    blocks = TRAINABLE[config.trainable].blocks
    if blocks == "all":
        return [""]
    return targeted_modules(unet, offsets, layers) if blocks == "targeted" else []


def targeted_modules(unet, offsets: OffsetsConfig, layers: list[str]) -> list[str]:
    """What `paper` and `blocks` fine-tune: the targeted U-Net blocks, or with explicit targets the modules the
    patterns name (``up_blocks.0.attentions.1``: that attention module's weights only)."""
    patterns = offsets.targets
    if not patterns:
        return sorted({block_of(layer) for layer in layers})
    named = [n for n, _ in unet.named_modules() if n and any(fnmatchcase(n, t) for t in patterns)]
    return [n for n in named if not any(n.startswith(f"{other}.") for other in named)]  # outermost only


def base_key(pipe: Pipeline, config: TrainConfig) -> str:
    """The base model's identity for caches: its name, and a random preset's weight seed."""
    base = base_of(pipe)
    return f"{base.model}@{base.seed}" if base else f"{config.model}@{config.seed}"


TEXT_PROJECTIONS = ("attn2.to_k.", "attn2.to_v.")  # where a cross-attention reads the text (its keys and values)


def unfreeze_blocks(pipe: Pipeline, blocks: list[str], keep_text: bool = False) -> list[torch.nn.Parameter]:
    """Every weight of `blocks` trains, kept in fp32 (`paper`, `blocks`; "" is the whole U-Net); with `keep_text`
    not the cross-attention's text projections (`--keep-text-projections`)."""
    params = []
    for block in blocks:
        module = pipe.unet.get_submodule(block).float()
        for name, p in module.named_parameters():
            qualified = f".{name}"
            if ".processor." in qualified or (keep_text and any(f".{k}" in qualified for k in TEXT_PROJECTIONS)):
                continue
            params.append(p)
    return params


def build_placeholder(
    config: TrainConfig, attribute: Attribute, prompts: PromptEncoder, image, image_encoder: ImageEncoder | None
) -> PlaceholderEmbedding:
    """e* from the attribute word in every text encoder (+ α·f(image), f projecting to each encoder's width)."""
    word = prompts.word_row(attribute.word)
    if config.token_init == "word":
        return PlaceholderEmbedding(word, None, config.token_alpha, vectors=config.num_vectors)
    embedding = saved_image_embedding(config.image) if Path(config.image).is_dir() else None
    if embedding is None:
        encoder = image_encoder or load_image_encoder(config.model, seed=config.seed)
        embedding = encoder.embed(image)
    with seeded(config.seed):  # the init MLP's weights depend on the seed only
        return PlaceholderEmbedding(word, embedding, config.token_alpha, prompts.widths, config.num_vectors)


def reference_time_ids(reference: Preprocessed) -> torch.Tensor:
    """(K, 6) SDXL micro-conditioning per augmentation, as diffusers' SDXL trainers compute it: the reference's
    original (h, w), the crop's top-left (y, x) in the resized image, the target (h, w)."""
    width, height = reference.image.size
    return torch.cat(
        [
            micro_conditioning((height, width), (r.crop[1], r.crop[0]), (r.resolution, r.resolution))
            for r in reference.recipes
        ]
    )


def param_groups(setup: TrainingSetup) -> list[dict]:
    """The weights at --lr and the placeholder token at --token-lr (one group each, where there is one); one
    group without --token-lr (the optimiser state a checkpoint of such a run resumes)."""
    config = setup.config
    token = {id(p) for p in setup.token.parameters()}
    params = [p for p in setup.trainable if p.requires_grad]
    if not config.token_lr:
        return [{"params": params, "lr": config.effective_lr()}]
    groups = [
        {"params": [p for p in params if id(p) not in token], "lr": config.effective_lr()},
        {"params": [p for p in params if id(p) in token], "lr": config.effective_lr(token=True)},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(setup: TrainingSetup) -> torch.optim.Optimizer:
    config = setup.config
    groups = param_groups(setup)
    params = [p for g in groups for p in g["params"]]
    if config.optimizer == "adamw8bit":
        if setup.device.type == "cuda":
            try:
                import bitsandbytes as bnb

                return bnb.optim.AdamW8bit(groups, lr=config.effective_lr())
            except ImportError:
                warnings.warn("bitsandbytes is not installed (pip install 'ostaf[gpu]'); using AdamW", stacklevel=2)
        else:
            warnings.warn("8-bit AdamW needs CUDA; using torch AdamW", stacklevel=2)
    # the fused kernel updates every tensor in one pass (no per-step temporaries): ~2x faster here
    fused = setup.device.type in ("cpu", "cuda") and all(p.dtype == torch.float32 for p in params)
    return torch.optim.AdamW(groups, lr=config.effective_lr(), fused=fused)


# -- one step -------------------------------------------------------------------


def sample_batch(setup: TrainingSetup, generator: torch.Generator) -> Batch:
    """One micro-batch, all drawn from the run's generator (a mechanism that is off draws nothing)."""
    batch = setup.config.batch_size
    shape = (batch, *setup.latent_mean.shape[1:])
    pick = torch.randint(0, setup.latent_mean.shape[0], (batch,), generator=generator)  # which augmentation
    eps = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    steps = timesteps.sample_timesteps(setup, batch, generator)
    latents = setup.latent_mean[pick] + setup.latent_std[pick] * eps.to(setup.device)
    lam = schedule.sample_lambda(setup, batch, generator)
    return Batch(latents, noise.to(setup.device), steps.to(setup.device), pick, lam)


class Losses(NamedTuple):
    """A micro-batch's loss terms (--fused-accum: the mean over the fused ones), unweighted but for the frames'."""

    mse: torch.Tensor  # the reference's noise-prediction MSE (a mechanism's own reduction where one gives it)
    reg: torch.Tensor  # ‖e*‖² (0 when the token does not train)
    frames: torch.Tensor  # Σ weight × MSE over the mechanisms' extra frames (0 without any)


def denoising_loss(
    setup: TrainingSetup,
    latents: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    pick: torch.Tensor | None = None,
    lam: torch.Tensor | None = None,
    frames: Sequence[Frames] = (),
    groups: int = 1,
) -> Losses:
    """The loss terms of given latents, noise and timesteps (and per-sample λ), with `frames` — the views', the
    prior's — denoised in the same U-Net pass where every mechanism allows it, else in passes of their own.
    `groups` > 1: the batch is that many micro-batches of one size (--fused-accum), each reduced as alone."""
    batch = Batch(latents, noise, t, pick, lam)
    scheduler = setup.noise_scheduler
    noisy, target = noised(setup, latents, noise, t)
    shared = list(frames) if lam is None and all(m.shares_pass(setup) for m in setup.mechanisms) else []
    with ExitStack() as stack:
        if setup.adapter is not None and lam is not None:  # per-sample λ; else the adapter's own
            stack.enter_context(setup.adapter.at(lam.to(setup.device)))
        for mechanism in setup.mechanisms:
            stack.enter_context(mechanism.forward(setup, batch))
        with autocast(setup):
            cond = unet_conditioning(setup, latents.shape[0], pick)
        inputs = [(*noised(setup, f.latents, f.noise, f.timesteps), f) for f in shared]
        parts = [(x, f.timesteps, frame_conditioning(setup, f)) for x, _, f in inputs]
        pred, *frame_preds = predict(setup, [(noisy, t, cond), *parts])
    weights = timesteps.snr_weights(scheduler, t, setup.config.snr_gamma)
    pred, target = pred.float(), target.float()
    if groups == 1:
        mse = reference_mse(setup, pred, target, weights, batch)
    else:  # a mechanism's reduction (the masked mean) is per micro-batch: each as if alone, then their mean
        w = [None] * groups if weights is None else weights.chunk(groups)
        micro = zip(pred.chunk(groups), target.chunk(groups), w, batch.chunk(groups), strict=True)
        mse = torch.stack([reference_mse(setup, *one) for one in micro]).mean()
    reg = setup.token().pow(2).sum() if setup.config.train_token else mse.new_zeros(())  # ‖e*‖²
    joined = zip(frame_preds, inputs, strict=True)
    terms = [f.weight * F.mse_loss(p.float(), goal.float()) for p, (_, goal, f) in joined]
    if not shared:  # their own passes, after the reference's and outside its contexts
        terms += [f.weight * frame_mse(setup, f) for f in frames]
    return Losses(mse, reg, sum(terms, mse.new_zeros(())))


def reference_mse(
    setup: TrainingSetup, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, batch: Batch
) -> torch.Tensor:
    """The reference's noise-prediction MSE: a mechanism's own reduction where one gives it, else the mean
    (each sample × its SNR weight under --snr-gamma)."""
    reduced = (m.reduce(pred, target, weights, batch) for m in setup.mechanisms)
    mse = next((r for r in reduced if r is not None), None)
    if mse is None and weights is not None:
        mse = (F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()
    elif mse is None:
        mse = F.mse_loss(pred, target)
    return mse


def mechanism_frames(setup: TrainingSetup, batch: Batch, generator: torch.Generator) -> list[Frames]:
    """The mechanisms' extra frames of this micro-batch, drawn from `generator` after the batch (registry order)."""
    frames = (m.frames(setup, batch, generator) for m in setup.mechanisms)
    return [f for f in frames if f is not None]


def mechanism_loss(setup: TrainingSetup, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """The weighted loss terms of the mechanisms that are on (read after `denoising_loss` of the same batch)."""
    terms = [m.loss(setup, batch, generator) for m in setup.mechanisms]
    terms = [term for term in terms if term is not None]
    return sum(terms) if terms else None


def optimizer_step(
    setup: TrainingSetup, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, generator: torch.Generator
) -> float:
    """`grad_accum` micro-batches, then one update; returns the mean total loss. With --fused-accum the
    micro-batches run as one U-Net pass: the same draws (all drawn first, in the order accumulation draws them:
    nothing in a forward draws), each reduced as alone, so the same losses and gradients."""
    accum = setup.config.grad_accum
    draws = []
    for _ in range(accum):
        batch = sample_batch(setup, generator)
        draws.append((batch, mechanism_frames(setup, batch, generator)))
    total = 0.0
    for group in [draws] if setup.config.fused_accum else [[draw] for draw in draws]:
        if len(group) == 1:
            batch, frames = group[0]
        else:
            batch = Batch.cat([b for b, _ in group])
            frames = [Frames.cat(list(same)) for same in zip(*(f for _, f in group), strict=True)]
        losses = denoising_loss(setup, *batch, frames=frames, groups=len(group))
        loss = losses.mse + setup.config.token_reg * losses.reg + losses.frames
        extra = mechanism_loss(setup, batch, generator)
        if extra is not None:
            loss = loss + extra
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss.item()} (not finite): lower --lr, or use --precision fp32")
        scaler.scale(loss * len(group) / accum).backward()
        total += loss.item() * len(group) / accum
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def evaluation_loss(setup: TrainingSetup, seed: int = 0, samples: int = 8) -> float:
    """Mean noise-prediction MSE over fixed (noise, timestep) pairs on the reference's mean latent."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(samples):
        latent = setup.latent_mean[:1]
        noise = torch.randn(latent.shape, generator=generator).to(setup.device)
        t = torch.tensor([(i * setup.noise_scheduler.config.num_train_timesteps) // samples]).to(setup.device)
        total += denoising_loss(setup, latent, noise, t).mse.item()
    return total / samples
