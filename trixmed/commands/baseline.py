"""`trixmed baseline lr|mlp --config C [key=value ...]`: a multi-hot baseline trained and scored by
the same harness as TRIXMED (threshold and α on validation, bootstrap on test) → baselines/<name>/."""

from __future__ import annotations

import argparse

from trixmed.commands.common import add_run_dir, load_run_config, writing_run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trixmed.baselines import BASELINES

    parser.add_argument("name", metavar="NAME", choices=BASELINES, help=f"baseline: {', '.join(BASELINES)}")
    add_run_dir(parser, "run directory whose prepared dataset is used (default: the config's run_dir)")


def main(args: argparse.Namespace) -> int:
    from trixmed.baselines.run import run_baseline
    from trixmed.console import Console
    from trixmed.eval.evaluate import format_table
    from trixmed.pipeline.stages import run_stage
    from trixmed.run_dir import RunDir

    cfg = load_run_config(args)
    console = Console(verbose=args.verbose)
    with writing_run_dir(args, cfg.run_dir):
        run_stage(cfg, "prepare", console=console)
        result = run_baseline(cfg, args.name, console)
    console.line(f"[baseline {args.name}] best epoch {result['best_epoch']} (on val), threshold {result['threshold']} "
                 f"(on {result['threshold_chosen_on']}), α {result['ddi_alpha']} (on {result['ddi_alpha_chosen_on']}) "
                 f"→ {RunDir(cfg.run_dir).baseline(args.name)}")
    print(format_table(result))
    return 0
