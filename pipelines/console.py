"""What `run-local` shows: one line per task with its time, training progress, and a failed task's last lines.

The KFP local runner prints every task's executor input, its outputs and its whole log to stdout. `quiet_run`
sends all of that to a log file and writes a short summary to the terminal instead (`--verbose`: everything).
Item branches run side by side (`--parallelism`), each in a thread of the runner that relays its task's output, so
the summary keeps one lane per thread (its half-written line, its task's start, its last lines, its bar) and names
the branch's item on its lines.
"""

from __future__ import annotations

import io
import re
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([^']+)'")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
TASK_WALL_MARK = "ostaf-task-wall"  # `<mark> <task> <seconds> s` in the run's log, next to the steps' own times
PIPELINE = re.compile(r"Pipeline '([^']+)' finished with status (\w+)")
PROGRESS = re.compile(r"(ostaf \w+): +(\d+)%\|.*?\| *(\d+/\d+)")
RATE = re.compile(r"([\d.]+ ?(?:s/step|step/s))")
LOSS = re.compile(r"loss=([\d.]+)")
ITEM = re.compile(r'"item_id": "([^"]+)"')  # a branch task's executor input names its item
# noise of kfp 2.17's local runner that says nothing about this pipeline
QUIET_WARNINGS = (r".*non-Python base image.*", r".*have no effect in the current local runner.*")


@dataclass
class Lane:
    """What the summary holds for one runner thread: one item branch at a time (or the pipeline's own tasks)."""

    tail: int
    partial: str = ""
    started: dict[str, float] = field(default_factory=dict)
    recent: deque[str] = field(init=False)
    progress: tuple[str, int] | None = None  # the bar and quarter last shown (the bar repeats 100 %)
    item: str = ""  # the item of the branch this thread runs ("" outside a branch)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.tail)


class Summary(io.TextIOBase):
    """A stdout stand-in: every line goes to the log; task starts/ends, progress and failures to the terminal."""

    def __init__(self, log: TextIO, terminal: TextIO, tail: int = 15) -> None:
        self.log, self.terminal, self.tail = log, terminal, tail
        self.lanes: dict[int, Lane] = {}
        self.lock = threading.Lock()  # runner threads write at once; a line is parsed and shown whole

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.log.write(text)
            lane = self.lanes.setdefault(threading.get_ident(), Lane(self.tail))
            lines = (lane.partial + text.replace("\r", "\n")).split("\n")
            lane.partial = lines.pop()
            for line in lines:
                self.line(ANSI.sub("", line), lane)
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def say(self, text: str, lane: Lane | None = None) -> None:
        if lane is not None and lane.item:
            text = f"{text}  {lane.item}"
        self.terminal.write(text + "\n")
        self.terminal.flush()

    def line(self, line: str, lane: Lane) -> None:
        if line.strip():
            lane.recent.append(line.rstrip())
        if found := STARTED.search(line):
            lane.started[found[1]] = time.monotonic()
            lane.recent.clear()
        elif found := ITEM.search(line):
            lane.item = found[1]
        elif found := FINISHED.search(line):
            task, status = found[1], found[2]
            seconds = time.monotonic() - lane.started.pop(task, time.monotonic())
            self.log.write(f"{TASK_WALL_MARK} {task} {seconds:.3f} s\n")  # benchmarks/startup.py reads it
            self.say(f"  {task:<18} {status.lower():<8} {seconds:6.1f} s", lane)
            if status != "SUCCESS":
                self.say("    its last log lines:")
                for kept in list(lane.recent)[:-1]:
                    self.say(f"    | {kept.strip()[:400]}")
        elif found := PIPELINE.search(line):
            self.say(f"pipeline {found[1]}: {found[2].lower()}")
        elif (found := PROGRESS.search(line)) and self._new_quarter(lane, found[1], int(found[2])):
            rate, loss = RATE.search(line), LOSS.search(line)
            details = ", ".join(x for x in (rate and rate[1], loss and f"loss {loss[1]}") if x)
            self.say(f"    {found[1]} {found[2]:>3}% {found[3]:>9}  {details}", lane)

    @staticmethod
    def _new_quarter(lane: Lane, bar: str, percent: int) -> bool:
        """Progress is shown when a bar starts, passes a quarter and ends: five lines a run, not one a tick."""
        quarter = (bar, percent // 25)
        behind = lane.progress is not None and lane.progress[0] == bar and 0 < quarter[1] < lane.progress[1]
        if quarter == lane.progress or behind:  # a bar that starts over starts at 0 %
            return False
        lane.progress = quarter
        return True


@contextmanager
def quiet_run(log_path: Path, verbose: bool = False) -> Iterator[Path]:
    """Run a local pipeline with its full output in `log_path` and a summary (or everything) on the terminal."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as log:
        if verbose:
            yield log_path
            return
        summary = Summary(log, sys.stdout)
        with warnings.catch_warnings(), redirect_stdout(summary):
            for pattern in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield log_path
