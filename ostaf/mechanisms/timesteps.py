"""Where in the noise schedule the loss looks: a timestep band (`--timestep-range`) and min-SNR-γ
weighting (`--snr-gamma`).

With ε-prediction the per-sample loss is largest at small t (nearly clean latents, where the noise is
a small, hard-to-see part of the input) and there it barely depends on the prompt: in the Attribute
World the right shape word lowers the loss at t < 250 by 1–10 % but at 250 ≤ t < 1000 by 10–90 %
(`benchmarks/results/world-v2/timesteps/`). Uniformly drawn t therefore spend most of the gradient
on texture detail that the class prompt already names. Both options move it to where the attribute
is decided (ProSpect's observation that layout and shape form in the early, noisy steps):

    timestep_range [a, b]   t ~ U{⌊a·T⌋, …, ⌈b·T⌉ − 1} instead of U{0, …, T − 1}
    snr_gamma γ             each sample weighted min(SNR(t), γ) / SNR(t) (ε) or / (SNR(t) + 1) (v),
                            as diffusers' training scripts do (Hang et al., 2023)

Both off ([0, 1], 0) draw exactly what training always drew and weigh every sample 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers.training_utils import compute_snr

if TYPE_CHECKING:
    from diffusers import DDPMScheduler

    from ostaf.training_setup import TrainingSetup


def timestep_bounds(timestep_range: list[float], num_train_timesteps: int) -> tuple[int, int]:
    """[low, high) integer timesteps of a fractional band; never empty."""
    low = int(timestep_range[0] * num_train_timesteps)
    high = max(low + 1, min(num_train_timesteps, round(timestep_range[1] * num_train_timesteps)))
    return low, high


def sample_timesteps(setup: TrainingSetup, batch: int, generator: torch.Generator) -> torch.Tensor:
    low, high = timestep_bounds(setup.config.timestep_range, setup.noise_scheduler.config.num_train_timesteps)
    return torch.randint(low, high, (batch,), generator=generator)


def snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor | None:
    """Per-sample min-SNR-γ weights (B,), or None when γ = 0 (every sample weighs 1)."""
    if not gamma:
        return None
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr)
