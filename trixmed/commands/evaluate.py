"""`trixmed evaluate`: score a predictions file against a prepared dataset, or a trained run.

    trixmed evaluate --dataset runs/demo/dataset --predictions preds.jsonl [--split test] [--out metrics.json]
    trixmed evaluate --config configs/demo_cpu.yaml [--run-dir runs/demo]      # the run's evaluate stage

Prints the metrics table and writes the same numbers as JSON (atomically). Bootstrap settings
come from the config's `eval` section (`eval.bootstrap_rounds=20` etc. as overrides).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trixmed.commands.common import add_force, add_run_dir, load_run_config, writing_run_dir
from trixmed.errors import TrixmedError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="a prepared dataset directory (visits.parquet, vocab.json, ddi.npz)")
    parser.add_argument("--predictions", help="predictions as JSON lines or Parquet (see docs/metrics.md); "
                        "without it, the run directory's trained model is evaluated (threshold on val, bootstrap on test)")
    add_run_dir(parser, "with no --predictions: the run directory (default: the config's run_dir)")
    add_force(parser, "with no --predictions: re-run even when up to date")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to score (default: test)")
    parser.add_argument("--out", help="metrics JSON to write (default: <predictions>.metrics.json beside the predictions file)")
    parser.add_argument("--missing-as-empty", action="store_true", help="score visits without a prediction as empty sets instead of failing")


def main(args: argparse.Namespace) -> int:
    from trixmed.data.dataset import Dataset
    from trixmed.eval.evaluate import evaluate_predictions, format_table
    from trixmed.io import write_json

    if args.predictions is None:
        return _evaluate_run(args)
    if args.dataset is None:
        raise TrixmedError("--dataset", "is required with --predictions")
    cfg = load_run_config(args)
    predictions = Path(args.predictions)
    out = Path(args.out) if args.out else predictions.with_name(predictions.name + ".metrics.json")
    result = evaluate_predictions(Dataset(args.dataset), predictions, args.split, cfg.eval, missing_as_empty=args.missing_as_empty)
    result["predictions"] = str(predictions)
    write_json(out, result)
    print(format_table(result))
    print(f"wrote {out}")
    return 0


def _evaluate_run(args: argparse.Namespace) -> int:
    from trixmed.console import Console
    from trixmed.eval.evaluate import format_table
    from trixmed.io import read_json
    from trixmed.pipeline.stages import run_stage
    from trixmed.run_dir import RunDir

    cfg = load_run_config(args)
    with writing_run_dir(args, cfg.run_dir):
        run_stage(cfg, "evaluate", force=args.force, console=Console(verbose=args.verbose))
    metrics = RunDir(cfg.run_dir).metrics
    print(format_table(read_json(metrics)))
    print(f"wrote {metrics}")
    return 0
