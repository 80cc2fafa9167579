"""`trixmed warmup|extract|stratify|experts|edit`: run one pipeline stage over a run directory."""

from __future__ import annotations

import argparse

from trixmed.commands.common import add_force, add_run_dir, load_run_config, writing_run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir(parser)
    add_force(parser)


def main(args: argparse.Namespace) -> int:
    from trixmed.console import Console
    from trixmed.pipeline.stages import run_stage
    from trixmed.train.ray_session import ray_session

    cfg = load_run_config(args)
    console = Console(verbose=args.verbose)
    with writing_run_dir(args, cfg.run_dir), ray_session(cfg, verbose=args.verbose):
        result = run_stage(cfg, args.command, force=args.force, console=console)
    for key, value in result.summary.items():
        print(f"  {key}: {value}")
    return 0
