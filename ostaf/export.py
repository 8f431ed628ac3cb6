"""Export a checkpoint for tools without ostaf: its U-Net change at λ as LoRA, its token as an embedding.

    ΔW_λ = W'(λ) − W        per targeted projection (offsets: λ·(W ⊙ ΔW), or λ·ΔW additive; LoRA: λ·B·A)
    ΔW_λ ≈ B_r A_r          truncated SVD, B_r = U_r·S_r, A_r = V_rᵀ; relative error ‖ΔW − B_r A_r‖_F / ‖ΔW‖_F

The offsets are not low rank (W ⊙ ΔW has the rank of W), so the rank is a choice: `--rank R`, full
rank (exact up to float rounding), or the smallest rank whose error is at most `--max-error` in every
layer (one rank for all layers: loaders scale each layer by alpha / rank, and one rank keeps that 1).
The LoRA file loads with diffusers' `load_lora_weights` (peft key names, or kohya's `lora_unet_…` with
`alpha`), the embedding with `load_textual_inversion`; on SDXL the embedding is SDXL's two-encoder format
(``clip_l`` and ``clip_g`` rows, one `load_textual_inversion` per encoder). A checkpoint that also
changed the blocks' own weights (`--trainable paper/blocks/unet`) cannot be carried by a LoRA of the
attention projections and is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ostaf.checkpoint import Checkpoint, apply, load_base_pipeline, load_checkpoint
from ostaf.conditioning import PromptEncoder
from ostaf.config import ExportConfig
from ostaf.errors import OstafError
from ostaf.io import atomic_write, check_output_dir, write_json
from ostaf.lora import LoraAdapter
from ostaf.models import architecture


@dataclass
class ExportReport:
    lora: str
    embedding: str
    token: str
    lam: float
    rank: int
    format: str
    error: float  # overall relative Frobenius error of the exported ΔW
    layers: dict[str, float] = field(default_factory=dict)  # module → relative error at `rank`
    error_vs_rank: dict[int, float] = field(default_factory=dict)  # overall error at a few ranks
    architecture: str = "sd1"  # sdxl: the embedding holds clip_l and clip_g


def export(config: ExportConfig) -> ExportReport:
    """Write the LoRA file, the embedding and a JSON report (a token-only checkpoint: the embedding and the
    report); nothing is written if a check fails."""
    out = Path(config.out)
    check_output_dir(out.parent)
    ckpt = load_checkpoint(config.ckpt)
    refuse_base_weights(ckpt, config.ckpt)
    pipe = load_base_pipeline(ckpt)
    adapter = apply(pipe, ckpt, config.lam)
    factors = {name: svd(delta) for name, delta in weight_deltas(pipe, adapter, config.lam).items()}
    if not factors and (config.rank or config.max_error):
        raise OstafError(
            f"{config.ckpt} changed no U-Net weight (a token-only checkpoint): there is no LoRA to give "
            "--rank or --max-error; drop them to export its embedding"
        )
    full = max((len(f[1]) for f in factors.values()), default=0)  # 0: a token-only checkpoint, no LoRA
    rank = pick_rank(factors, config.rank or full, config.max_error) if factors else 0
    embedding = out.with_name(out.name.removesuffix(".safetensors") + ".embedding.safetensors")
    report = ExportReport(
        str(out) if factors else "",
        str(embedding),
        ckpt.token,
        config.lam,
        rank,
        config.format,
        overall_error(factors, rank),
        {name: relative_error(f, rank) for name, f in factors.items()},
        {r: overall_error(factors, r) for r in sorted({1, 2, 4, 8, 16, 32, 64, rank, full}) if 0 < r <= full},
    )
    vectors = embedding_state(pipe, ckpt)
    report.architecture = architecture(pipe)
    if factors:
        lora = lora_state(factors, rank, config.format)
        meta = {"ostaf.token": ckpt.token, "ostaf.lam": str(config.lam), "ostaf.rank": str(rank)}
        atomic_write(out, lambda tmp: save_file(lora, str(tmp), metadata=meta))
    atomic_write(embedding, lambda tmp: save_file(vectors, str(tmp)))
    write_json(out.with_name(out.name.removesuffix(".safetensors") + ".report.json"), asdict(report))
    return report


SDXL_EMBEDDING_KEYS = ("clip_l", "clip_g")  # SDXL's textual-inversion files: the first and second encoder's rows


def embedding_state(pipe, ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The token's embedding file: ``{token: (N, D)}`` (SD-1.x, what `load_textual_inversion` reads; N vectors
    become its tokens `token`, `token_1`, …), or SDXL's ``{"clip_l": (N, D1), "clip_g": (N, D2)}``."""
    prompts = PromptEncoder(pipe)
    rows = [r.float().reshape(-1, r.shape[-1]).contiguous() for r in prompts.split(ckpt.tensors["token.embedding"])]
    if not prompts.xl:
        return {ckpt.token: rows[0]}
    return dict(zip(SDXL_EMBEDDING_KEYS, rows, strict=True))


def refuse_base_weights(ckpt: Checkpoint, where: str) -> None:
    trained = [k for k in ckpt.section("unet.") if ".lora_" not in k]
    if trained:
        raise OstafError(
            f"{where} also trained {len(trained)} of the U-Net's own weights (--trainable paper, blocks or "
            f"unet, e.g. unet.{trained[0]}): a LoRA of the attention projections cannot carry them; export a "
            "lite, lora or zero-init checkpoint"
        )


@torch.no_grad()
def weight_deltas(pipe, adapter, lam: float) -> dict[str, torch.Tensor]:
    """Module name (e.g. ``up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``) → ΔW_λ, fp32."""
    unet = pipe.unet
    deltas: dict[str, torch.Tensor] = {}
    if isinstance(adapter, LoraAdapter):
        for target in adapter.spec.targets():
            module = unet.get_submodule(target)
            name = adapter.name
            scaling = module.lora_alpha[name] / module.r[name]
            delta = lam * scaling * (module.lora_B[name].weight.float() @ module.lora_A[name].weight.float())
            deltas[target] = delta
        return deltas
    for layer, proc in getattr(adapter, "processors", {}).items():  # a token checkpoint has none
        attn = unet.get_submodule(layer)
        for proj in proc.offsets:
            weight = getattr(attn, proj).weight.float()
            delta = proc.modulated_weight(weight, proc.offsets[proj]().float(), lam) - weight
            if delta.abs().max() > 0:
                deltas[f"{layer}.{proj}"] = delta
    return deltas


def svd(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vᵀ) of ΔW in float64, so that full rank reproduces ΔW to float32 rounding."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return u, s, vh


def relative_error(factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor], rank: int) -> float:
    s = factors[1]
    total = float(s.pow(2).sum())
    return (float(s[rank:].pow(2).sum()) / total) ** 0.5 if total else 0.0


def overall_error(factors: dict[str, tuple], rank: int) -> float:
    lost = sum(float(f[1][rank:].pow(2).sum()) for f in factors.values())
    total = sum(float(f[1].pow(2).sum()) for f in factors.values())
    return (lost / total) ** 0.5 if total else 0.0


def pick_rank(factors: dict[str, tuple], rank: int, max_error: float) -> int:
    """`rank`, or the smallest rank whose error is ≤ `max_error` in every layer."""
    if not max_error:
        return rank
    full = max(len(f[1]) for f in factors.values())
    for r in range(1, full + 1):
        if all(relative_error(f, r) <= max_error for f in factors.values()):
            return r
    return full


def lora_state(factors: dict[str, tuple], rank: int, fmt: str) -> dict[str, torch.Tensor]:
    """The LoRA tensors in `fmt`'s key layout: B (out, r) = U_r·S_r, A (r, in) = V_rᵀ, alpha = r (scale 1)."""
    state: dict[str, torch.Tensor] = {}
    for name, (u, s, vh) in factors.items():
        r = min(rank, len(s))
        up = (u[:, :r] * s[:r]).float().contiguous()
        down = vh[:r].float().contiguous()
        if r < rank:  # a layer of lower full rank: pad with zeros so every layer has the same rank
            up = torch.cat([up, up.new_zeros(up.shape[0], rank - r)], 1)
            down = torch.cat([down, down.new_zeros(rank - r, down.shape[1])], 0)
        if fmt == "kohya":
            key = "lora_unet_" + name.replace(".", "_")
            state |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(rank)}
        else:
            state |= {f"unet.{name}.lora_A.weight": down, f"unet.{name}.lora_B.weight": up}
    return state
