"""`trixmed warmup|extract|stratify|experts`: run one pipeline stage over a run directory."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", help="run directory (default: the config's run_dir)")
    parser.add_argument("--force", action="store_true", help="run even when the stage is up to date")


def main(args: argparse.Namespace) -> int:
    from trixmed.config import load_config
    from trixmed.pipeline.stages import run_stage
    from trixmed.train.launch import release_ray

    overrides = list(args.overrides) + ([f"run_dir={args.run_dir}"] if args.run_dir else [])
    cfg = load_config(args.config, overrides)
    try:
        result = run_stage(cfg, args.command, force=args.force)
    finally:
        release_ray()
    for key, value in result.summary.items():
        print(f"  {key}: {value}")
    return 0
