"""Every accepted combination works or is refused: all pairs of the method and mechanism options.

The factors come from the configs' metadata (`opt(pairwise=…)` on `TrainConfig` and `GenerateConfig`), so an
option that declares its values joins this test without editing it; `allpairspy` picks a small set of cases
in which every pair of values of any two factors occurs. Each case trains two steps and generates at λ 0 and
1 in one batch, on `tiny` or `tiny-sdxl`, or is refused by one `OstafError` before any model loads.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from allpairspy import AllPairs

from ostaf import checkpoint, generate, train
from ostaf.config import GenerateConfig, TrainConfig
from ostaf.errors import OstafError
from tests.conftest import TINY_MODELS, synthetic_image, tiny_config


def pairwise_factors() -> OrderedDict[str, tuple]:
    """`train.<field>` / `generate.<field>` → the values the configs declare, and the model."""
    factors: OrderedDict[str, tuple] = OrderedDict(model=TINY_MODELS)
    for prefix, cls in (("train", TrainConfig), ("generate", GenerateConfig)):
        for f in fields(cls):
            if "pairwise" in f.metadata:
                factors[f"{prefix}.{f.name}"] = f.metadata["pairwise"]
    return factors


def refusal(case: dict) -> str | None:
    """The error the configs give this case before any model loads (None: accepted). The checks are the
    shipped ones: the test's own `TrainConfig` (its shared options and its item: an appearance reference) and
    generation's `check_adapters_can` on the card it would write."""
    return _refusal(tuple(case.items()))


@functools.cache  # the pairs' completion asks about the same cases again and again
def _refusal(items: tuple) -> str | None:
    case = dict(items)
    options = {k.split(".", 1)[1]: v for k, v in case.items() if k.startswith("train.")}
    try:
        tiny_config(Path("ref.png"), Path("ckpt"), model=case["model"], **options)
        wanted = {k.split(".", 1)[1]: v for k, v in case.items() if k.startswith("generate.")}
        card = {"trainable": options.get("trainable", "lite")} | (
            {"lora": {}} if options.get("trainable") == "lora" else {}
        )
        wanted |= {"ckpt": ["ckpt"], "prompt": ["a ball in the appearance of *a"]}
        generate.check_adapters_can(GenerateConfig(**wanted), [SimpleNamespace(card=card, token="*a")])
    except OstafError as err:
        return str(err)
    return None


def _row(values: list) -> dict:
    """A (partial) allpairspy row as a case; factors not drawn yet are at their first value (off)."""
    return {name: values[i] if i < len(values) else options[0] for i, (name, options) in enumerate(FACTORS.items())}


def _value_pairs():
    """Every pair of values of two factors, as (a, x, b, y)."""
    names = list(FACTORS)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for x in FACTORS[a]:
                for y in FACTORS[b]:
                    yield a, x, b, y


def _held(cases: list[dict], a: str, x, b: str, y) -> bool:
    return any(c[a] == x and c[b] == y for c in cases)


def _accepted_completion(accepted: list[dict]) -> list[dict]:
    """Accepted cases for the pairs allpairspy's filtered search left out although some accepted case can hold
    them (its filter sees partial rows, the rest off: a value that needs another option on — the prediction
    blend needs a token checkpoint and --token-lambda — is never drawn). Each missing pair goes into an earlier
    added case when it does not move that case's own pairs and stays accepted, else onto the rest-off row or a
    drawn case (a merge may move a pair the case held by chance: the caller runs it again until nothing is added);
    pairs no accepted case can hold are left to the refused cases."""
    added: list[tuple[dict, dict]] = []  # (case, the pairs' values it was added for)
    for a, x, b, y in _value_pairs():
        if _held([*accepted, *(c for c, _ in added)], a, x, b, y):
            continue
        pin = {a: x, b: y}
        merged = next(
            (
                j
                for j, (case, pins) in enumerate(added)
                if all(pins.get(k, v) == v for k, v in pin.items()) and refusal(case | pin) is None
            ),
            None,
        )
        if merged is not None:
            added[merged] = (added[merged][0] | pin, added[merged][1] | pin)
            continue
        start = next((c for c in [_row([]), *accepted] if refusal(c | pin) is None), None)
        if start is not None:
            added.append((start | pin, pin))
    return [case for case, _ in added]


def _complete(cases: list[dict]) -> list[dict]:
    """Add a case (the rest off) for each pair no case holds yet: refused, shown refused."""
    for a, x, b, y in _value_pairs():
        if not _held(cases, a, x, b, y):
            cases.append(_row([]) | {a: x, b: y})
    return cases


FACTORS = pairwise_factors()
# every pair of values that the configs accept together is exercised together; every refused pair is shown refused
ACCEPTED = [_row(v) for v in AllPairs(list(FACTORS.values()), filter_func=lambda row: refusal(_row(row)) is None)]
while added := _accepted_completion(ACCEPTED):  # a merge can move a pair another case held by chance: again
    ACCEPTED += added
CASES = ACCEPTED + [case for case in map(_row, AllPairs(list(FACTORS.values()))) if refusal(case) is not None]
CASES = _complete(CASES)


def _id(case: dict) -> str:
    return "-".join(f"{k.split('.')[-1]}={v}" for k, v in case.items() if v not in (0, 0.0, 1.0, False, "fixed"))


def test_the_factors_cover_every_method_and_mechanism():
    assert set(FACTORS["train.trainable"]) == {"lite", "paper", "token", "blocks", "unet", "lora"}
    names = {k.split(".", 1)[-1] for k in FACTORS}
    assert {"train_lam", "dual_path", "masked_loss", "attn_binding", "nn_contrastive", "token_steps"} <= names
    assert {"token_search", "token_grad", "reference_attention", "reference_lambda"} <= names
    pairs = {(a, b) for a in FACTORS for b in FACTORS if a < b}
    for a, b in pairs:  # every pair of values of every two factors is in some case
        seen = {(case[a], case[b]) for case in CASES}
        assert seen == {(x, y) for x in FACTORS[a] for y in FACTORS[b]}, (a, b)
    assert any(refusal(case) for case in CASES) and any(refusal(case) is None for case in CASES)
    accepted = [case for case in CASES if refusal(case) is None]
    assert any(case["generate.token_lambda_blend"] == "prediction" for case in accepted)  # on a token checkpoint
    held = {(a, case[a], b, case[b]) for case in accepted for a in FACTORS for b in FACTORS}
    for case in accepted:  # a value an accepted case takes is run with each value of that case beside it
        for a, values in FACTORS.items():
            for x in values:
                if x != case[a] and refusal(case | {a: x}) is None:
                    missing = [(a, x, b, case[b]) for b in FACTORS if b != a and (a, x, b, case[b]) not in held]
                    assert not missing, missing


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The models loaded so far in this phase of the test (every path that loads a pipeline is counted)."""
    loaded: list[str] = []
    originals = {module: module.load_pipeline for module in (train, generate, checkpoint)}
    for module, original in originals.items():

        def counting(model, *args, _original=original, **kwargs):
            loaded.append(model)
            return _original(model, *args, **kwargs)

        monkeypatch.setattr(module, "load_pipeline", counting)
    return loaded


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_a_combination_trains_and_generates_or_is_refused_before_any_model_loads(case, tmp_path, loads):
    options = {k.split(".", 1)[1]: v for k, v in case.items() if k.startswith("train.")}
    reference = tmp_path / "ref.png"
    synthetic_image().save(reference)
    try:
        config = tiny_config(
            reference,
            tmp_path / "ckpt",
            steps=2,
            model=case["model"],
            token_search_rounds=1,
            token_search_samples=2,
            **options,
        )
        train.train(config, progress=False)
        loads.clear()  # generation's own refusals come before it loads a model
        made = generate.generate(
            GenerateConfig(
                ckpt=[str(tmp_path / "ckpt")],
                prompt=["a ball in the appearance of *a"],
                lam=[0.0, 1.0],
                seeds=[0],
                num_steps=2,
                device="cpu",
                out=str(tmp_path / "images"),
                **{k.split(".", 1)[1]: v for k, v in case.items() if k.startswith("generate.")},
            ),
            progress=False,
        )
    except OstafError as err:
        assert not loads, f"refused only after loading {loads}: {err}"
        assert refusal(case) is not None, f"accepted by the configs, then failed: {err}"
        return
    assert refusal(case) is None, "the configs refuse this case, but it ran"
    images = made[0].images
    assert sorted(images) == [(0.0, 0), (1.0, 0)]
    assert all(np.isfinite(np.asarray(image, np.float32)).all() for image in images.values())
