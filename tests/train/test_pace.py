"""A training phase says its measured pace once, after its first micro-batches, before the long wait."""

from __future__ import annotations

import pytest

from trixmed.train import trainer
from trixmed.train.trainer import Pace, format_duration


class Events:
    def __init__(self):
        self.lines: list[str] = []

    def event(self, kind: str, **data) -> None:
        assert kind == "message"
        self.lines.append(data["text"])


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: now[0])
    return now


def _feed(pace: Pace, clock: list[float], n: int, seconds: float, tokens: int) -> None:
    for _ in range(n):
        clock[0] += seconds
        pace.micro_batch(tokens)


def test_the_pace_is_said_once_from_the_timed_micro_batches(clock):
    events = Events()
    pace = Pace("warmup", remaining_micro_batches=100, world=2, device="cpu", progress=events)
    _feed(pace, clock, 3, 10.0, 500)          # the first is not timed: 2 of the 3 measured so far
    assert events.lines == []
    _feed(pace, clock, 5, 10.0, 500)
    # 3 timed micro-batches of 10 s and 500 tokens; 96 of 100 left
    assert events.lines == ["[warmup] measured 50 tokens/s per worker on 2 cpu worker(s): about 16 min of training left"]


def test_hours_on_a_cpu_point_to_the_gpu_path(clock):
    events = Events()
    pace = Pace("experts", remaining_micro_batches=2_000, world=1, device="cpu", progress=events)
    _feed(pace, clock, 4, 40.0, 16 * 1024)
    assert events.lines == ["[experts] measured 410 tokens/s per worker on 1 cpu worker(s): about 22 h 10 min of training "
                            "left  (a GPU cluster is the place for this run: docs/model.md)"]


def test_without_a_console_nothing_is_measured(clock):
    pace = Pace("warmup", remaining_micro_batches=10, world=2, device="cpu", progress=None)   # the codes backbone
    _feed(pace, clock, 10, 1.0, 0)
    assert pace.seen == 0


@pytest.mark.parametrize("seconds, text", [(40, "40 s"), (90, "2 min"), (3600, "1 h 00 min"), (7530, "2 h 05 min"), (-1, "0 s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
