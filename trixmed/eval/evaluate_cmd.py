"""`trixmed evaluate`: score a predictions file against a prepared dataset.

    trixmed evaluate --dataset runs/demo/dataset --predictions preds.jsonl [--split test] [--out metrics.json]

Prints the metrics table and writes the same numbers as JSON (atomically). Bootstrap settings
come from the config's `eval` section (`eval.bootstrap_rounds=20` etc. as overrides).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="a prepared dataset directory (visits.parquet, vocab.json, ddi.npz)")
    parser.add_argument("--predictions", required=True, help="predictions as JSON lines or Parquet (see docs/metrics.md)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to score (default: test)")
    parser.add_argument("--out", help="metrics JSON to write (default: <predictions>.metrics.json beside the predictions file)")
    parser.add_argument("--missing-as-empty", action="store_true", help="score visits without a prediction as empty sets instead of failing")


def main(args: argparse.Namespace) -> int:
    from trixmed.config import load_config
    from trixmed.data.dataset import Dataset
    from trixmed.eval.evaluate import evaluate_predictions, format_table
    from trixmed.io import write_json

    cfg = load_config(args.config, args.overrides)
    predictions = Path(args.predictions)
    out = Path(args.out) if args.out else predictions.with_name(predictions.name + ".metrics.json")
    result = evaluate_predictions(Dataset(args.dataset), predictions, args.split, cfg.eval, missing_as_empty=args.missing_as_empty)
    result["predictions"] = str(predictions)
    write_json(out, result)
    print(format_table(result))
    print(f"wrote {out}")
    return 0
