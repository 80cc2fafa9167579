"""Training progress from rank 0 to the driver's console, through a tiny Ray actor.

Workers' own output goes to log files (a forwarded tqdm bar breaks into runs of half-drawn bars,
and every rank would print its epoch line). Instead rank 0 pushes events — the phase's step count,
a throttled step position with the loss, one record per epoch, a few messages — and the driver
polls them and draws one bar per phase and one line per epoch.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from trixmed.console import Console


class ProgressRelay:
    """Event mailbox; run as a zero-CPU Ray actor (`ray.remote(num_cpus=0)(ProgressRelay)`)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def push(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def drain(self) -> list[dict[str, Any]]:
        out, self.events = self.events, []
        return out


class ProgressReporter:
    """Rank 0's side: fire-and-forget pushes, step positions at most every `interval` seconds
    (an actor call per optimizer step would cost more than a small model's step)."""

    def __init__(self, relay: Any, interval: float = 0.5):
        self.relay, self.interval = relay, interval
        self._last = 0.0

    def event(self, kind: str, **data: Any) -> None:
        if self.relay is not None:
            self.relay.push.remote({"kind": kind, **data})

    def step(self, position: int, **postfix: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.event("step", position=position, postfix=postfix)


class ProgressFollower:
    """The driver's side: a thread that drains the relay and draws on the console."""

    def __init__(self, relay: Any, console: Console, interval: float = 0.25):
        self.relay, self.console, self.interval = relay, console, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trixmed-progress", daemon=True)

    def __enter__(self) -> ProgressFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()   # what arrived after the last poll
        self.console.close_bar()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._drain()

    def _drain(self) -> None:
        import ray

        try:
            events = ray.get(self.relay.drain.remote())
        except ray.exceptions.RayError:
            return   # the relay went away with a failed run; the run's own error is what matters
        for e in events:
            self.render(e)

    def render(self, e: dict[str, Any]) -> None:
        kind = e["kind"]
        if kind == "phase":
            self.console.start_bar(e["phase"], total=e["total_steps"], initial=e["position"])
        elif kind == "step":
            self.console.advance_bar(e["position"], **e["postfix"])
        elif kind == "epoch":
            self.console.advance_bar(e["position"])
            self.console.line(e["text"])
        elif kind == "message":
            self.console.line(e["text"])
