"""What a person sees in the terminal: one line per stage start and end, one live progress bar per
training phase, one line per epoch, the final table. Library internals (Ray's, DeepSpeed's) go to
log files in the run directory instead (`trixmed.train.ray_session`); `--verbose` brings them back.

Lines go to stdout; the bar goes to stderr and is drawn only on a terminal, so a log file or a
SLURM job's output holds the lines alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Any


class Console:
    def __init__(self, *, verbose: bool = False, stream: IO[str] | None = None, bar_stream: IO[str] | None = None):
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.bar_stream = bar_stream or sys.stderr
        self._bar: Any = None

    def line(self, text: str) -> None:
        """One line, printed above a live progress bar when there is one."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def start_bar(self, desc: str, total: int, initial: int = 0) -> None:
        from tqdm.auto import tqdm

        self.close_bar()
        # disable=None: drawn only when bar_stream is a terminal
        self._bar = tqdm(total=total, initial=initial, desc=desc, file=self.bar_stream, dynamic_ncols=True,
                         mininterval=0.5, leave=False, disable=None)

    def advance_bar(self, position: int, **postfix: Any) -> None:
        """Move the bar to `position` (absolute: progress arrives in batches)."""
        if self._bar is None:
            return
        self._bar.update(max(0, position - self._bar.n))
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None



def redirect_output(path: Path) -> None:
    """Send this process's stdout and stderr (Python's and C++'s: DeepSpeed, gloo, torch warnings)
    to `path`. Ray's worker processes (training ranks, Tune trials) use it: the console shows what
    the driver reports, the details stay in the run's logs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
