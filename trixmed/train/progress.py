"""Training progress from rank 0 to the driver's console, through a JSON-lines file in the run
directory (`RunDir.progress(phase)`), which the trainer already shares with every worker.

Workers' own output goes to log files (a forwarded tqdm bar breaks into runs of half-drawn bars,
and every rank would print its epoch line). Instead rank 0 appends events — the phase's step
count, a throttled step position with the loss, one record per epoch, a few messages — and the
driver follows the file and draws one bar per phase and one line per epoch. A file costs no
extra Ray process, survives the run as a record, and a restarted worker group simply appends.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from trixmed.console import Console


class ProgressReporter:
    """Rank 0's side. Step positions at most every `interval` seconds; `path` None = silent (other ranks)."""

    def __init__(self, path: str | Path | None, interval: float = 0.5):
        self.path, self.interval = (Path(path) if path else None), interval
        self._last = float("-inf")   # the first step always shows

    def event(self, kind: str, **data: Any) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"kind": kind, **data}) + "\n")

    def step(self, position: int, **postfix: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.event("step", position=position, postfix=postfix)


class ProgressFollower:
    """The driver's side: a thread that follows the file from its current end and draws on the console."""

    def __init__(self, path: str | Path, console: Console, interval: float = 0.25):
        self.path, self.console, self.interval = Path(path), console, interval
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.path.stat().st_size if self.path.exists() else 0   # earlier runs' events are history
        self._partial = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trixmed-progress", daemon=True)

    def __enter__(self) -> ProgressFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._read()   # what arrived after the last poll
        self.console.close_bar()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def _read(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
            self._offset = fh.tell()
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()   # a line still being written
        for line in lines:
            if line.strip():
                self.render(json.loads(line))

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
