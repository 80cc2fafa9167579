"""What every subcommand shares: `--run-dir`, `--force`, the config with its overrides, and the
run directory's lock for those that write into it."""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trixmed.config import Config


def add_run_dir(parser: argparse.ArgumentParser, help_text: str = "run directory (default: the config's run_dir)") -> None:
    parser.add_argument("--run-dir", metavar="DIR", help=help_text)


def add_force(parser: argparse.ArgumentParser, help_text: str = "run even when the stage is up to date") -> None:
    parser.add_argument("--force", action="store_true", help=help_text)


def load_run_config(args: argparse.Namespace, extra: list[str] | tuple[str, ...] = ()) -> Config:
    """`--config` + the command line's `key=value` overrides + `extra` + `--run-dir` (which wins)."""
    from trixmed.config import load_config

    overrides = [*args.overrides, *extra]
    if getattr(args, "run_dir", None):
        overrides.append(f"run_dir={yaml_quote(args.run_dir)}")
    return load_config(args.config, overrides)


def writing_run_dir(args: argparse.Namespace, run_dir: str | Path) -> AbstractContextManager[None]:
    """Hold `run_dir`'s lock for the block: one command at a time writes into a run directory
    (trixmed/run_lock.py). Commands that only read a run (plan, predict, explain) do not take it."""
    from trixmed.console import Console
    from trixmed.run_dir import RunDir
    from trixmed.run_lock import hold_run_dir

    return hold_run_dir(RunDir(run_dir), f"trixmed {args.command}", Console(verbose=args.verbose))


def yaml_quote(value: object) -> str:
    """Overrides are parsed as YAML: quote so that paths such as `yes` or `1e3` stay strings."""
    return "'" + str(value).replace("'", "''") + "'"
