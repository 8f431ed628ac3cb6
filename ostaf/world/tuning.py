"""Fair tuning on validation references: every method gets the same trials, picked by one rule.

Each method runs the same grid of trials (learning rate × steps) on the *validation* references
(`ExperimentConfig(split="validation")`), sweeping λ in each. One rule picks, per method and
attribute, the trial and λ that go into the test table:

    the highest attribute match (ties: the better continuous metric) among the (trial, λ) whose text
    control is at least `text_floor` × the words ceiling's; if none reaches it, the best text control.

The search is one MLflow parent run (`attribute-world-tuning`) with a child per trial whose
`<attribute>_match_vs_lambda` / `<attribute>_text_vs_lambda` histories are its λ curves, so trials
compare in the MLflow UI; `chosen.json` (what `--tuned` reads) is logged on the parent.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ostaf.config import opt
from ostaf.io import atomic_write, write_json
from ostaf.recipes import WORLD
from ostaf.report import to_markdown
from ostaf.world.experiment import ExperimentConfig, run_many
from ostaf.world.methods import METHODS, TABLE_METHODS
from ostaf.world.references import ATTRIBUTES, KINDS, STRENGTH
from ostaf.world.table import LAMBDA_METRIC

MATCH = {attribute: s.match for attribute, s in STRENGTH.items()}


@dataclass
class TuneConfig:
    """The search; CLI flags and MLflow params come from these fields."""

    model: str = opt("attribute-world", "base model (a preset name or a diffusers folder)")
    references: int = opt(4, "validation references per attribute")
    kind: str = opt("named", "the references' kind: named (v2), or unnamed seen / novel (v3)", choices=KINDS)
    attributes: list[str] = opt(list(ATTRIBUTES), "attributes to tune on", choices=ATTRIBUTES)
    methods: list[str] = opt(list(TABLE_METHODS), "methods to tune (each gets the same trials)", choices=tuple(METHODS))
    lrs: list[float] = opt([3e-4, 1e-3, 3e-3], "learning rates of the token methods' grid")
    steps: list[int] = opt([100, 200], "step budgets of the token methods' grid")
    weight_lrs: list[float] = opt(
        [1e-6, 3e-5, 1e-3], "learning rates of the weight methods' grid (offsets, LoRA, fine-tuning; --lr)"
    )
    weight_steps: list[int] = opt([200, 1000], "step budgets of the weight methods' grid")
    weight_token_lr: float = opt(1e-3, "the token's rate in the weight methods' trials (--token-lr; 0: their --lr)")
    lams: list[float] = opt([0.0, 0.5, 1.0, 1.5], "λ sweep of every trial (the rule picks λ too)")
    seeds: list[int] = opt([0], "generation seeds")
    num_steps: int = opt(WORLD.generate["num_steps"], "DDIM steps")
    guidance: float = opt(WORLD.generate["guidance"], "classifier-free guidance scale")
    text_floor: float = opt(0.9, "a pick keeps at least this share of the words ceiling's text control")
    workers: int = opt(1, "parallel jobs (processes with one thread each)")
    out: str = opt("runs/attribute-world-tuning", "output folder: chosen.json, trials.md, one folder per trial")

    def experiment(self, **changes: Any) -> ExperimentConfig:
        """The validation experiment of one trial (or of the words ceiling, with methods=[])."""
        return ExperimentConfig(
            model=self.model,
            split="validation",
            references=self.references,
            kind=self.kind,
            attributes=list(self.attributes),
            lams=list(self.lams),
            seeds=list(self.seeds),
            num_steps=self.num_steps,
            guidance=self.guidance,
            workers=self.workers,
            **changes,
        )

    def trials(self, method: str) -> list[dict[str, Any]]:
        """`method`'s grid: its family's (the token's, or the weights' with the token at its own rate)."""
        if not trains_weights(method):
            return [{"lr": lr, "steps": steps} for lr, steps in itertools.product(self.lrs, self.steps)]
        grid = itertools.product(self.weight_lrs, self.weight_steps)
        return [{"lr": lr, "steps": steps, "token_lr": self.weight_token_lr} for lr, steps in grid]


def trains_weights(method: str) -> bool:
    """Offsets, LoRA or fine-tuned blocks (the weight family), not the token alone."""
    return METHODS[method].train["trainable"] != "token"


def curves(rows: list[dict], attribute: str) -> dict[float, dict[str, float]]:
    """λ → mean attribute match, continuous metric (signed: higher is better) and text control."""
    metric, sign = LAMBDA_METRIC[attribute]
    out = {}
    for lam in sorted({r["lam"] for r in rows if r["attribute"] == attribute}):
        at = [r for r in rows if r["attribute"] == attribute and r["lam"] == lam]
        out[lam] = {
            "match": float(np.mean([r[MATCH[attribute]] for r in at])),
            "metric": float(np.mean([sign * r[metric] for r in at])),
            "text": float(np.mean([r["text_control"] for r in at])),
        }
    return out


def pick(candidates: list[dict[str, Any]], floor: float) -> dict[str, Any]:
    """The rule: best match (then metric) among candidates with text ≥ floor, else the best text control."""
    passing = [c for c in candidates if c["text"] >= floor]
    if passing:
        return max(passing, key=lambda c: (c["match"], c["metric"])) | {"meets_floor": True}
    return max(candidates, key=lambda c: (c["text"], c["match"])) | {"meets_floor": False}


def trial_folder(out: Path, method: str, trial: dict[str, Any]) -> Path:
    token = f"-token{trial['token_lr']:g}" if trial.get("token_lr") else ""
    return out / "trials" / method / f"lr{trial['lr']:g}-steps{trial['steps']}{token}"


def search(
    config: TuneConfig, log_to_mlflow: bool = True, tags: dict | None = None, progress: bool = False
) -> dict[str, Any]:
    """Run every trial of every method on validation references and pick by the rule; writes chosen.json."""
    started = time.perf_counter()
    out = Path(config.out)
    plan = [(method, trial) for method in config.methods for trial in config.trials(method)]
    experiments = [config.experiment(methods=[], out=str(out / "words"))] + [
        config.experiment(methods=[m], words=False, compose=[], out=str(trial_folder(out, m, t)), **t) for m, t in plan
    ]
    words_report, *reports = run_many(experiments, log_to_mlflow=False, progress=progress)
    words_rows = [r for r in _rows(words_report) if r["method"] == "words"]
    ceiling = {a: curves(words_rows, a)[1.0]["text"] for a in config.attributes}
    trials: list[dict[str, Any]] = []
    for (method, trial), report in zip(plan, reports, strict=True):
        rows = [r for r in _rows(report) if r["method"] == method]
        for attribute in config.attributes:
            for lam, point in curves(rows, attribute).items():
                trials.append({"method": method, "attribute": attribute, **trial, "lam": lam, **point})
    chosen: dict[str, dict[str, dict]] = {}
    for method, attribute in itertools.product(config.methods, config.attributes):
        candidates = [t for t in trials if t["method"] == method and t["attribute"] == attribute]
        best = pick(candidates, config.text_floor * ceiling[attribute])
        chosen.setdefault(method, {})[attribute] = {
            k: best[k] for k in ("lr", "steps", "token_lr", "lam", "match", "text") if k in best
        } | {"meets_floor": best["meets_floor"]}
    report = {
        "config": asdict(config),
        "rule": f"best match with text control ≥ {config.text_floor} × words ({ceiling}), else best text control",
        "words_text_control": ceiling,
        "chosen": chosen,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "chosen.json", report)
    write_json(out / "trials.json", trials)
    table = [{"method": m, "attribute": a} | c for m, by in chosen.items() for a, c in by.items()]
    keys = ["method", "attribute", "lr", "steps", "lam", "match", "text", "meets_floor"]
    atomic_write(out / "trials.md", lambda tmp: tmp.write_text(to_markdown(table, keys)))
    if log_to_mlflow:
        _log(config, trials, out, report, tags or {})
    return report


def _rows(report: dict[str, Any]) -> list[dict]:
    return json.loads((Path(report["config"]["out"]) / "rows.json").read_text())


def _log(config: TuneConfig, trials: list[dict], out: Path, report: dict, tags: dict) -> None:
    from ostaf import tracking

    rows = []
    for method in config.methods:
        for trial in config.trials(method):
            by_lam: dict[float, dict[str, float]] = {}
            for t in trials:
                if t["method"] == method and (t["lr"], t["steps"]) == (trial["lr"], trial["steps"]):
                    by_lam.setdefault(t["lam"], {}).update(
                        {f"{t['attribute']}_match": t["match"], f"{t['attribute']}_text": t["text"]}
                    )
            name = f"{method} lr={trial['lr']:g} steps={trial['steps']}"
            rows.append(tracking.TableRow(name, {"method": method, **trial}, {}, by_lam))
    artifacts: list[tuple[Path, str | None]] = [(out / n, None) for n in ("chosen.json", "trials.md")]
    tracking.log_table("attribute-world-tuning", asdict(config), rows, {"seconds": report["seconds"]}, artifacts, tags)


def tuned_experiment(config: TuneConfig, chosen: str | Path, **changes: Any) -> ExperimentConfig:
    """The test-split experiment with the chosen settings (a convenience for scripts)."""
    return replace(config.experiment(methods=list(config.methods), tuned=str(chosen)), split="test", **changes)
