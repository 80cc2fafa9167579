"""What every subcommand shares: `--run-dir`, `--force`, and the config with its overrides."""

from __future__ import annotations

import argparse
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


def yaml_quote(value: object) -> str:
    """Overrides are parsed as YAML: quote so that paths such as `yes` or `1e3` stay strings."""
    return "'" + str(value).replace("'", "''") + "'"
