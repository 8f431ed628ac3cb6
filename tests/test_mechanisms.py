"""The seeds' training mechanisms (ostaf/mechanisms): off changes nothing, on changes the result, each loss
reaches only what it should, resume stays bit-exact with all of them on."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ostaf.checkpoint import load_checkpoint
from ostaf.errors import OstafError
from ostaf.mechanisms import binding
from ostaf.mechanisms.contrastive import NearestWordContrast
from ostaf.mechanisms.masked_loss import MaskedLoss, masked_mse
from ostaf.models import load_pipeline
from ostaf.train import denoising_loss, mechanism_loss, optimizer_step, prepare, sample_batch, train
from tests.conftest import on_both_models, synthetic_image, tiny_config

ALL_ON = dict(
    attn_binding=0.5,
    nn_contrastive=0.1,
    nn_vocab=256,
    train_lam="uniform",
    token_steps=1,
    masked_loss=True,
    timestep_range=[0.25, 1.0],
    snr_gamma=2.0,
)
ON = {  # one mechanism at a time
    "binding": dict(attn_binding=1.0),
    "contrastive": dict(nn_contrastive=1.0, nn_vocab=256),
    "uniform-lambda": dict(train_lam="uniform"),
    "token-steps": dict(token_steps=2),
    "masked-loss": dict(masked_loss=True),
    "dual-path": dict(dual_path=0.5),
    "timestep-band": dict(timestep_range=[0.5, 1.0]),
    "snr-gamma": dict(snr_gamma=1.0),
}


@pytest.fixture
def masked_reference(tmp_path):
    """A preprocessed reference folder whose mask is the synthetic object's square (not all of the image)."""
    from PIL import Image

    from ostaf.preprocess import preprocess

    synthetic_image().save(tmp_path / "source.png")
    folder = preprocess(tmp_path / "source.png", "appearance", 64, 4, 42, None).save(tmp_path / "pre")
    side = Image.open(folder / "reference.png").width
    mask = np.zeros((side, side), np.uint8)
    mask[side // 5 : side * 3 // 4, side // 5 : side * 3 // 4] = 255  # the synthetic object's square
    Image.fromarray(mask).save(folder / "mask.png")
    return folder


def tensors(out):
    return load_checkpoint(out).tensors


def test_off_builds_nothing_and_draws_nothing(reference, tmp_path, monkeypatch):
    """With every mechanism off, no mechanism code runs and a micro-batch draws exactly the four tensors of today."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a mechanism ran although it is off")

    for target in (
        "ostaf.mechanisms.masked_loss.latent_masks",
        "ostaf.mechanisms.binding.latent_masks",
        "ostaf.mechanisms.contrastive.NearestWordContrast",
        "ostaf.mechanisms.binding.install_probes",
        "ostaf.mechanisms.prior.prepare_prior",
        "ostaf.mechanisms.word_search.search_word",
    ):
        monkeypatch.setattr(target, forbidden)
    setup = prepare(tiny_config(reference, tmp_path / "off"))
    assert setup.mechanisms == []
    generator = torch.Generator().manual_seed(7)
    batch = sample_batch(setup, generator)
    assert batch.lam is None
    expected = torch.Generator().manual_seed(7)
    torch.randint(0, setup.latent_mean.shape[0], (1,), generator=expected)
    torch.randn(batch.latents.shape, generator=expected)
    torch.randn(batch.latents.shape, generator=expected)
    torch.randint(0, 1000, (1,), generator=expected)
    assert torch.equal(generator.get_state(), expected.get_state())
    assert mechanism_loss(setup, batch) is None


@on_both_models
@pytest.mark.parametrize("name", list(ON))
def test_each_mechanism_changes_training(masked_reference, tmp_path, name, model):
    off = train(tiny_config(masked_reference, tmp_path / "off", steps=3, model=model), progress=False)
    on = train(tiny_config(masked_reference, tmp_path / "on", steps=3, model=model, **ON[name]), progress=False)
    a, b = tensors(off.out), tensors(on.out)
    assert any(not torch.equal(a[k], b[k]) for k in a), f"{name} changed nothing"
    assert len(on.nearest_words) == (5 if name == "contrastive" else 0)  # printed and logged after training


def test_binding_and_contrastive_losses_reach_only_the_token_and_offsets(reference, tmp_path):
    setup = prepare(tiny_config(reference, tmp_path / "g", attn_binding=1.0, nn_contrastive=1.0, nn_vocab=64))
    batch = sample_batch(setup, torch.Generator().manual_seed(0))
    denoising_loss(setup, *batch)  # the forward whose attention the probes recorded
    mechanism_loss(setup, batch).backward()
    trainable = {id(p) for p in setup.trainable}
    everything = [*setup.unet.parameters(), *setup.pipe.text_encoder.parameters(), *setup.pipe.vae.parameters()]
    assert all(p.grad is None for p in everything if id(p) not in trainable)  # frozen weights: untouched
    token_grads = [p.grad for p in setup.token.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in token_grads)


@on_both_models
def test_resume_after_a_kill_is_bit_exact_with_every_mechanism_on(masked_reference, tmp_path, model):
    options = dict(ALL_ON, steps=4, checkpoint_every=2, model=model)
    straight = train(tiny_config(masked_reference, tmp_path / "a", **options), progress=False)
    train(tiny_config(masked_reference, tmp_path / "b", **(options | {"steps": 2})), progress=False)  # "killed" at 2
    resumed = train(tiny_config(masked_reference, tmp_path / "b", **options), progress=False)
    assert len(resumed.losses) == 2
    a, b = tensors(straight.out), tensors(resumed.out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_binding_loss_is_zero_when_the_map_is_the_mask():
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, 1:3, 1:3] = 1
    record = binding.AttentionRecord(positions=[5, 2], resolution=4)
    token_map = mask.flatten(2).transpose(1, 2)  # (B, N, 1): the placeholder attends exactly to the mask
    record.maps["layer"] = torch.cat([token_map * 0.3 + 0.1, torch.rand(2, 16, 1)], dim=-1)  # scaled: normalised
    assert float(binding.binding_loss(record, mask)) == pytest.approx(0.0, abs=1e-6)
    record.maps["layer"] = torch.cat([1 - token_map, torch.rand(2, 16, 1)], dim=-1)  # the background instead
    assert float(binding.binding_loss(record, mask)) > 0.9


def test_without_a_mask_binding_pulls_the_token_onto_the_class_word():
    record = binding.AttentionRecord(positions=[5, 2], resolution=4)
    class_map = (torch.rand(1, 16, 1) > 0.5).float()  # a crisp class map: sharpening leaves it as it is
    record.maps["layer"] = torch.cat([class_map * 0.2, class_map], dim=-1)  # the token attends where the class does
    assert float(binding.binding_loss(record, None)) == pytest.approx(0.0, abs=1e-6)
    soft = torch.rand(1, 16, 1)
    record.maps["layer"] = torch.cat([soft**2, soft], dim=-1)  # the token on the sharpened class map
    on_class = float(binding.binding_loss(record, None))
    record.maps["layer"] = torch.cat([1 - soft, soft], dim=-1)  # the token everywhere else
    assert on_class < float(binding.binding_loss(record, None)) - 0.2


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    low, high = maps.min(1, keepdim=True).values, maps.max(1, keepdim=True).values
    return (maps - low) / (high - low)


def _soft_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a * b).sum(1)
    return (inter + 1) / (a.sum(1) + b.sum(1) - inter + 1)


def test_the_binding_term_is_its_weight_times_one_minus_the_soft_iou_with_its_target():
    """By hand at weight 0.3, two layers' maps averaged: with masks, each sample's target is the mask of its own
    augmentation pooled to the map's side by area (not the class word's map, not another augmentation's mask);
    without, the class word's map, min–max normalised and squared."""
    torch.manual_seed(0)
    masks = (torch.rand(3, 1, 8, 8) > 0.5).float()  # three augmentations' masks; area ≠ nearest pooling
    record = binding.AttentionRecord(positions=[5, 2], resolution=4)
    record.maps["down"], record.maps["up"] = torch.rand(2, 16, 2), torch.rand(2, 16, 2)  # (B, N, [token, class])
    bound = binding.AttentionBinding(SimpleNamespace(attn_binding=0.3), reference=None)
    bound.record, bound.masks = record, masks
    pick = torch.tensor([2, 0])
    maps = (record.maps["down"] + record.maps["up"]) / 2  # the layers' mean
    token = _minmax(maps[..., 0])
    target = masks[pick].view(2, 4, 2, 4, 2).mean((2, 4)).reshape(2, 16)  # 8×8 → 4×4 by area
    term = bound.loss(None, SimpleNamespace(pick=pick), None)
    torch.testing.assert_close(term, 0.3 * (1 - _soft_iou(token, target)).mean())
    bound.masks = None  # no mask: bound to the class word's sharpened map
    term = bound.loss(None, SimpleNamespace(pick=pick), None)
    torch.testing.assert_close(term, 0.3 * (1 - _soft_iou(token, _minmax(maps[..., 1]) ** 2)).mean())


class ScaledProjections:
    """A processor with `project`, as the offsets processor has (q ×1.5, k ×0.5 at its scale); records its calls."""

    scale = 0.7

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def project(self, attn, name: str, x: torch.Tensor, scale: float) -> torch.Tensor:
        assert scale == 0.7
        return getattr(attn, name)(x) * {"to_q": 1.5, "to_k": 0.5}[name]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        self.calls.append((encoder_hidden_states, args, kwargs))
        return hidden_states


def test_the_probe_reads_the_projections_the_layer_computes_and_hands_every_argument_on():
    """The recorded map is softmax(q kᵀ/√d) with q, k as the wrapped processor projects them (the offsets' W′,
    not the base W), the watched columns averaged over heads; the call goes on unchanged; a probe around a
    processor that detaches the context detaches it too."""
    from diffusers.models.attention_processor import Attention

    from ostaf.offsets.processor import DetachedContextProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4).requires_grad_(False)
    record = binding.AttentionRecord(positions=[3, 1], resolution=2, active=True)
    inner = ScaledProjections()
    hidden, context = torch.randn(1, 4, 8), torch.randn(1, 5, 6, requires_grad=True)
    mask, extra = torch.zeros(1, 1, 5), object()
    assert binding.AttentionProbe(inner, record, "layer")(attn, hidden, context, extra, attention_mask=mask) is hidden
    [(got_context, got_args, got_kwargs)] = inner.calls
    assert got_context is context and got_args == (extra,) and got_kwargs == {"attention_mask": mask}
    q = (attn.to_q(hidden) * 1.5).view(1, 4, 2, 4).transpose(1, 2)
    k = (attn.to_k(context) * 0.5).view(1, 5, 2, 4).transpose(1, 2)
    probs = (q @ k.transpose(-1, -2) / 2).softmax(-1)  # 1/√d, d = 4
    torch.testing.assert_close(record.maps["layer"], probs[..., [3, 1]].mean(1))
    assert record.maps["layer"].requires_grad  # the binding term reaches the token through the context
    binding.AttentionProbe(DetachedContextProcessor(ScaledProjections()), record, "layer")(attn, hidden, context)
    assert not record.maps["layer"].requires_grad


def test_probes_record_the_softmax_column_of_the_watched_tokens(masked_reference, tmp_path):
    setup = prepare(tiny_config(masked_reference, tmp_path / "p", attn_binding=1.0))
    bound = setup.mechanism(binding.AttentionBinding)
    assert bound.masks is not None  # a real mask: the target is the mask, not the class word
    from ostaf.mechanisms.masked_loss import latent_masks

    assert torch.equal(bound.masks, latent_masks(bound.reference, setup.latent_size, 0))  # each augmentation's, as is
    assert not torch.equal(bound.masks, latent_masks(bound.reference, setup.latent_size, 1))  # (not grown)
    batch = sample_batch(setup, torch.Generator().manual_seed(0))
    denoising_loss(setup, *batch)
    record = bound.record
    assert record.resolution == 16 and record.maps  # tiny at 64 px: cross-attention at 32² and 16²; middle 16
    assert len(record.maps) == 3  # 16×16 cross-attention: one in down_blocks.1, two in up_blocks.0
    assert record.positions == [7, 2]  # "<bos> a dog in the appearance of *a": the placeholder, the class word
    for maps in record.maps.values():
        assert maps.shape == (1, 256, 2) and bool(((maps >= 0) & (maps <= 1)).all())
    assert not record.active  # recording only inside the training forward


def test_the_nearest_word_is_by_cosine_over_rows_of_any_length():
    """Each placeholder vector's nearest vocabulary row by cosine similarity (an independent computation), on a
    vocabulary whose rows have very different lengths: the longest row does not win by its length."""
    from ostaf.mechanisms.dual_path import nearest_words

    generator = torch.Generator().manual_seed(0)
    vocabulary = torch.randn(50, 8, generator=generator) * torch.logspace(-1, 1, 50)[:, None]  # lengths 0.1 … 10
    rows = torch.randn(6, 8, generator=generator)
    by_cosine = F.cosine_similarity(rows[:, None], vocabulary[None], dim=-1).argmax(-1).tolist()
    assert by_cosine != (rows @ vocabulary.T).argmax(-1).tolist()  # the lengths would decide a dot product
    assert nearest_words(rows, vocabulary) == by_cosine
    assert nearest_words(rows[0], vocabulary) == by_cosine[:1]  # one vector (D,)
    unit = F.normalize(vocabulary, dim=-1)
    assert nearest_words(rows, unit, normalised=True) == by_cosine


def test_contrastive_loss_falls_and_names_the_nearest_words():
    torch.manual_seed(0)
    vocabulary = torch.randn(300, 16)
    contrast = NearestWordContrast(vocabulary, k=3, temperature=0.1, sample=64, seed=0)
    embedding = torch.randn(16, requires_grad=True)
    optimizer = torch.optim.SGD([embedding], lr=0.5)
    losses = []
    for step in range(20):
        loss = contrast.loss(embedding, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.5
    nearest = contrast.nearest(embedding.detach(), 3)
    cos = torch.nn.functional.cosine_similarity(vocabulary, embedding.detach()[None], dim=-1)
    assert [i for i, _ in nearest] == cos.topk(3).indices.tolist()
    assert [c for _, c in nearest] == [round(float(c), 4) for c in cos.topk(3).values]  # what the log shows
    assert len(contrast.nearest(embedding.detach())) == 5  # five by default


@pytest.mark.parametrize("sample", [0, 297, 500])
def test_without_a_smaller_sample_the_negatives_are_the_whole_vocabulary(sample):
    """`--nn-vocab 0`, or a sample as large as the words beyond the k positives: InfoNCE over every word."""
    torch.manual_seed(1)
    vocabulary, embedding = torch.randn(300, 16), torch.randn(16)
    contrast = NearestWordContrast(vocabulary, k=3, temperature=0.1, sample=sample, seed=0)
    cos = torch.nn.functional.cosine_similarity(vocabulary, embedding[None], dim=-1) / 0.1
    expected = torch.logsumexp(cos, 0) - torch.logsumexp(cos.topk(3).values, 0)
    torch.testing.assert_close(contrast.loss(embedding, step=4), expected)


def test_token_steps_train_the_token_first_then_only_the_offsets(reference, tmp_path):
    out = tmp_path / "phases"
    initial = prepare(tiny_config(reference, tmp_path / "init"))
    start = {f"offsets.{k}": v.clone() for k, v in initial.adapter.state_dict().items()}
    train(tiny_config(reference, out, steps=4, token_steps=2, checkpoint_every=2), progress=False)
    middle, final = tensors(out / "checkpoints" / "step-000002"), tensors(out)
    assert all(torch.equal(middle[k], start[k]) for k in start)  # steps 1-2: the offsets did not move
    assert not torch.equal(middle["token.embedding"], initial.token().detach())  # the token did
    assert torch.equal(middle["token.embedding"], final["token.embedding"])  # steps 3-4: the token is frozen
    assert any(not torch.equal(middle[k], final[k]) for k in start)  # and the offsets train


def test_token_steps_with_fine_tuned_blocks_train_the_token_then_only_the_blocks(reference, tmp_path):
    """Pivotal tuning as the world's `style-views+pivotal` runs it (`--trainable blocks --token-steps`): no adapter,
    so the token phase is the base model because the blocks are frozen in it; after it the token is frozen and the
    blocks move."""
    out = tmp_path / "pivotal"
    config = tiny_config(reference, out, steps=4, token_steps=2, checkpoint_every=2, trainable="blocks", token_lr=5e-2)
    base = {f"unet.{n}": p.detach() for n, p in load_pipeline(config.model, seed=config.seed).unet.named_parameters()}
    train(config, progress=False)
    middle, final = tensors(out / "checkpoints" / "step-000002"), tensors(out)
    blocks = [k for k in final if k.startswith("unet.")]
    assert blocks and all(torch.equal(middle[k].float(), base[k].float()) for k in blocks)  # steps 1-2: no block
    assert torch.equal(middle["token.embedding"], final["token.embedding"])  # steps 3-4: the token is frozen
    assert any(not torch.equal(middle[k], final[k]) for k in blocks)  # and the blocks train


def test_the_token_phase_runs_the_base_model_and_the_later_steps_the_offsets_at_their_lambda(reference, tmp_path):
    """In the token phase every U-Net forward sees the offsets at λ = 0 (the base model), whatever the batch drew;
    after it, at the adapter's own λ; λ is put back after each forward."""
    from ostaf.mechanisms.schedule import TokenPhases

    setup = prepare(tiny_config(reference, tmp_path / "p", token_steps=2))
    phases, batch = setup.mechanism(TokenPhases), sample_batch(setup, torch.Generator().manual_seed(0))
    seen = {}
    for step in (0, 1, 2):
        setup.step = step
        with phases.forward(setup, batch):
            seen[step] = {float(proc.scale) for proc in setup.adapter.processors.values()}
    assert seen == {0: {0.0}, 1: {0.0}, 2: {1.0}}
    assert all(proc.scale == 1.0 for proc in setup.adapter.processors.values())


def test_uniform_lambda_is_per_sample_and_reaches_the_offsets(reference, tmp_path):
    setup = prepare(tiny_config(reference, tmp_path / "u", train_lam="uniform", batch_size=3))
    batch = sample_batch(setup, torch.Generator().manual_seed(1))
    assert batch.lam.shape == (3,) and bool(((batch.lam >= 0) & (batch.lam <= 1)).all())
    mse = denoising_loss(setup, *batch).mse
    mse.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in setup.adapter.parameters())
    assert all(proc.scale == 1.0 for proc in setup.adapter.processors.values())  # restored after the forward
    from ostaf.mechanisms.schedule import sample_lambda

    draws = []
    for global_seed in (1, 2):  # λ comes from the run's generator (a resumed run draws the same), not torch's
        torch.manual_seed(global_seed)
        draws.append(sample_lambda(setup, 3, torch.Generator().manual_seed(7)))
    assert torch.equal(draws[0], draws[1])


def test_the_timestep_band_is_where_training_draws_t(reference, tmp_path):
    setup = prepare(tiny_config(reference, tmp_path / "t", timestep_range=[0.6, 0.8], batch_size=50))
    generator = torch.Generator().manual_seed(0)
    drawn = torch.cat([sample_batch(setup, generator).timesteps for _ in range(4)])
    assert int(drawn.min()) >= 600 and int(drawn.max()) < 800
    assert int(drawn.min()) < 620 and int(drawn.max()) >= 780  # the whole band, not a corner of it
    from ostaf.mechanisms.timesteps import timestep_bounds

    assert timestep_bounds([0.25, 1.0], 1000) == (250, 1000)
    assert timestep_bounds([0.5, 0.5], 1000) == (500, 501)  # narrower than a step: that one step, never empty
    assert timestep_bounds([0.2, 0.2004], 1000) == (200, 201)


def test_snr_gamma_under_v_prediction_divides_by_snr_plus_one():
    """min(SNR, γ)/(SNR + 1) for a v-prediction scheduler (the velocity target's weight, diffusers' scripts), by
    hand from ᾱ; ε-prediction keeps min(SNR, γ)/SNR; γ = 0: no weights."""
    from diffusers import DDPMScheduler

    from ostaf.mechanisms.timesteps import snr_weights

    t = torch.tensor([20, 500, 900])
    for prediction, plus in (("v_prediction", 1.0), ("epsilon", 0.0)):
        scheduler = DDPMScheduler(prediction_type=prediction)
        alpha = scheduler.alphas_cumprod[t].double()
        snr = alpha / (1 - alpha)
        expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr + plus)
        torch.testing.assert_close(snr_weights(scheduler, t, 5.0).double(), expected, rtol=1e-5, atol=0)
    assert snr_weights(scheduler, t, 0.0) is None


def test_snr_gamma_weighs_each_sample_by_min_snr_over_snr(reference, tmp_path):
    """min(SNR, γ)/SNR per sample (ε-prediction), SNR = ᾱ/(1 − ᾱ): nearly clean samples count less, noisy ones 1."""
    import dataclasses

    setup = prepare(tiny_config(reference, tmp_path / "s", snr_gamma=2.0, batch_size=2))
    batch = sample_batch(setup, torch.Generator().manual_seed(3))
    t = torch.tensor([20, 900])
    with torch.no_grad():
        weighted = denoising_loss(setup, batch.latents, batch.noise, t).mse
        setup.config = dataclasses.replace(setup.config, snr_gamma=0.0)
        plain = [
            denoising_loss(setup, batch.latents[i : i + 1], batch.noise[i : i + 1], t[i : i + 1])[0] for i in (0, 1)
        ]
    alpha = setup.noise_scheduler.alphas_cumprod[t].double()
    snr = alpha / (1 - alpha)
    weights = torch.minimum(snr, torch.tensor(2.0, dtype=torch.float64)) / snr
    assert float(weights[0]) < 0.1 and float(weights[1]) == 1.0
    expected = (weights[0] * plain[0] + weights[1] * plain[1]) / 2
    assert float(weighted) == pytest.approx(float(expected), rel=1e-5)


def test_a_timestep_band_must_be_two_ordered_fractions(reference, tmp_path):
    for band in ([0.8, 0.2], [0.5], [-0.1, 1.0], [0.0, 1.5]):
        with pytest.raises(OstafError, match="timestep_range"):
            tiny_config(reference, tmp_path / "x", timestep_range=band)
    with pytest.raises(OstafError, match="snr_gamma"):
        tiny_config(reference, tmp_path / "x", snr_gamma=-1.0)


def test_masked_loss_weighs_each_sample():
    mask = torch.ones(2, 1, 4, 4)
    pred, target = torch.ones(2, 4, 4, 4), torch.zeros(2, 4, 4, 4)
    assert float(masked_mse(pred, target, mask, torch.tensor([1.0, 1.0]))) == pytest.approx(1.0)
    pred[1] = 9.0  # the second sample weighs 0: its error does not count
    assert float(masked_mse(pred, target, mask, torch.tensor([2.0, 0.0]))) == pytest.approx(1.0)


def test_masked_loss_ignores_the_background():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    target = torch.full((1, 4, 4, 4), 3.0)  # not zero: the error is pred − target, not pred alone
    pred = target.clone()
    pred[..., 2:, :] += 5.0  # wrong only outside the mask
    assert float(masked_mse(pred, target, mask)) == 0.0
    pred[..., 0, 0] += 2.0  # one foreground cell off by 2 in each of 4 channels, of 4 × 8 foreground values
    assert float(masked_mse(pred, target, mask)) == pytest.approx(4 * 2**2 / (4 * 8))
    assert float(masked_mse(pred, target, torch.zeros_like(mask))) == 0.0  # no foreground: 0, not NaN
    one = torch.zeros(1, 1, 2, 2)
    one[..., 0, 0] = 1  # a single foreground value (one channel): the mean is its own squared error
    assert float(masked_mse(torch.full((1, 1, 2, 2), 3.0), torch.zeros(1, 1, 2, 2), one)) == pytest.approx(9.0)


def test_mask_dilation_grows_each_augmentations_mask_by_that_many_latent_cells(masked_reference, tmp_path):
    from ostaf.mechanisms.masked_loss import MaskedLoss, latent_masks

    setup = prepare(tiny_config(masked_reference, tmp_path / "d", masked_loss=True, mask_dilation=1))
    grown = setup.mechanism(MaskedLoss).masks
    plain = latent_masks(setup.mechanism(MaskedLoss).reference, setup.latent_size, 0)
    assert grown.shape == plain.shape and 0 < plain.sum() < grown.sum() < grown.numel()
    for k in range(plain.shape[0]):  # a cell is grown foreground iff some foreground cell is within 1 (8-neighbours)
        ys, xs = torch.nonzero(plain[k, 0], as_tuple=True)
        for y in range(grown.shape[-2]):
            for x in range(grown.shape[-1]):
                near = bool(((ys - y).abs().le(1) & (xs - x).abs().le(1)).any())
                assert bool(grown[k, 0, y, x]) == near


def test_the_nearest_word_term_is_its_weight_times_infonce_over_the_sampled_vocabulary(reference, tmp_path):
    from torch.nn import functional as F

    from ostaf.mechanisms.contrastive import NearestWordTerm

    setup = prepare(tiny_config(reference, tmp_path / "c", nn_contrastive=0.3, nn_vocab=64, nn_k=3))
    e_star = setup.token().detach()
    cos = F.normalize(setup.prompts.rows(setup.token_id), dim=-1) @ F.normalize(e_star, dim=-1)  # every word
    positives = cos.topk(3).indices  # the k nearest words
    draw = torch.Generator().manual_seed(setup.config.seed * 1_000_003 + setup.step)  # the step's seeded negatives
    others = torch.randperm(cos.shape[0], generator=draw)
    pool = torch.cat([positives, others[~torch.isin(others, positives)][:64]])
    logits = cos / setup.config.nn_temperature
    expected = 0.3 * (torch.logsumexp(logits[pool], 0) - torch.logsumexp(logits[positives], 0))
    torch.testing.assert_close(setup.mechanism(NearestWordTerm).loss(setup, None, None), expected)
    named = setup.mechanism(NearestWordTerm).words(setup, 3)  # as many as asked, nearest first
    assert [w.split(" (")[0] for w in named] == setup.prompts.tokenizer.convert_ids_to_tokens(positives.tolist())


def test_the_masked_loss_keeps_each_samples_loss_weight(masked_reference, tmp_path):
    from ostaf.mechanisms.masked_loss import MaskedLoss

    setup = prepare(tiny_config(masked_reference, tmp_path / "w", masked_loss=True, batch_size=2))
    batch = sample_batch(setup, torch.Generator().manual_seed(0))
    masked = setup.mechanism(MaskedLoss)
    pred = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(1))
    target, weights = torch.zeros_like(pred), torch.tensor([1.5, 0.25])  # --snr-gamma's per-sample weights
    loss = masked.reduce(pred, target, weights, batch)
    torch.testing.assert_close(loss, masked_mse(pred, target, masked.masks[batch.pick], weights))
    assert not torch.allclose(loss, masked_mse(pred, target, masked.masks[batch.pick]))


def test_the_loss_mask_follows_each_augmentation():
    from ostaf.preprocess import AugmentRecipe, augment_mask

    mask = np.zeros((96, 96), bool)
    mask[20:60, 5:30] = True
    plain = augment_mask(mask, AugmentRecipe(64, (96, 96), (10, 20), False), "appearance")
    flipped = augment_mask(mask, AugmentRecipe(64, (96, 96), (10, 20), True), "appearance")
    assert np.array_equal(flipped, plain[:, ::-1]) and plain.any()
    assert np.array_equal(plain, mask[20:84, 10:74])  # the crop box, no resize at this size
    padded = augment_mask(np.ones((96, 48), bool), AugmentRecipe(64, (64, 64), (0, 0), False), "shape")
    assert not padded[:, :8].any() and padded[:, 24:40].all()  # padding is background


# -- dual path --------------------------------------------------------------------------------------------------


def dual_inputs(batch: int = 2):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(batch, 4, 8, 8, generator=g),
        torch.tensor([500] * batch),
        torch.randn(batch, 77, 32, generator=g),
    )


def test_dual_path_blends_the_personalised_and_the_vanilla_attention(tiny_pipe):
    from ostaf.offsets import OffsetsAdapter, OffsetsConfig

    unet = tiny_pipe.unet
    sample, t, context = dual_inputs()
    vanilla_context = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    adapter = OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder",)), "*a")
    with torch.no_grad():
        personalised = unet(sample, t, context).sample
        adapter.set_dual_path(1.0, vanilla_context)  # β = 1: exactly the model without it
        assert torch.equal(unet(sample, t, context).sample, personalised)
        adapter.set_dual_path(0.0, context)  # β = 0, same context: only the vanilla path, i.e. no offsets
        only_vanilla = unet(sample, t, context).sample
        adapter.set_dual_path(1.0, None)
        adapter.set_scale(0.0)
        assert torch.equal(only_vanilla, unet(sample, t, context).sample)
        adapter.set_scale(1.0)
        adapter.set_dual_path(0.5, vanilla_context)
        blended = unet(sample, t, context).sample
    assert not torch.allclose(blended, personalised, atol=1e-5) and not torch.allclose(blended, only_vanilla, atol=1e-5)


def test_per_sample_lambda_equals_separate_runs_with_the_dual_path_on(tiny_pipe):
    from ostaf.offsets import OffsetsAdapter, OffsetsConfig

    unet = tiny_pipe.unet
    adapter = OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder", "encoder")), "*a")
    lams = [0.0, 0.5, 1.0]
    sample, t, context = dual_inputs(batch=3)
    vanilla_context = torch.randn(3, 77, 32, generator=torch.Generator().manual_seed(2))
    separate = []
    with torch.no_grad():
        for i, lam in enumerate(lams):
            adapter.set_scale(lam)
            adapter.set_dual_path(0.6, vanilla_context[i : i + 1])
            separate.append(unet(sample[i : i + 1], t[i : i + 1], context[i : i + 1]).sample)
        adapter.set_scale(torch.tensor(lams))
        adapter.set_dual_path(0.6, vanilla_context)
        batched = unet(sample, t, context).sample
    torch.testing.assert_close(batched, torch.cat(separate), rtol=1e-4, atol=1e-5)


def test_the_dual_path_hands_its_inputs_to_both_paths(tmp_path):
    """Both paths get the layer's attention mask, temb and extra arguments as diffusers passed them; the vanilla
    path's context is the vanilla prompt's, broadcast over the batch and in the layer's dtype; its offsets at 0."""
    from contextlib import contextmanager

    from ostaf.mechanisms.dual_path import DualPathProcessor

    class Offsets:  # the bottom of the stack: records each call, and its λ
        merged_scale = None
        lam = 1.0

        def __init__(self):
            self.calls = []

        @contextmanager
        def at_zero(self):
            self.lam = 0.0
            try:
                yield
            finally:
                self.lam = 1.0

        def __call__(self, attn, hidden, context, mask, temb, **kwargs):
            self.calls.append((context, mask, temb, kwargs, self.lam))
            return hidden * (2.0 if self.lam else 1.0)

    offsets, vanilla = Offsets(), torch.randn(1, 5, 3)
    hidden, context = torch.ones(3, 4, 2, dtype=torch.float64), torch.randn(3, 5, 3, dtype=torch.float64)
    mask, temb = torch.zeros(3, 1, 5), torch.randn(3, 7)
    out = DualPathProcessor(offsets, 0.25, vanilla)(None, hidden, context, mask, temb, scale=0.5)
    (own, *own_rest), (seen, *seen_rest) = offsets.calls
    assert own is context and own_rest == [mask, temb, {"scale": 0.5}, 1.0]
    assert seen_rest == [mask, temb, {"scale": 0.5}, 0.0]  # the vanilla path: everything but the context, λ = 0
    assert seen.shape == (3, 5, 3) and seen.dtype == torch.float64
    assert torch.equal(seen, vanilla.double().expand(3, -1, -1))
    assert torch.allclose(out, 0.25 * 2 * hidden + 0.75 * hidden)  # β·personalised + (1 − β)·vanilla


def test_dual_path_refuses_merged_offsets(tiny_pipe):
    from ostaf.errors import OstafError
    from ostaf.offsets import OffsetsAdapter, OffsetsConfig

    adapter = OffsetsAdapter.install(tiny_pipe.unet, OffsetsConfig(parts=("decoder",)), "*a")
    sample, t, context = dual_inputs()
    adapter.set_dual_path(0.5, context)
    with adapter.merged_at(1.0), pytest.raises(OstafError, match="unmerged"), torch.no_grad():
        tiny_pipe.unet(sample, t, context)


def test_generation_with_the_dual_path_reads_the_nearest_words(masked_reference, tmp_path, caplog):
    from ostaf.config import GenerateConfig
    from ostaf.generate import generate

    ckpt = train(tiny_config(masked_reference, tmp_path / "ckpt", steps=2), progress=False).out
    common = dict(ckpt=[str(ckpt)], prompt=["a vase in the appearance of *a"], lam=[1.0], seeds=[0], num_steps=2)
    plain = generate(GenerateConfig(**common, out=str(tmp_path / "plain"), device="cpu"), progress=False)
    with caplog.at_level("INFO", logger="ostaf.generate"):
        dual = generate(
            GenerateConfig(**common, out=str(tmp_path / "dual"), device="cpu", dual_path=0.5), progress=False
        )
    assert "the vanilla path reads {'*a':" in caplog.text
    a, b = np.asarray(plain[0].images[(1.0, 0)]), np.asarray(dual[0].images[(1.0, 0)])
    assert not np.array_equal(a, b)


# -- self-subject-attention (DreamTuner) ------------------------------------------------------------------------


def reference_folder(tmp_path, name: str, outside: tuple[int, int, int]):
    """A preprocessed reference: the synthetic object inside a square mask, `outside` everywhere else."""
    from PIL import Image

    from ostaf.preprocess import preprocess

    image = np.asarray(synthetic_image(64)).copy()
    mask = np.zeros((64, 64), bool)
    mask[12:48, 12:48] = True
    image[~mask] = outside
    Image.fromarray(image).save(tmp_path / f"{name}.png")
    folder = preprocess(tmp_path / f"{name}.png", "appearance", 64, 1, 42, None).save(tmp_path / name)
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
    return folder


def reference_run(tmp_path, name, **options):
    from ostaf.config import GenerateConfig
    from ostaf.generate import generate

    config = GenerateConfig(
        prompt=["a vase"],
        lam=[1.0],
        seeds=[0],
        num_steps=2,
        out=str(tmp_path / f"gen-{name}"),
        device="cpu",
        model="tiny",
        **options,
    )
    return np.asarray(generate(config, progress=False)[0].images[(1.0, 0)])


def test_reference_attention_changes_the_image_and_ignores_the_background(tmp_path):
    red = reference_folder(tmp_path, "red", (250, 0, 0))
    blue = reference_folder(tmp_path, "blue", (0, 0, 250))
    first = reference_run(tmp_path, "a", reference_attention=1.0, reference_image=str(red))
    second = reference_run(tmp_path, "b", reference_attention=1.0, reference_image=str(blue))
    assert np.array_equal(first, second)  # only the reference's foreground reaches the image
    stronger = reference_run(tmp_path, "c", reference_attention=4.0, reference_image=str(red))
    assert not np.array_equal(first, stronger)  # ω weighs the reference


def test_reference_attention_with_a_checkpoint_serves_a_lambda_sweep_and_leaves_the_pipeline_clean(
    masked_reference, tmp_path, tiny_pipe
):
    from ostaf.config import GenerateConfig
    from ostaf.generate import generate

    ckpt = train(tiny_config(masked_reference, tmp_path / "ckpt", steps=2), progress=False).out
    before = {name: type(p) for name, p in tiny_pipe.unet.attn_processors.items()}
    common = dict(ckpt=[str(ckpt)], prompt=["a vase in the appearance of *a"], lam=[0.0, 1.0], seeds=[0], num_steps=2)
    plain = generate(GenerateConfig(**common, out=str(tmp_path / "plain"), device="cpu"), progress=False)
    config = GenerateConfig(**common, out=str(tmp_path / "ref"), device="cpu", reference_attention=2.0)
    with_reference = generate(config, pipe=tiny_pipe, progress=False)  # the checkpoint's own reference folder
    for key in [(0.0, 0), (1.0, 0)]:
        assert not np.array_equal(np.asarray(plain[0].images[key]), np.asarray(with_reference[0].images[key]))
    after = {name: type(p).__name__ for name, p in tiny_pipe.unet.attn_processors.items()}
    assert "SubjectAttentionProcessor" not in after.values() and not tiny_pipe.unet._forward_pre_hooks
    assert set(after) == set(before)


def test_reference_attention_off_installs_nothing(tiny_pipe):
    from ostaf.config import GenerateConfig
    from ostaf.generate import GenerationOptions

    config = GenerateConfig(ckpt=["c"], prompt=["a *a"])
    mechanisms = GenerationOptions.from_config(config, tiny_pipe, [], [], "")
    assert mechanisms.reference is None and not mechanisms.unmerged and not tiny_pipe.unet._forward_pre_hooks


def test_auto_reference_blocks_are_the_checkpoints_own_parts():
    from ostaf.mechanisms.reference_attention import resolve_blocks

    assert resolve_blocks("auto", ["*m"]) == "encoder"
    assert resolve_blocks("auto", ["*a"]) == resolve_blocks("auto", ["*s"]) == "decoder"
    assert resolve_blocks("auto", ["*m", "*a"]) == "all"
    assert resolve_blocks("auto", []) == "decoder"
    assert resolve_blocks("encoder", ["*a"]) == "encoder"  # an explicit choice wins


def test_with_reference_lambda_omega_follows_lambda_per_image(masked_reference, tmp_path):
    """λ = 0 is generation without the reference, λ = 1 is ω itself, and a mixed-λ batch equals one λ at a time."""
    from ostaf.config import GenerateConfig
    from ostaf.generate import generate

    ckpt = train(tiny_config(masked_reference, tmp_path / "ckpt", steps=2), progress=False).out
    common = dict(ckpt=[str(ckpt)], prompt=["a vase in the appearance of *a"], seeds=[0], num_steps=2, device="cpu")

    def images(name, lams, **options):
        config = GenerateConfig(**common, lam=lams, out=str(tmp_path / name), **options)
        return {k: np.asarray(v) for k, v in generate(config, progress=False)[0].images.items()}

    plain = images("plain", [0.0, 1.0])
    fixed = images("fixed", [0.0, 1.0], reference_attention=2.0)
    follows = images("follows", [0.0, 0.5, 1.0], reference_attention=2.0, reference_lambda=True)
    assert np.abs(follows[(0.0, 0)].astype(int) - plain[(0.0, 0)]).max() <= 1  # λ = 0: the reference is off
    assert not np.array_equal(follows[(0.0, 0)], fixed[(0.0, 0)])  # without it, ω acts at λ = 0 too
    assert np.abs(follows[(1.0, 0)].astype(int) - fixed[(1.0, 0)]).max() <= 1  # λ = 1: ω itself
    alone = images("alone", [0.5], reference_attention=2.0, reference_lambda=True)
    assert np.abs(follows[(0.5, 0)].astype(int) - alone[(0.5, 0)]).max() <= 1
    with pytest.raises(OstafError, match="reference-attention"):
        GenerateConfig(**common, lam=[1.0], reference_lambda=True)


def test_a_registered_mechanism_is_driven_through_its_hooks_alone(reference, tmp_path, monkeypatch):
    """The training loop names no mechanism: a new one in the registry is built from the config, attached,
    told each step, wrapped around every forward, has its loss added, and is closed, without touching train.py."""
    from contextlib import contextmanager

    from ostaf.mechanisms import registry
    from ostaf.mechanisms.base import Mechanism

    calls: list = []

    class Probe(Mechanism):
        @classmethod
        def build(cls, config, base):
            calls.append(("build", config.steps, base.pipe.unet is not None))
            return cls()

        def attach(self, setup):
            calls.append("attach")

        def enter_step(self, setup, step):
            calls.append(("step", step))

        @contextmanager
        def forward(self, setup, batch):
            calls.append("enter")
            yield
            calls.append("exit")

        def loss(self, setup, batch, generator):
            return torch.tensor(0.25)  # constant: no gradient, so training is unchanged and the loss shifts by 0.25

        def close(self, setup):
            calls.append("close")

    plain = train(tiny_config(reference, tmp_path / "plain", steps=2, grad_accum=1), progress=False)
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, Probe))
    probed = train(tiny_config(reference, tmp_path / "probed", steps=2, grad_accum=1), progress=False)
    assert calls == [("build", 2, True), "attach", ("step", 0), "enter", "exit", ("step", 1), "enter", "exit", "close"]
    assert probed.losses == pytest.approx([loss + 0.25 for loss in plain.losses], abs=1e-6)
    a, b = tensors(plain.out), tensors(probed.out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_training_loop_names_no_mechanism_and_no_trainable():
    """train.py reaches mechanisms through the registry and trainables through their table (`TRAINABLE`)."""
    from pathlib import Path

    from ostaf.config import TRAINABLE, TRAINABLES

    source = (Path(__file__).resolve().parents[1] / "ostaf" / "train.py").read_text()
    for module in ("binding", "dual_path", "prior", "masked_loss", "contrastive", "word_search"):
        assert f"mechanisms.{module}" not in source and f"import {module}" not in source
    assert not re.search(r"trainable\s*(==|!=|\bin\b)", source), "train.py branches on --trainable's name"
    assert set(TRAINABLE) == set(TRAINABLES)  # every trainable is a row of the table train.py reads


def _stack(unet, layer: str) -> list[str]:
    processor, kinds = unet.get_submodule(layer).processor, []
    while processor is not None:
        kinds.append(type(processor).__name__)
        processor = getattr(processor, "inner", None)
    return kinds


@pytest.mark.parametrize("dual_first", [True, False])
def test_the_dual_path_runs_both_of_its_paths_through_the_reference_attention(tiny_pipe, dual_first):
    """Whatever is installed first, the stack is dual path → reference attention → offsets; so with β = 0 and
    the prompt's own context as the vanilla one, the U-Net is exactly the reference-attended model at λ = 0
    (a dual path inside the reference attention would never run in its self-attention layers)."""
    from PIL import Image

    from ostaf.mechanisms.reference_attention import ReferenceAttention
    from ostaf.offsets import OffsetsAdapter, OffsetsConfig

    unet = tiny_pipe.unet
    sample, t, context = dual_inputs()
    adapter = OffsetsAdapter.install(unet, OffsetsConfig(parts=("decoder",)), "*a")
    image = Image.fromarray(np.full((32, 32, 3), (200, 40, 40), np.uint8))
    mask = np.ones((32, 32), bool)
    if dual_first:
        adapter.set_dual_path(0.0, context)
    reference = ReferenceAttention(tiny_pipe, [adapter], image, mask, omega=2.0, blocks="decoder")
    adapter.set_dual_path(0.0, context)
    layer = next(name for name in adapter.processors if name.endswith("attn1"))
    assert _stack(unet, layer) == ["DualPathProcessor", "SubjectAttentionProcessor", "OffsetsAttnProcessor"]
    with torch.no_grad():
        only_vanilla = unet(sample, t, context).sample
        adapter.set_dual_path(1.0, None)
        assert _stack(unet, layer) == ["SubjectAttentionProcessor", "OffsetsAttnProcessor"]
        personalised = unet(sample, t, context).sample
        adapter.set_scale(0.0)
        at_zero = unet(sample, t, context).sample
    reference.remove()
    adapter.uninstall()
    assert _stack(unet, layer) == ["AttnProcessor2_0"]
    torch.testing.assert_close(only_vanilla, at_zero, rtol=0, atol=1e-6)
    assert not torch.allclose(personalised, at_zero, atol=1e-4)  # λ matters here: the check has teeth


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_the_reference_pass_conditions_on_the_pipelines_own_unconditional_input(model):
    """SDXL's base model generates its unconditional half from zeros (`force_zeros_for_empty_prompt`); the
    reference pass reads the reference as that half does, not the encoded empty prompt. SD-1.x encodes ''."""
    from PIL import Image

    from ostaf.conditioning import PromptEncoder
    from ostaf.mechanisms.reference_attention import ReferenceAttention
    from ostaf.models import load_pipeline

    pipe = load_pipeline(model, seed=0)
    image = Image.fromarray(np.full((32, 32, 3), (200, 40, 40), np.uint8))
    reference = ReferenceAttention(pipe, [], image, np.ones((32, 32), bool), omega=1.0, blocks="decoder")
    states = reference.context.states
    empty = PromptEncoder(pipe).encode(PromptEncoder(pipe).ids([""])).states
    if model == "tiny-sdxl":
        assert pipe.config.force_zeros_for_empty_prompt
        assert not states.any() and not reference.context.pooled.any() and empty.any()
        assert reference.context.time_ids is not None
    else:
        torch.testing.assert_close(states, empty, rtol=0, atol=0)
    reference.remove()


FUSED_CASES = {  # options → (U-Net batch sizes of a 3-micro-batch step accumulated, the same fused)
    "none": ({}, [1, 1, 1], [3]),
    **{name: (options, [1, 1, 1], [3]) for name, options in ON.items()},
    "views": ({"views": 2}, [2, 2, 2], [6]),  # each micro-batch's views in its pass; all in one
    "views+binding": ({"views": 2, "attn_binding": 1.0}, [1, 1, 1, 1, 1, 1], [3, 3]),  # the views apart
}


@pytest.mark.parametrize("name", list(FUSED_CASES))
def test_fused_accumulation_is_the_accumulated_step_in_one_pass(masked_reference, tmp_path, name):
    """--fused-accum runs a step's micro-batches in one U-Net pass with the loss and gradient of accumulating
    them: the same draws, each micro-batch reduced as alone (the masked mean's masks differ between them)."""
    options, apart, together = FUSED_CASES[name]
    results = {}
    for fused in (False, True):
        config = tiny_config(masked_reference, tmp_path / str(fused), grad_accum=3, fused_accum=fused, **options)
        setup = prepare(config)
        if masked := setup.mechanism(MaskedLoss):  # each augmentation's mask its own area, as crops give
            for k in range(masked.masks.shape[0]):
                masked.masks[k, :, : 8 + 4 * k] = 0
        params = [p for p in setup.trainable if p.requires_grad]
        before = [p.detach().clone() for p in params]
        sizes: list[int] = []
        hook = setup.unet.register_forward_pre_hook(lambda _, args, sizes=sizes: sizes.append(args[0].shape[0]))
        sgd = torch.optim.SGD(params, lr=1.0)  # a step of −gradient: the update is the gradient itself
        loss = optimizer_step(setup, sgd, torch.amp.GradScaler("cuda", enabled=False), torch.Generator().manual_seed(0))
        hook.remove()
        results[fused] = (loss, [b - p.detach() for b, p in zip(before, params, strict=True)], sizes)
    assert results[False][2] == apart and results[True][2] == together
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    assert any(g.abs().sum() > 0 for g in results[False][1])
    for fused, accumulated in zip(results[True][1], results[False][1], strict=True):
        torch.testing.assert_close(fused, accumulated, rtol=1e-4, atol=1e-7)


def test_the_reference_weight_is_omega_times_each_samples_lambda_in_both_guidance_halves():
    """`--reference-lambda`: a batch's λ values (one per prompt × seed) repeat over the classifier-free guidance
    halves — two λ at batch 4, three at batch 6 — and a negative λ gives the reference no weight."""
    import torch

    from ostaf.mechanisms.reference_attention import ReferenceState, reference_weight

    def weight(lam, batch):
        return reference_weight(ReferenceState(omega=2.0, masks={}, lam=lam), batch).tolist()

    assert weight(None, 4) == [2.0]
    assert weight(0.5, 4) == [1.0]
    assert weight(torch.tensor([0.25, 1.0]), 4) == [0.5, 2.0, 0.5, 2.0]
    assert weight(torch.tensor([0.0, -1.0, 1.5]), 6) == [0.0, 0.0, 3.0, 0.0, 0.0, 3.0]
