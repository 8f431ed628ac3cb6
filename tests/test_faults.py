"""Faults a long run must survive: SIGKILL mid-run, a NaN loss, a full disk, an unwritable output."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ostaf.checkpoint import load_checkpoint
from ostaf.errors import OstafError
from ostaf.models import load_pipeline
from ostaf.offsets.processor import OffsetsAttnProcessor
from ostaf.train import train
from tests.conftest import on_both_models, tiny_config

TRAIN = "--class-name dog --no-segment --token-init word --lr 1e-3 --steps 12 --checkpoint-every 3"


def ostaf_train(reference, out, model: str = "tiny") -> list[str]:
    command = [sys.executable, "-m", "ostaf.cli", "train", "--image", str(reference), "--out", str(out)]
    return [*command, "--model", model, *TRAIN.split()]


@on_both_models
def test_sigkill_mid_run_then_the_same_command_resumes_to_identical_weights(reference, tmp_path, model):
    subprocess.run(ostaf_train(reference, tmp_path / "straight", model), check=True, capture_output=True)
    killed = subprocess.Popen(ostaf_train(reference, tmp_path / "killed", model), stderr=subprocess.DEVNULL)
    card = tmp_path / "killed" / "checkpoints" / "step-000006" / "ostaf.json"
    deadline = time.time() + 300
    while not card.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "killed" / "ostaf.json").exists()
    done = subprocess.run(ostaf_train(reference, tmp_path / "killed", model), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed" in done.stderr
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "killed")
    assert a.tensors.keys() == b.tensors.keys()
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), key  # bit for bit on CPU


class PoisonAt:
    """A tracker that turns the offsets to NaN after step `step` (a run that diverges there)."""

    def __init__(self, pipe, step: int) -> None:
        self.pipe, self.step = pipe, step

    def log_metrics(self, metrics, step):
        if step == self.step:
            with torch.no_grad():
                for module in self.pipe.unet.modules():
                    if isinstance(module, OffsetsAttnProcessor):
                        for p in module.parameters():
                            p.fill_(float("nan"))


def test_nan_loss_names_the_step_and_the_intact_checkpoint(reference, tmp_path):
    pipe = load_pipeline("tiny")
    config = tiny_config(reference, tmp_path / "run", steps=6, checkpoint_every=2)
    with pytest.raises(OstafError, match=r"step 4: loss became nan .*step-000002, is intact"):
        train(config, pipe=pipe, tracker=PoisonAt(pipe, 3), progress=False)
    good = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-000002")
    assert all(torch.isfinite(t).all() for t in good.tensors.values())
    assert not (tmp_path / "run" / "ostaf.json").exists()


def test_full_disk_while_saving_leaves_nothing_half_written(reference, tmp_path, monkeypatch):
    import errno

    from ostaf import checkpoint

    def full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "save_file", full)  # every safetensors write of a checkpoint goes through it
    with pytest.raises(OstafError, match="No space left on device.*nothing was left half-written"):
        train(tiny_config(reference, tmp_path / "run", steps=2), progress=False)
    assert [p for p in (tmp_path / "run").rglob("*") if p.is_file()] == []


def test_unwritable_output_directory_is_one_clear_error(reference, tmp_path):
    blocker = tmp_path / "not-a-folder"  # a file where a folder must go: unwritable even for root
    blocker.write_text("")
    with pytest.raises(OstafError, match="choose a writable output directory"):
        train(tiny_config(reference, blocker / "run", steps=1), progress=False)
