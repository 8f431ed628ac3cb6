"""Training on the tiny preset: the loss goes down, only what should train changes, resume works."""

from types import SimpleNamespace

import pytest
import torch

from ostaf.errors import OstafError
from ostaf.image_encoder import load_image_encoder
from ostaf.models import load_pipeline
from ostaf.offsets.processor import OffsetsAttnProcessor
from ostaf.train import denoising_loss, evaluation_loss, make_optimizer, optimizer_step, prepare, train
from tests.conftest import on_both_models, text_encoders, tiny_config


def snapshot(pipe):
    return {
        "unet": {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if ".processor." not in n},
        "vae": {n: p.detach().clone() for n, p in pipe.vae.named_parameters()},
        **{
            f"text{i}": {n: p.detach().clone() for n, p in encoder.named_parameters()}
            for i, encoder in enumerate(text_encoders(pipe))
        },
    }


# SDXL's layout has no attention at the full-resolution level, so on random weights the offsets move tiny-sdxl's
# output less: a higher lr, and a smaller drop asked for (measured: 0.86 on tiny at 1e-3, 0.95 on tiny-sdxl at 1e-2)
FIFTY_STEPS = {"tiny": (1e-3, 0.9), "tiny-sdxl": (1e-2, 0.97)}


@on_both_models
def test_fifty_steps_lower_the_denoising_loss(reference, tmp_path, model):
    lr, drop = FIFTY_STEPS[model]
    config = tiny_config(reference, tmp_path / "run", steps=50, lr=lr, model=model)
    setup = prepare(config)
    before = evaluation_loss(setup, seed=7, samples=16)
    optimizer = make_optimizer(setup)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(config.steps):
        optimizer_step(setup, optimizer, scaler, generator)
    after = evaluation_loss(setup, seed=7, samples=16)
    assert after < drop * before, (before, after)


@on_both_models
@pytest.mark.parametrize("trainable", ["lite", "paper", "token", "blocks", "unet"])
def test_untargeted_parameters_never_change(reference, tmp_path, trainable, model):
    pipe = load_pipeline(model)
    before = snapshot(pipe)
    train(
        tiny_config(reference, tmp_path / "run", steps=3, trainable=trainable, model=model), pipe=pipe, progress=False
    )
    after = snapshot(pipe)
    for part in [p for p in before if p != "unet"]:
        for name, tensor in before[part].items():
            if name.endswith("token_embedding.weight"):
                continue  # grew by one row; checked below
            assert torch.equal(after[part][name], tensor), name
    changed = {n for n, t in before["unet"].items() if not torch.equal(after["unet"][n], t)}
    if trainable in ("lite", "token"):
        assert changed == set()
    elif trainable == "unet":  # DreamBooth-like: every part of the U-Net moves
        assert {n.split(".")[0] for n in changed} >= {"down_blocks", "mid_block", "up_blocks", "conv_in"}
    else:  # decoder = up_blocks: every changed weight is in them, and they did change
        assert changed and all(n.startswith("up_blocks.") for n in changed)
    from ostaf.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run")
    offsets = ckpt.section("offsets.")
    if trainable in ("token", "blocks", "unet"):  # baselines: no hypernetwork is installed or saved at all
        assert offsets == {} and not any(
            isinstance(p, OffsetsAttnProcessor) for p in pipe.unet.attn_processors.values()
        )
    else:
        assert offsets
    assert {k.removeprefix("unet.") for k in ckpt.tensors if k.startswith("unet.")} == (
        set() if trainable in ("lite", "token") else changed
    )
    for i, encoder in enumerate(text_encoders(pipe)):  # SDXL: the token is a row of both encoders
        table = encoder.get_input_embeddings().weight
        old = next(t for n, t in before[f"text{i}"].items() if n.endswith("token_embedding.weight"))
        assert table.shape[0] == old.shape[0] + 1
        assert torch.equal(table[: old.shape[0]], old)  # every pre-existing row is bit-identical


@pytest.mark.parametrize("trainable", ["lite", "paper"])
def test_a_single_module_target_trains_only_that_module(reference, tmp_path, trainable):
    """B-LoRA's split on SDXL: only up_blocks.0.attentions.1 (style) learns; its sibling .0 (content) stays."""
    target = "up_blocks.0.attentions.1"
    pipe = load_pipeline("tiny-sdxl")
    before = snapshot(pipe)
    config = tiny_config(reference, tmp_path / "run", steps=3, model="tiny-sdxl", targets=target, trainable=trainable)
    train(config, pipe=pipe, progress=False)
    from ostaf.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.card["offsets"]["targets"] == [target] and ckpt.architecture == "sdxl"
    layers = {key.split(".to_")[0] for key in ckpt.section("offsets.")}
    assert layers and all(layer.startswith(target + ".") for layer in layers)
    after = snapshot(pipe)["unet"]
    changed = {n for n, t in before["unet"].items() if not torch.equal(after[n], t)}
    if trainable == "lite":
        assert changed == set()
    else:  # every weight of the module, and nothing outside it
        assert changed and all(n.startswith(target + ".") for n in changed)
        assert {n for n in before["unet"] if n.startswith(target + ".")} >= changed


def test_token_row_holds_the_learned_embedding(reference, tmp_path):
    pipe = load_pipeline("tiny")
    train(tiny_config(reference, tmp_path / "run", steps=2), pipe=pipe, progress=False)
    from ostaf.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run")
    token_id = pipe.tokenizer.convert_tokens_to_ids("*a")
    learned = ckpt.tensors["token.embedding"]
    table = pipe.text_encoder.get_input_embeddings().weight
    assert not torch.allclose(learned, table[7238])  # image features moved it away from the word "appearance"
    assert torch.equal(table[token_id], learned)  # the trained pipeline now uses the learned e*


@on_both_models
def test_token_init_is_word_plus_alpha_f_of_image(reference, tmp_path, model):
    """SDXL: e* is a row per text encoder, each the word's row there plus α·f_i(image), f_i to that width."""
    config = tiny_config(reference, tmp_path / "run", model=model)
    setup = prepare(config, image_encoder=load_image_encoder(model))
    token = setup.token
    expected = token.word_embedding + 0.1 * token.initializer(token.image_embedding)
    torch.testing.assert_close(token(), expected)
    rows = [encoder.get_input_embeddings().weight[7238] for encoder in text_encoders(setup.pipe)]  # "appearance"
    assert torch.equal(token.word_embedding, torch.cat(rows))
    widths = [row.shape[0] for row in rows]
    assert widths == ([32, 48] if model == "tiny-sdxl" else [32])
    parts = torch.split(token.initializer(token.image_embedding), widths)
    for part in parts:  # each encoder's f ends in its own LayerNorm (at init): mean 0, variance 1 per width
        torch.testing.assert_close(part.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
        torch.testing.assert_close(part.var(unbiased=False), torch.tensor(1.0), atol=1e-2, rtol=0)


def test_word_only_init_trains_a_residual(reference, tmp_path):
    result = train(tiny_config(reference, tmp_path / "run", token_init="word", steps=3), progress=False)
    from ostaf.checkpoint import load_checkpoint

    tensors = load_checkpoint(result.out).tensors
    assert "token.init.residual" in tensors and tensors["token.init.residual"].abs().sum() > 0


def test_frozen_token_caches_the_text_context(reference, tmp_path):
    setup = prepare(tiny_config(reference, tmp_path / "run", train_token=False))
    assert setup.cached_context is not None
    assert all(not p.requires_grad for p in setup.token.parameters())


@on_both_models
def test_checkpoints_every_n_steps_and_resume_equals_uninterrupted(reference, tmp_path, model):
    straight = train(tiny_config(reference, tmp_path / "a", steps=6, checkpoint_every=2, model=model), progress=False)
    train(tiny_config(reference, tmp_path / "b", steps=4, checkpoint_every=2, model=model), progress=False)
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    steps: list[int] = []

    class Recording:
        def log_metrics(self, metrics, step):
            steps.append(step)

    resumed = train(
        tiny_config(reference, tmp_path / "b", steps=6, checkpoint_every=2, model=model),
        tracker=Recording(),
        progress=False,
    )
    assert len(resumed.losses) == 2 and steps == [5, 6]  # the step counter goes on from the checkpoint
    from ostaf.checkpoint import load_checkpoint

    a, b = load_checkpoint(straight.out), load_checkpoint(resumed.out)
    assert a.tensors.keys() == b.tensors.keys()
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), key


def test_resume_refuses_a_different_run(reference, tmp_path):
    train(tiny_config(reference, tmp_path / "run", steps=2), progress=False)
    with pytest.raises(OstafError, match="different settings"):
        train(tiny_config(reference, tmp_path / "run", steps=3, lr=5e-4), progress=False)


def test_non_finite_loss_stops_with_a_clear_error(reference, tmp_path):
    setup = prepare(tiny_config(reference, tmp_path / "run"))
    with torch.no_grad():
        next(setup.adapter.parameters()).fill_(float("nan"))
    optimizer = make_optimizer(setup)
    with pytest.raises(OstafError, match="not finite"):
        optimizer_step(setup, optimizer, torch.amp.GradScaler("cuda", enabled=False), torch.Generator())


def test_shape_attribute_targets_the_encoder(reference, tmp_path):
    setup = prepare(tiny_config(reference, tmp_path / "run", attribute="shape"))
    assert setup.adapter.processors and all(n.startswith("down_blocks.") for n in setup.adapter.processors)
    assert setup.attribute.token == "*m"


def test_confined_token_gradient_keeps_the_loss_and_changes_only_the_gradient(reference, tmp_path):
    grads, losses = {}, {}
    for mode in ("full", "confined"):
        setup = prepare(tiny_config(reference, tmp_path / mode, token_grad=mode))
        batch = (
            setup.latent_mean[:1],
            torch.randn(setup.latent_mean[:1].shape, generator=torch.Generator().manual_seed(0)),
            torch.tensor([500]),
        )
        mse = denoising_loss(setup, *batch).mse
        mse.backward()
        losses[mode] = mse.item()
        grads[mode] = torch.cat([p.grad.flatten() for p in setup.token.parameters() if p.grad is not None])
        if mode == "confined":
            detached = [
                p for p in setup.unet.attn_processors.values() if type(p).__name__ == "DetachedContextProcessor"
            ]
            assert len(detached) == 3  # the untargeted cross-attentions of tiny: two down blocks, the mid block
    assert losses["full"] == pytest.approx(losses["confined"], abs=1e-6)
    assert grads["confined"].abs().sum() > 0
    assert not torch.allclose(grads["full"], grads["confined"])


def test_a_low_rank_hypernetwork_trains_saves_and_loads_back(reference, tmp_path):
    from ostaf import apply
    from ostaf.checkpoint import load_checkpoint

    full = prepare(tiny_config(reference, tmp_path / "full"))
    count = lambda setup: sum(p.numel() for p in setup.adapter.parameters())  # noqa: E731
    result = train(tiny_config(reference, tmp_path / "low", steps=3, hyper_rank=2), progress=False)
    ckpt = load_checkpoint(result.out)
    assert ckpt.card["offsets"]["hyper_rank"] == 2
    saved = ckpt.section("offsets.")
    assert any(k.endswith("linear_row.up") for k in saved) and not any(k.endswith("row.weight") for k in saved)
    pipe = load_pipeline("tiny", seed=42)
    adapter = apply(pipe, result.out)
    assert count(SimpleNamespace(adapter=adapter)) < count(full) / 2
    loaded = {k: v for k, v in adapter.state_dict().items()}
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


def _gradients(setup, batch) -> list[torch.Tensor]:
    for p in setup.trainable:
        p.grad = None
    mse, reg, _ = denoising_loss(setup, *batch)
    (mse + setup.config.token_reg * reg).backward()
    return [p.grad.clone() for p in setup.trainable if p.grad is not None]


@on_both_models
def test_the_down_and_mid_blocks_run_without_autograd_and_the_gradients_are_bit_identical(reference, tmp_path, model):
    """On SDXL too: there the confined token must not reach the U-Net through the pooled embedding either."""
    from ostaf.train import finalize, sample_batch, unet_conditioning

    setup = prepare(tiny_config(reference, tmp_path / "run", token_grad="confined", model=model))
    assert setup.prefix_hooks  # decoder, confined token: nothing before the up blocks can get a gradient
    seen: dict[str, bool] = {}
    for name in ("down_blocks.0", "mid_block", "up_blocks.0"):
        hook = lambda *_, name=name: seen.__setitem__(name, torch.is_grad_enabled())  # noqa: E731
        setup.unet.get_submodule(name).register_forward_pre_hook(hook)  # runs after the prefix's own pre-hook
    batch = sample_batch(setup, torch.Generator().manual_seed(0))
    with_prefix = _gradients(setup, batch)
    assert seen == {"down_blocks.0": False, "mid_block": False, "up_blocks.0": True}
    with torch.no_grad():  # outside training the hooks leave the caller's mode alone
        setup.unet(batch.latents, batch.timesteps, **unet_conditioning(setup, 1).unet_kwargs())
    assert seen["up_blocks.0"] is False
    for hook in setup.prefix_hooks:
        hook.remove()
    without = _gradients(setup, batch)
    assert seen["down_blocks.0"] is True and len(with_prefix) == len(without) > 0
    assert all(torch.equal(a, b) for a, b in zip(with_prefix, without, strict=True))
    finalize(setup)
    assert setup.prefix_hooks == []


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(attribute="shape"),
        dict(token_grad="confined", trainable="unet"),
        dict(token_grad="confined", include_mid=True),
    ],
)
def test_no_prefix_hooks_where_a_gradient_can_flow_there(reference, tmp_path, overrides):
    assert prepare(tiny_config(reference, tmp_path / "run", **overrides)).prefix_hooks == []


@pytest.mark.parametrize("token_lr", [0.0, 1e-2])
def test_the_token_and_the_weights_move_at_their_own_rates(reference, tmp_path, token_lr):
    """--token-lr reaches the token's parameter group only: the weights keep --lr (issue 28, point 1)."""
    setup = prepare(tiny_config(reference, tmp_path / "run", lr=1e-6, token_lr=token_lr, train_token=True))
    token, weights = list(setup.token.parameters()), list(setup.adapter.parameters())
    before = [p.detach().clone() for p in token + weights]
    optimizer = make_optimizer(setup)
    for _ in range(3):
        optimizer_step(setup, optimizer, torch.amp.GradScaler("cuda", enabled=False), torch.Generator().manual_seed(0))
    moved = [float((p.detach() - b).abs().max()) for p, b in zip(token + weights, before, strict=True)]
    token_moved, weights_moved = max(moved[: len(token)]), max(moved[len(token) :])
    assert 0 < weights_moved <= 3.5e-6  # Adam moves a weight by about lr a step
    assert (token_moved > 1e-3) if token_lr else (0 < token_moved <= 3.5e-6)


@on_both_models
def test_keep_text_projections_fine_tunes_every_block_weight_but_the_texts_keys_and_values(tmp_path, model, reference):
    """`--keep-text-projections`: the blocks' cross-attention to_k / to_v do not train (the checkpoint has none:
    generation reads the base model's), where without the option they do; most other weights of the blocks train,
    the query included; a trainable that fine-tunes no block refuses the option."""
    from ostaf.checkpoint import load_checkpoint

    common = dict(model=model, steps=2, lr=5e-2, trainable="blocks", attribute="shape")
    kept = load_checkpoint(train(tiny_config(reference, tmp_path / "k", keep_text_projections=True, **common)).out)
    full = load_checkpoint(train(tiny_config(reference, tmp_path / "f", **common)).out)
    text = [n for n in full.section("unet.") if ".attn2.to_k." in n or ".attn2.to_v." in n]
    assert text and set(kept.section("unet.")) == set(full.section("unet.")) - set(text)
    base = dict(load_pipeline(model, seed=42).unet.named_parameters())  # the preset as the runs built it (seed 42)
    assert all(not torch.equal(full.section("unet.")[n].float(), base[n].float()) for n in text)  # they do train
    moved = [n for n, w in kept.section("unet.").items() if not torch.equal(w.float(), base[n].float())]
    assert len(moved) > len(kept.section("unet.")) // 2 and any(".attn2.to_q." in n for n in moved)
    with pytest.raises(OstafError, match="fine-tunes no block"):
        tiny_config(reference, tmp_path / "t", keep_text_projections=True, trainable="token")
