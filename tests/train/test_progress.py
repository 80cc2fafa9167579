"""Rank 0's progress file and the driver's follower, without Ray."""

from __future__ import annotations

import io
import json

from trixmed.console import Console
from trixmed.train.progress import ProgressFollower, ProgressReporter


def test_follower_prints_each_epoch_line_once_and_ignores_earlier_runs(tmp_path):
    path = tmp_path / "logs" / "warmup-progress.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"kind": "message", "text": "from an earlier run"}) + "\n")
    out = io.StringIO()
    follower = ProgressFollower(path, Console(stream=out, bar_stream=io.StringIO()), interval=0.01)
    reporter = ProgressReporter(path, interval=0.0)
    with follower:
        reporter.event("phase", phase="warmup", total_steps=4, position=0)
        for step in range(1, 5):
            reporter.step(step, loss="0.5")
        reporter.event("epoch", position=4, text="[warmup] epoch 1/1: loss 0.5000")
        with open(path, "a", encoding="utf-8") as fh:   # a line caught half-written by a poll
            fh.write('{"kind": "message", "te')
        follower._read()
        with open(path, "a", encoding="utf-8") as fh:
            fh.write('xt": "[warmup] done"}\n')
    assert out.getvalue().splitlines() == ["[warmup] epoch 1/1: loss 0.5000", "[warmup] done"]


def test_other_ranks_report_nothing(tmp_path):
    ProgressReporter(None).event("epoch", position=1, text="x")
    ProgressReporter(None).step(1)
    assert list(tmp_path.iterdir()) == []


def test_steps_are_throttled(tmp_path):
    path = tmp_path / "p.jsonl"
    reporter = ProgressReporter(path, interval=3600)
    for step in range(100):
        reporter.step(step)
    assert len(path.read_text().splitlines()) == 1
