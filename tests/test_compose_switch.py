"""Composition by timestep split (`--compose-switch`): each checkpoint acts in its part of the schedule only."""

from __future__ import annotations

import pytest
import torch

import ostaf.generate as generation
from ostaf.checkpoint import load_checkpoint
from ostaf.conditioning import PromptEncoder
from ostaf.config import GenerateConfig
from ostaf.errors import OstafError
from ostaf.generate import generate
from ostaf.mechanisms.dual_path import VanillaPrompts
from ostaf.models import load_pipeline
from ostaf.train import train
from tests.conftest import on_both_models, tiny_config, trained_once_per_model

PROMPT = "a cat in the shape of *m in the appearance of *a"


@pytest.fixture(scope="module")
def trained_on(tmp_path_factory):
    return trained_once_per_model(tmp_path_factory, ("appearance", "shape", "style"), steps=3)


def recorded_calls(pipe, adapters_of) -> list[dict]:
    """Every U-Net call's timestep, context and the adapters' λ, as the U-Net's forward receives them (after
    every pre-hook)."""
    calls: list[dict] = []
    forward = pipe.unet.forward

    def recording(sample, timestep, encoder_hidden_states, *args, **kwargs):
        calls.append(
            {
                "t": float(torch.as_tensor(timestep).flatten()[0]),
                "context": encoder_hidden_states.detach().clone(),
                "scales": [float(torch.as_tensor(a.scale).flatten()[0]) for a in adapters_of()],
            }
        )
        return forward(sample, timestep, encoder_hidden_states, *args, **kwargs)

    pipe.unet.forward = recording
    return calls


def config(ckpts, out, **overrides) -> GenerateConfig:
    values = dict(ckpt=[str(c) for c in ckpts], prompt=[PROMPT], lam=[0.7], seeds=[0], num_steps=4, device="cpu")
    return GenerateConfig(**(values | {"out": str(out)} | overrides))


@on_both_models
@pytest.mark.parametrize("look", ["late", "everywhere"])
def test_the_switch_hands_over_at_its_timestep(trained_on, tmp_path, model, monkeypatch, look):
    """Calls at t ≥ s·T run the shape adapter at λ and the appearance one at 0 on the prompt with *a read as its
    nearest word (with the look everywhere: both at λ on the prompt as written); calls below run the appearance
    adapter at λ and the shape one at 0 with *m read as its nearest word; after generation both adapters are back
    at their λ."""
    ckpts = trained_on(model)
    pipe = load_pipeline(model)
    installed: list = []
    original = generation.apply

    def keep(pipe_, ckpt, **kwargs):
        installed.append(original(pipe_, ckpt, **kwargs))
        return installed[-1]

    monkeypatch.setattr(generation, "apply", keep)
    calls = recorded_calls(pipe, lambda: installed)
    options = dict(compose_switch=0.5, compose_look=look)
    generate(config([ckpts["shape"], ckpts["appearance"]], tmp_path / "g", **options), pipe, progress=False)
    assert {c["t"] >= 500 for c in calls} == {True, False}  # both phases ran (DDIM, 4 steps: t = 751 … 1)
    shape, appearance = installed
    prompts = PromptEncoder(pipe)
    ids = prompts.ids([PROMPT])
    token_id = {t: prompts.tokenizer.convert_tokens_to_ids(t) for t in ("*m", "*a")}
    guidance = GenerateConfig.__dataclass_fields__["guidance"].default
    learned = prompts.encode(ids).states
    everywhere = look == "everywhere"
    for call in calls:
        early = call["t"] >= 500
        assert call["scales"] == pytest.approx([0.7, 0.7 if everywhere else 0.0] if early else [0.0, 0.7])
        # the other phase's placeholder is read as its nearest word: that id in its place, the rest as prompted
        other = "*a" if early else "*m"
        word = VanillaPrompts(prompts, [other]).replace[token_id[other]]
        swapped = prompts.encode(torch.where(ids == token_id[other], word, ids)).states
        assert not torch.allclose(swapped, learned, atol=1e-4)  # the swap changes the context
        expected = learned if early and everywhere else swapped
        assert guidance > 1 and torch.allclose(call["context"][1:], expected, atol=1e-5)
        assert torch.allclose(call["context"][:1], prompts.unconditional(1).states, atol=1e-5)
    assert shape.scale == appearance.scale == 1.0  # restored


def test_without_the_switch_both_act_everywhere_and_the_images_differ(trained_on, tmp_path):
    ckpts = trained_on("tiny")
    both = generate(config([ckpts["shape"], ckpts["appearance"]], tmp_path / "a"), progress=False)[0]
    split = generate(config([ckpts["shape"], ckpts["appearance"]], tmp_path / "b", compose_switch=0.5), progress=False)
    a, b = both.images[(0.7, 0)], split[0].images[(0.7, 0)]
    assert a.tobytes() != b.tobytes()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(compose_switch=1.0), "fraction of the noise schedule"),
        (dict(compose_switch=-0.1), "fraction of the noise schedule"),
        (dict(compose_switch=0.5, reference_attention=0.5), "cannot be combined"),
        (dict(compose_look="everywhere"), "add --compose-switch"),
    ],
)
def test_bad_switches_are_one_error(trained_on, tmp_path, overrides, message):
    ckpts = trained_on("tiny")
    with pytest.raises(OstafError, match=message):
        config([ckpts["shape"], ckpts["appearance"]], tmp_path / "x", **overrides)


def test_the_switch_needs_a_shape_and_another_attribute_before_any_model_loads(trained_on, tmp_path, monkeypatch):
    ckpts = trained_on("tiny")

    def no_loading(*args, **kwargs):
        raise AssertionError("a model loaded before the refusal")

    monkeypatch.setattr("ostaf.generate.load_base_pipeline", no_loading)
    with pytest.raises(OstafError, match="pass a shape --ckpt"):
        config([ckpts["shape"]], tmp_path / "one", compose_switch=0.5)
    no_shape = config([ckpts["appearance"], ckpts["style"]], tmp_path / "two", compose_switch=0.5)
    no_shape.prompt = ["a cat in the appearance of *a in the style of *s"]
    with pytest.raises(OstafError, match="give one shape checkpoint"):
        generate(no_shape)


def test_with_token_lambda_fine_tuned_weights_hand_over_too(trained_on, tmp_path, monkeypatch):
    """A fine-tuned shape checkpoint (the views recipe's `blocks`) under --token-lambda: in the early calls its
    weights are W₀ + λ·(W₁ − W₀), in the late calls the base model's W₀; after generation they are as before."""
    ckpts = trained_on("tiny")
    shape = train(
        tiny_config(ckpts["reference"], tmp_path / "blocks", steps=2, trainable="blocks", attribute="shape"),
        progress=False,
    ).out
    pipe = load_pipeline("tiny")
    base = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    tuned = load_checkpoint(shape).section("unet.")
    name = next(n for n in tuned if not torch.equal(tuned[n].float(), base[n].float()))  # a weight that trained
    param = dict(pipe.unet.named_parameters())[name]
    seen: list[tuple[float, torch.Tensor]] = []
    forward = pipe.unet.forward

    def recording(sample, timestep, *args, **kwargs):
        seen.append((float(torch.as_tensor(timestep).flatten()[0]), param.detach().clone()))
        return forward(sample, timestep, *args, **kwargs)

    pipe.unet.forward = recording
    generate(
        config([shape, ckpts["appearance"]], tmp_path / "g", compose_switch=0.5, token_lambda=True),
        pipe,
        progress=False,
    )
    assert {t >= 500 for t, _ in seen} == {True, False}
    w0, w1 = base[name].float(), tuned[name].float()
    for t, weight in seen:
        expected = w0 + 0.7 * (w1 - w0) if t >= 500 else w0
        assert torch.allclose(weight.float(), expected, atol=1e-6), t
    assert torch.allclose(param.detach().float(), w1, atol=1e-6)  # back at λ = 1, as `apply` left it


def test_fine_tuned_weights_cannot_be_switched_off(trained_on, tmp_path, monkeypatch):
    ckpts = trained_on("tiny")
    blocks = train(
        tiny_config(ckpts["reference"], tmp_path / "blocks", steps=1, trainable="blocks", attribute="appearance"),
        progress=False,
    ).out
    monkeypatch.setattr("ostaf.generate.load_base_pipeline", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(OstafError, match="fine-tuned U-Net weights.*add --token-lambda"):
        generate(config([ckpts["shape"], blocks], tmp_path / "g", compose_switch=0.5))
    paper = train(
        tiny_config(ckpts["reference"], tmp_path / "paper", steps=1, trainable="paper", attribute="appearance"),
        progress=False,
    ).out
    with pytest.raises(OstafError, match="fine-tuned U-Net weights.*: drop --compose-switch"):  # offsets: no blend
        generate(config([ckpts["shape"], paper], tmp_path / "g", compose_switch=0.5, token_lambda=True))


def test_the_switch_built_without_the_generate_checks_still_refuses_a_pair_without_a_shape():
    """`ComposeSwitch` is public: built directly (not through `generate`, which checks first), it names the
    switch and the checkpoints' attributes in its one error, before touching the U-Net or the prompts."""
    from ostaf.mechanisms.compose_switch import ComposeSwitch

    with pytest.raises(OstafError, match=r"--compose-switch 0.5 .* \['appearance', 'style'\]"):
        ComposeSwitch(None, None, [], ["*a", "*s"], ["appearance", "style"], 0.5, 1000)


def test_a_call_at_the_switch_timestep_is_early():
    """t ≥ s·T is the early phase, the boundary included (as `--compose-switch` says)."""
    from types import SimpleNamespace

    from ostaf.mechanisms.compose_switch import ComposeSwitch

    at = SimpleNamespace(boundary=500.0)
    assert ComposeSwitch.is_early(at, 500) and ComposeSwitch.is_early(at, torch.tensor([500.0, 500.0]))
    assert not ComposeSwitch.is_early(at, 499)
