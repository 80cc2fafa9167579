"""`trixmed run`: every stage in order over one run directory, skipping those already complete."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", help="run directory (default: the config's run_dir)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config and print the plan (stages, world size, ZeRO stage, memory per device)")
    parser.add_argument("--force", action="store_true", help="re-run every stage")
    parser.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (127.0.0.1:8265) with a local Ray")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trixmed.config import load_config
    from trixmed.io import read_json

    overrides = list(args.overrides) + ([f"run_dir={args.run_dir}"] if args.run_dir else [])
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        from trixmed.pipeline.plan import build_plan, format_plan

        print(format_plan(build_plan(cfg)))
        return 0

    import time

    from trixmed.eval.evaluate import format_table
    from trixmed.pipeline.stages import run_pipeline
    from trixmed.train.launch import ensure_ray, release_ray

    t0 = time.perf_counter()
    if args.dashboard:
        ensure_ray(cfg, dashboard=True)
    try:
        results = run_pipeline(cfg, force=args.force)
    finally:
        release_ray()
    root = Path(cfg.run_dir)
    print()
    print(format_table(read_json(root / "eval" / "metrics.json")))
    print()
    print(f"stages: " + ", ".join(f"{r.name} {r.status} ({r.wall_s:.1f} s)" for r in results)
          + f"; total {time.perf_counter() - t0:.1f} s")
    print(f"artifacts in {root.resolve()}:")
    for name, what in (("dataset", "visits, vocabulary, DDI matrix, dataset card"),
                       ("warmup/model", "warm-up model (safetensors)"),
                       ("features/features.parquet", "pooled warm-up features"),
                       ("clusters", "PCA/z-score/centroids (safetensors) and assignments"),
                       ("experts/model", "TRIXMED experts model (safetensors)"),
                       ("eval/metrics.json", "test metrics, bootstrap, threshold chosen on validation"),
                       ("eval/predictions_test.jsonl", "test predictions (`trixmed evaluate --predictions`)"),
                       ("tensorboard", "TensorBoard event files"),
                       ("run.json", "stage states and content hashes")):
        print(f"  {name:<28} {what}")
    return 0
