"""The fixed costs (issue 17, point 1): the command and the pipeline's light steps start without torch.

How fast is measured by `benchmarks/startup.py`; here only what makes it fast: torch, diffusers,
transformers and mlflow are not imported where nothing is computed.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "mlflow", "open_clip")


def heavy_modules_after(code: str) -> dict:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_and_the_step_modules_loads_no_heavy_library():
    modules = "ostaf, ostaf.cli, ostaf.steps, ostaf.preflight, ostaf.presets, ostaf.model_spec, components.options"
    assert heavy_modules_after(f"import {modules}\nostaf.model_spec.model_resolution('tiny')") == []


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--image", "missing.png", "--class-name", "dog"],
        ["generate", "--ckpt", "nowhere", "--prompt", "a cup in the appearance of *a"],
    ],
)
def test_a_typo_is_answered_before_torch_loads(argv):
    code = f"from ostaf.cli import main\nassert main({argv!r}) == 2"
    assert heavy_modules_after(code) == []


def test_the_lazy_package_still_exports_its_names():
    import ostaf
    import ostaf.offsets

    assert ostaf.TrainConfig.__name__ == "TrainConfig" and callable(ostaf.apply)
    assert ostaf.offsets.WeightOffsets.__module__ == "ostaf.offsets.hypernet"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ostaf.nope  # noqa: B018


def test_a_step_and_its_task_leave_their_times_in_the_log(capsys):
    from ostaf.steps import STEP_WORK_MARK, timed_step
    from pipelines.console import TASK_WALL_MARK, Summary

    @timed_step
    def work() -> int:
        return 7

    assert work() == 7
    assert capsys.readouterr().out.startswith(f"{STEP_WORK_MARK} work ")
    log, terminal = io.StringIO(), io.StringIO()
    summary = Summary(log, terminal)
    summary.write("Executing task 'train'\nTask 'train' finished with status SUCCESS\n")
    assert f"{TASK_WALL_MARK} train " in log.getvalue() and "train" in terminal.getvalue()


def test_the_console_shows_a_training_bar_at_its_start_quarters_and_end():
    from pipelines.console import Summary

    log, terminal = io.StringIO(), io.StringIO()
    summary = Summary(log, terminal)
    for _ in range(2):  # a second item's bar starts over at 0 %
        for step in range(0, 201, 20):
            summary.write(f"ostaf shape: {step // 2:3d}%|##| {step}/200 [00:01, 9.1step/s, loss=0.1]\n")
        summary.write("ostaf shape: 100%|##| 200/200 [00:01, 9.1step/s, loss=0.1]\n")  # tqdm's closing repeat
    shown = [line.split()[2] for line in terminal.getvalue().splitlines()]
    assert shown == ["0%", "30%", "50%", "80%", "100%"] * 2
    assert log.getvalue().count("ostaf shape") == 24  # every tick stays in the log


@pytest.mark.parametrize("fails", [False, True])
def test_a_kfp_task_skips_the_teardown_but_keeps_its_exit_code_and_output(tmp_path, fails):
    """Run as the KFP executor is (`executor_main.py`): a step, then the executor's own work after it."""
    script = tmp_path / "executor_main.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from ostaf.steps import timed_step\n"
        "step = timed_step(lambda: 'outputs')\n"
        "print(step(), end='')  # buffered: must reach the log\n"
        f"if {fails}:\n    raise RuntimeError('the executor failed after the step')\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == (1 if fails else 0)
    assert "outputs" in done.stdout and "ostaf-step-work" in done.stdout
    assert ("RuntimeError" in done.stderr) is fails


def test_the_gpu_script_measures_a_row_on_tiny_without_a_gpu(tmp_path):
    """benchmarks/gpu.py keeps working where no GPU is lent: one training row of it, on the CPU (issue 17, point 4)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    row = gpu.measure_train("decoder", "bf16", "adamw8bit", "tiny", 64, 1, "cpu")
    assert row["config"] == "decoder-bf16-adamw8bit" and row["s_per_step"] > 0
    assert row["1000_steps_s"] == round(1000 * row["s_per_step"], 1)
    assert row["optimizer_used"] == "AdamW"  # 8-bit AdamW is CUDA only: the fallback is named, not hidden


@pytest.mark.parametrize("trainable", ["blocks", "lora"])
def test_the_step_profile_runs_for_methods_without_a_hypernetwork(trainable):
    """benchmarks/profile_step.py read the hypernetwork off every run's adapter: blocks and LoRA runs have none."""
    command = [sys.executable, str(REPO / "benchmarks" / "profile_step.py"), "--model", "tiny", "--resolution", "64"]
    command += ["--trainable", trainable, "--steps", "1", "--top", "1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| hypernetwork ΔW (no grad, for reference) | 0.0 |" in done.stdout and "| backward |" in done.stdout
