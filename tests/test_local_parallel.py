"""`run-local` runs item branches side by side (`--parallelism`, default 2), the cores shared among their task
processes, with a console that keeps each branch's lines apart and names its item."""

import builtins
import io
import logging
import os
import re
import threading

import pytest

from pipelines import run
from pipelines.console import ANSI, FINISHED, STARTED, Summary


@pytest.mark.parametrize(
    ("parallelism", "cores", "threads"), [(1, 2, 2), (2, 2, 1), (2, 16, 8), (4, 2, 1), (3, 16, 5), (0, 2, 2)]
)
def test_task_processes_share_the_cores_among_the_branches(parallelism, cores, threads):
    assert run.task_threads(parallelism, cores) == threads


def _write_in_threads(summary: Summary, chunks: list[tuple[int, str]]) -> None:
    """Each chunk written by its lane's own thread, in the given order (one thread a lane, as kfp's pool)."""
    turns = [threading.Event() for _ in chunks]
    done = [threading.Event() for _ in chunks]

    def lane(index: int) -> None:
        for turn, (who, text) in enumerate(chunks):
            if who == index:
                turns[turn].wait(5)
                summary.write(text)
                done[turn].set()

    threads = [threading.Thread(target=lane, args=(i,)) for i in {who for who, _ in chunks}]
    for thread in threads:
        thread.start()
    for turn, event in enumerate(turns):
        event.set()
        assert done[turn].wait(5)
    for thread in threads:
        thread.join(5)


def test_two_branches_writing_at_once_keep_their_own_lines_items_and_bars():
    log, terminal = io.StringIO(), io.StringIO()
    summary = Summary(log, terminal)
    start = "Executing task 'train'\n"
    chunks = [
        (0, "Executing task 'preprocess'\n"),
        (0, '    "item_id": "shape-a"\n'),
        (1, "Executing task 'preprocess'\n"),
        (1, '    "item_id": "shape-b"\n'),
        (0, "Task 'preprocess' finished with status SUCCESS\n"),
        (1, "Task 'preprocess' finished with status SUCCESS\n"),
        (0, start),
        (1, start),
        (0, "ostaf shape:  30%|##| 60/200 [00:01, 9.1step/s, loss=0.1]\rostaf sha"),  # a line cut mid-word
        (1, "ostaf shape:  30%|##| 60/200 [00:01, 8.0step/s, loss=0.2]\n"),  # the other lane's same quarter
        (0, "pe:  50%|##| 100/200 [00:02, 9.1step/s, loss=0.1]\n"),
        (1, "something failed in b\nTask 'train' finished with status FAILURE\n"),
        (0, "Task 'train' finished with status SUCCESS\n"),
    ]
    _write_in_threads(summary, chunks)
    shown = terminal.getvalue().splitlines()
    assert [line for line in shown if "preprocess" in line][0].endswith("shape-a")
    assert [line for line in shown if "preprocess" in line][1].endswith("shape-b")
    bars = [line.split() for line in shown if line.startswith("    ostaf shape")]
    assert [(b[2], b[-1]) for b in bars] == [("30%", "shape-a"), ("30%", "shape-b"), ("50%", "shape-a")]
    (failed,) = [line for line in shown if "failure" in line]
    assert failed.split()[:2] == ["train", "failure"] and failed.endswith("shape-b")
    assert "    | something failed in b" in shown[shown.index(failed) + 1 :]  # b's own last lines
    assert not any("loss=0.1" in line for line in shown[shown.index(failed) + 1 :])  # nothing of a's
    (succeeded,) = [line for line in shown if re.search(r"train\s+success", line)]
    assert succeeded.endswith("shape-a")
    assert log.getvalue().count("ostaf-task-wall train") == 2


def test_a_local_run_of_two_items_runs_them_side_by_side_and_leaves_print_alone(tmp_path, monkeypatch, capsys):
    """Two world references on tiny: both branches start before either ends; task processes get a share of the
    cores; kfp's indenting `print` (swapped per task, put back out of order by two threads) does not outlive the
    run."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.chdir(tmp_path)
    original_print, root = builtins.print, logging.getLogger()
    handlers, level = root.handlers[:], root.level
    argv = ["run-local", "--source", "world", "--model", "tiny", "--no-segment", "--attributes", "shape"]
    argv += [
        "--per-attribute",
        "2",
        "--steps",
        "1",
        "--gen-num-steps",
        "1",
        "--gen-seeds",
        "0",
        "--gen-lam",
        "1",
        "--checkpoint-every",
        "0",
    ]
    assert run.main([*argv, "--pipeline-root", str(tmp_path / "kfp")]) == 0
    assert builtins.print is original_print and root.handlers == handlers and root.level == level
    out = capsys.readouterr().out
    assert re.search(r"^local benchmark run finished in \d+ s$", out, re.MULTILINE)  # not indented
    items = sorted({line.split()[-1] for line in out.splitlines() if line.lstrip().startswith("evaluate")})
    assert len(items) == 2 and all(item.startswith("shape-") for item in items)
    assert "OMP_NUM_THREADS" not in os.environ  # set for the run's task processes only
    (log,) = (tmp_path / "kfp" / "logs").glob("benchmark-*.log")
    threads = re.findall(r"ostaf-step-work train_item [\d.]+ s \(torch threads (\d+)\)", log.read_text())
    assert threads == [str(run.task_threads(run.LOCAL_PARALLELISM))] * 2  # each branch on its share of the cores
    events = [  # (started?, task) in the log's order
        (bool(STARTED.search(line)), (STARTED.search(line) or FINISHED.search(line))[1])
        for line in ANSI.sub("", log.read_text()).splitlines()
        if STARTED.search(line) or FINISHED.search(line)
    ]
    first_end = events.index((False, "evaluate"))
    assert events[:first_end].count((True, "preprocess")) == 2  # the second began before the first ended
