"""The one exception type users see.

Every problem with user input (a config, a CSV row, a predictions file) is raised as
`TrixmedError` carrying a single line that names the file, the row or field and the problem.
The CLI prints that line and exits with status 2; nothing else is caught, so real bugs still
show a traceback.
"""

from __future__ import annotations

from pathlib import Path


class TrixmedError(Exception):
    """A user-facing, one-line error: `<where>: <problem>`."""

    exit_code = 2

    def __init__(self, where: str | Path | None, problem: str):
        self.where = str(where) if where is not None else None
        self.problem = " ".join(str(problem).split())  # force one line
        super().__init__(f"{self.where}: {self.problem}" if self.where else self.problem)

    def __reduce__(self) -> tuple[type, tuple[str | None, str]]:
        # a worker's error crosses to the driver pickled (Ray); the default would call __init__ with one argument
        return type(self), (self.where, self.problem)


class TrainingStopped(Exception):
    """A phase ended early because its run directory's stop request appeared (not an error): its
    checkpoint is kept, and running the same command again resumes it."""

    # EX_TEMPFAIL: the command stopped as asked and can be retried, which job.sh tells apart from a failure
    exit_code = 75
