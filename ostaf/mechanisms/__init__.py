"""The seed papers' disentangling mechanisms, each an option of the one config and off by default.

One module per mechanism (config fields live in `ostaf.config`, grouped and named after the module). A
training mechanism is a class implementing `base.Mechanism` (built from its config fields or absent, hooks
around each step) listed in `registry.REGISTRY`; the training loop calls the hooks and names none of them.

    masked_loss   --masked-loss, --mask-region  the denoising loss counts only in the reference mask (or its edge band)
    schedule      --train-lam, --token-steps    λ drawn per sample while training; token-first phases
    timesteps     --timestep-range, --snr-gamma where in the noise schedule the loss looks (band, min-SNR-γ)
    contrastive   --nn-contrastive              InfoNCE keeping e* among its nearest vocabulary words
    binding       --attn-binding                DisenDiff: the placeholder's cross-attention map onto the mask
    word_search   --token-search                e* starts at the vocabulary word that best denoises the reference
    dual_path     --dual-path                   Domain-Agnostic Tuning-Encoder: personalised + vanilla attention
    prior         --prior-images                DreamBooth prior preservation: the base model's class images
    reference_attention  --reference-attention  DreamTuner self-subject-attention at generation (ω, or ω·λ)

Off is bit-identical to training without the mechanism: an off mechanism builds nothing and draws
no random numbers.
"""
