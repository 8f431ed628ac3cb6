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
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from diffusers import DDPMScheduler
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from ostaf import checkpoint as ckpt_io
from ostaf.attributes import Attribute, get_attribute
from ostaf.conditioning import Conditioning, PromptEncoder, micro_conditioning
from ostaf.config import ADAPTER_OF, TrainConfig
from ostaf.errors import OstafError
from ostaf.image_encoder import ImageEncoder, load_image_encoder, saved_image_embedding
from ostaf.images import to_tensor
from ostaf.lora import LoraAdapter, LoraSpec
from ostaf.mechanisms import binding, dual_path, schedule, timesteps, word_search
from ostaf.mechanisms import prior as prior_images
from ostaf.mechanisms.contrastive import NearestWordContrast
from ostaf.mechanisms.masked_loss import latent_masks, masked_mse
from ostaf.models import Pipeline, base_of, load_pipeline, native_resolution, vae_encode
from ostaf.offsets import OffsetsAdapter, OffsetsConfig
from ostaf.offsets.config import block_of
from ostaf.offsets.inject import check_targets
from ostaf.offsets.processor import DetachedContextProcessor
from ostaf.placeholder import PlaceholderEmbedding
from ostaf.preflight import check_train_inputs
from ostaf.preprocess import Preprocessed, augment, load_reference
from ostaf.processors import attention_layers, unwrap, wrap
from ostaf.runtime import autocast_dtype, progress_bar, resolve_device, seed_everything, seeded

log = logging.getLogger(__name__)


class Tracker(Protocol):
    """Where metrics go (MLflow, or nothing); training never asks which."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class NullTracker:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass


@dataclass
class TrainingSetup:
    """Everything one training step touches."""

    config: TrainConfig
    attribute: Attribute
    pipe: Pipeline
    adapter: OffsetsAdapter | LoraAdapter | None  # what carries λ (ostaf.strength); None: token / fine-tuning
    offsets: OffsetsConfig  # the targeted attention (parts, targets): the card records it for every trainable
    layers: list[str]  # the targeted attention modules, whatever trains on them
    token: PlaceholderEmbedding
    token_id: int
    input_ids: torch.Tensor  # (E, 1, 77): the training prompt, one row per text encoder (SDXL: 2)
    latent_mean: torch.Tensor  # (K, 4, h, w), VAE posteriors of the reference's K augmentations
    latent_std: torch.Tensor
    noise_scheduler: DDPMScheduler
    device: torch.device
    amp_dtype: torch.dtype | None
    trainable: list[torch.nn.Parameter] = field(default_factory=list)
    token_hooks: list[RemovableHandle] = field(default_factory=list)  # e* into each text encoder
    prefix_hooks: list[RemovableHandle] = field(default_factory=list)  # the down/mid blocks run without autograd
    cached_context: Conditioning | None = None  # the text conditioning when the token is frozen
    time_ids: torch.Tensor | None = None  # (K, 6) SDXL micro-conditioning of each augmentation; None on SD-1.x
    step: int = 0  # the 0-based step being trained (`schedule.enter_step`)
    # the mechanisms' state (ostaf.mechanisms); None when a mechanism is off
    loss_masks: torch.Tensor | None = None  # (K, 1, h, w) per augmentation, dilated: --masked-loss
    binding_masks: torch.Tensor | None = None  # (K, 1, h, w) per augmentation: binding targets
    attention: binding.AttentionRecord | None = None  # --attn-binding
    contrast: NearestWordContrast | None = None  # --nn-contrastive
    vocabulary: torch.Tensor | None = None  # (V, D) unit rows of the words before the placeholder: --dual-path
    vanilla: tuple[int, torch.Tensor] | None = None  # (nearest word, its hard prompt's context), reused while it holds
    prior: prior_images.PriorImages | None = None  # --prior-images: the base model's class images

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def prompts(self) -> PromptEncoder:
        return PromptEncoder(self.pipe)


class NonFiniteLoss(OstafError):
    """The loss is NaN or infinite: stop at once (nothing of this step is applied)."""


@dataclass
class TrainResult:
    out: Path
    step: int
    losses: list[float]
    seconds_per_step: float
    nearest_words: list[str] = field(default_factory=list)  # e*'s nearest vocabulary words (--nn-contrastive)


class Batch(NamedTuple):
    """One micro-batch, all drawn from the run's generator."""

    latents: torch.Tensor  # (B, 4, h, w)
    noise: torch.Tensor
    timesteps: torch.Tensor  # (B,)
    pick: torch.Tensor | None = None  # (B,) which augmentation each sample is
    lam: torch.Tensor | None = None  # (B,) per-sample λ (--train-lam uniform), else the adapter's own


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
        schedule.enter_step(setup, step)
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


def nearest_words(setup: TrainingSetup, count: int = 5) -> list[str]:
    """e*'s nearest vocabulary words, as 'word (cosine)' (only with --nn-contrastive)."""
    if setup.contrast is None:
        return []
    pairs = setup.contrast.nearest(setup.token().detach(), count)
    return [f"{setup.prompts.tokenizer.convert_ids_to_tokens(i)} ({cos})" for i, cos in pairs]


@torch.no_grad()
def finalize(setup: TrainingSetup) -> None:
    """Leave `setup.pipe` personalised like `apply` would: e* in its token row, no hook, eval mode."""
    for hook in setup.token_hooks:
        hook.remove()
    setup.token_hooks = []
    binding.remove_probes(setup.unet)
    for hook in setup.prefix_hooks:
        hook.remove()
    setup.prefix_hooks = []
    setup.attention = None
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

    prior = None
    if config.prior_images:  # the base model's images: before any adapter or placeholder is installed
        prior = prior_images.prepare_prior(
            pipe,
            prompts,
            base_key(pipe, config),
            prior_images.class_prompt(config.class_name, config.prior_prompt),
            config.prior_images,
            config.resolution or native_resolution(pipe),
            config.seed,
        )
    offsets = config.offsets_config()
    layers = targeted_layers(pipe.unet, offsets)
    adapter = install_adapter(config, pipe, offsets, layers, attribute.token)
    trainable = list(adapter.parameters()) if adapter else []
    if config.trainable in ("paper", "blocks"):
        trainable += unfreeze_blocks(pipe, targeted_modules(pipe.unet, offsets, layers))
    elif config.trainable == "unet":
        trainable += unfreeze_blocks(pipe, [""])

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
    mechanisms = prepare_mechanisms(config, pipe, reference, tuple(mean.shape[-2:]), input_ids, token_id)
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
        prior=prior,
        **mechanisms,
    )
    if config.token_search:
        found = word_search.search_word(
            setup, config.token_search, config.token_search_rounds, config.token_search_samples
        )
        word = prompts.tokenizer.convert_ids_to_tokens(found.word_id) if found.word_id >= 0 else attribute.word
        log.info(
            "word search: %s starts at %r (loss %.4f, %s's own word %.4f; %d words scored)",
            attribute.token,
            word,
            found.loss,
            attribute.name,
            found.start_loss,
            found.tried,
        )
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


def prepare_mechanisms(
    config: TrainConfig,
    pipe: Pipeline,
    reference: Preprocessed,
    latent_size: tuple[int, int],
    input_ids: torch.Tensor,
    token_id: int,
) -> dict:
    """The state of each mechanism that is on (`TrainingSetup` fields); an off mechanism builds nothing."""
    state: dict = {}
    if config.masked_loss:
        state["loss_masks"] = latent_masks(reference, latent_size, config.mask_dilation).to(input_ids.device)
    if config.attn_binding:
        if not reference.mask.all():  # segmented: bind to the mask; else to the class word's map
            state["binding_masks"] = latent_masks(reference, latent_size, 0).to(input_ids.device)
        ids = input_ids[0, 0].tolist()
        class_ids = pipe.tokenizer(config.class_name, add_special_tokens=False).input_ids
        positions = [ids.index(token_id), 1 + len(class_ids)]  # the placeholder; the class name's last word
        resolution = config.attn_binding_res or binding.middle_resolution(pipe.unet, latent_size[-1])
        state["attention"] = binding.AttentionRecord(positions, resolution)
        binding.install_probes(pipe.unet, state["attention"])
    if config.dual_path < 1.0 or config.nn_contrastive:  # unit rows of the words before *a/*m/*s, once, shared
        words = F.normalize(PromptEncoder(pipe).rows(token_id), dim=-1)
    if config.dual_path < 1.0:
        state["vocabulary"] = words
    if config.nn_contrastive:
        state["contrast"] = NearestWordContrast(
            words, config.nn_k, config.nn_temperature, config.nn_vocab, config.seed, normalised=True
        )
    return state


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
    kind = ADAPTER_OF.get(config.trainable)
    with seeded(config.seed):  # the adapter's initial weights depend on the seed only
        if kind == "offsets":
            return OffsetsAdapter.install(pipe.unet, offsets, token)
        if kind == "lora":
            return LoraAdapter.install(pipe.unet, LoraSpec(tuple(layers), rank=config.lora_rank), token)
    return None


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


def unfreeze_blocks(pipe: Pipeline, blocks: list[str]) -> list[torch.nn.Parameter]:
    """Every weight of `blocks` trains, kept in fp32 (`paper`, `blocks`; "" is the whole U-Net)."""
    params = []
    for block in blocks:
        module = pipe.unet.get_submodule(block).float()
        params += [p for name, p in module.named_parameters() if ".processor." not in f".{name}"]
    return params


def build_placeholder(
    config: TrainConfig, attribute: Attribute, prompts: PromptEncoder, image, image_encoder: ImageEncoder | None
) -> PlaceholderEmbedding:
    """e* from the attribute word in every text encoder (+ α·f(image), f projecting to each encoder's width)."""
    word = prompts.word_row(attribute.word)
    if config.token_init == "word":
        return PlaceholderEmbedding(word, None, config.token_alpha)
    embedding = saved_image_embedding(config.image) if Path(config.image).is_dir() else None
    if embedding is None:
        encoder = image_encoder or load_image_encoder(config.model, seed=config.seed)
        embedding = encoder.embed(image)
    with seeded(config.seed):  # the init MLP's weights depend on the seed only
        return PlaceholderEmbedding(word, embedding, config.token_alpha, prompts.widths)


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


@torch.no_grad()
def encode_reference(pipe: Pipeline, reference: Preprocessed) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posteriors (mean, std), each (K, 4, h, w), of the K augmentations: encoded once per run."""
    means, stds = [], []
    for recipe in reference.recipes:
        pixels = to_tensor(augment(reference.image, recipe, reference.attribute))
        posterior = vae_encode(pipe.vae, pixels)
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


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


def autocast(setup: TrainingSetup):
    return torch.autocast(setup.device.type, dtype=setup.amp_dtype, enabled=setup.amp_dtype is not None)


def text_context(setup: TrainingSetup) -> Conditioning:
    """The training prompt's text conditioning, with the live e* injected (SDXL: without the time ids)."""
    if setup.cached_context is not None:
        return setup.cached_context
    return setup.prompts.encode(setup.input_ids)


def unet_conditioning(setup: TrainingSetup, batch: int, pick: torch.Tensor | None = None) -> Conditioning:
    """The conditioning of `batch` samples: the prompt's, and on SDXL each sample's augmentation's time ids
    (`pick`; None: the first augmentation's)."""
    cond = text_context(setup).expand(batch)
    if setup.time_ids is None:
        return cond
    time_ids = setup.time_ids[pick] if pick is not None else setup.time_ids[:1].expand(batch, -1)
    # confined: the token learns only through the adapter's cross-attentions, so not through SDXL's pooled
    # embedding either (it enters every resnet through the time embedding)
    pooled = cond.pooled.detach() if setup.config.token_grad == "confined" else cond.pooled
    return replace(cond, pooled=pooled, time_ids=time_ids)


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


def denoising_loss(
    setup: TrainingSetup,
    latents: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    pick: torch.Tensor | None = None,
    lam: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise-prediction MSE, token regulariser) for given latents, noise and timesteps (and per-sample λ)."""
    scheduler = setup.noise_scheduler
    latents = latents * setup.pipe.vae.config.scaling_factor
    noisy = scheduler.add_noise(latents, noise, t)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
    with ExitStack() as stack:
        if setup.adapter is not None:
            step_lam = 0.0 if schedule.in_token_phase(setup, setup.step) else lam
            if step_lam is not None:
                stack.enter_context(
                    setup.adapter.at(step_lam if isinstance(step_lam, float) else step_lam.to(setup.device))
                )
            if setup.vocabulary is not None:
                stack.enter_context(setup.adapter.dual_path(setup.config.dual_path, vanilla_context(setup)))
        if setup.attention is not None:
            stack.enter_context(binding.recording(setup.attention))
        with autocast(setup):
            cond = unet_conditioning(setup, latents.shape[0], pick)
            pred = setup.unet(noisy.to(setup.unet.dtype), t, **cond.unet_kwargs()).sample
    weights = timesteps.snr_weights(scheduler, t, setup.config.snr_gamma)
    if setup.loss_masks is not None and pick is not None:
        mse = masked_mse(pred.float(), target.float(), setup.loss_masks[pick], weights)
    elif weights is not None:
        mse = (F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)) * weights).mean()
    else:
        mse = F.mse_loss(pred.float(), target.float())
    reg = setup.token().pow(2).sum() if setup.config.train_token else mse.new_zeros(())  # ‖e*‖²
    return mse, reg


@torch.no_grad()
def vanilla_context(setup: TrainingSetup) -> torch.Tensor:
    """The dual path's hard prompt: the training prompt with e* replaced by its nearest word now, (1, T, D)."""
    word = dual_path.nearest_word(setup.token(), setup.vocabulary, normalised=True)
    if setup.vanilla is None or setup.vanilla[0] != word:  # the frozen text encoder gives the same context again
        with autocast(setup):
            context = setup.prompts.encode(dual_path.hard_ids(setup.input_ids, {setup.token_id: word})).states
        setup.vanilla = (word, context)
    return setup.vanilla[1]


def mechanism_loss(setup: TrainingSetup, batch: Batch) -> torch.Tensor | None:
    """The weighted losses of the mechanisms that are on (read after `denoising_loss` of the same batch)."""
    terms = []
    if setup.attention is not None:
        masks = None if setup.binding_masks is None else setup.binding_masks[batch.pick]
        terms.append(setup.config.attn_binding * binding.binding_loss(setup.attention, masks))
    if setup.contrast is not None:
        terms.append(setup.config.nn_contrastive * setup.contrast.loss(setup.token(), setup.step))
    return sum(terms) if terms else None


def optimizer_step(
    setup: TrainingSetup, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, generator: torch.Generator
) -> float:
    """`grad_accum` micro-batches, then one update; returns the mean total loss."""
    accum = setup.config.grad_accum
    total = 0.0
    for _ in range(accum):
        batch = sample_batch(setup, generator)
        mse, reg = denoising_loss(setup, *batch)
        loss = mse + setup.config.token_reg * reg
        extra = mechanism_loss(setup, batch)
        if extra is not None:
            loss = loss + extra
        if setup.prior is not None and not schedule.in_token_phase(setup, setup.step):  # weights frozen: no prior
            loss = loss + setup.config.prior_loss_weight * prior_images.prior_loss(setup, generator)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss.item()} (not finite): lower --lr, or use --precision fp32")
        scaler.scale(loss / accum).backward()
        total += loss.item() / accum
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
        mse, _ = denoising_loss(setup, latent, noise, t)
        total += mse.item()
    return total / samples
