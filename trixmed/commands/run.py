"""`trixmed run`: every stage in order over one run directory, skipping those already complete."""

from __future__ import annotations

import argparse

from trixmed.commands.common import add_force, add_run_dir, load_run_config, writing_run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config and print the plan (stages, world size, ZeRO stage, memory per device)")
    add_force(parser, "re-run every stage")
    parser.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with a local Ray and print its URL")


def main(args: argparse.Namespace) -> int:
    cfg = load_run_config(args)
    if args.dry_run:
        from trixmed.pipeline.plan import build_plan, format_plan

        print(format_plan(build_plan(cfg)))
        return 0

    import time

    from trixmed.console import Console
    from trixmed.eval.evaluate import format_table
    from trixmed.io import read_json
    from trixmed.pipeline.stages import run_pipeline
    from trixmed.run_dir import RunDir
    from trixmed.train.ray_session import dashboard_url, ray_session

    console = Console(verbose=args.verbose)
    t0 = time.perf_counter()
    with writing_run_dir(args, cfg.run_dir), ray_session(cfg, verbose=args.verbose, dashboard=args.dashboard):
        if args.dashboard:
            console.line(f"Ray dashboard: {dashboard_url() or 'not served by the connected Ray'}")
        results = run_pipeline(cfg, force=args.force, console=console)
    rd = RunDir(cfg.run_dir)
    print()
    print(format_table(read_json(rd.metrics)))
    print()
    if cfg.editor.enabled:
        print("FLAME editor over these sets, " + format_table(read_json(rd.editor / rd.metrics.name)))
        print()
    print("stages: " + ", ".join(f"{r.name} {r.status} ({r.wall_s:.1f} s)" for r in results)
          + f"; total {time.perf_counter() - t0:.1f} s")
    print(f"artifacts in {rd.root.resolve()}:")
    for path, what in ((rd.dataset, "visits, vocabulary, DDI matrix, dataset card"),
                       (rd.model("warmup"), "warm-up model (safetensors)"),
                       (rd.features, "pooled warm-up features (Parquet shards)"),
                       (rd.clusters, "PCA/z-score/centroids (safetensors), assignments, cluster profiles"),
                       (rd.model("experts"), "TRIXMED experts model (safetensors)"),
                       (rd.metrics, "test metrics, bootstrap, threshold chosen on validation"),
                       (rd.predictions("test"), "test predictions (`trixmed evaluate --predictions`)"),
                       *(((rd.editor, "FLAME editor: model, edited sets, their metrics (editor.enabled)"),)
                         if cfg.editor.enabled else ()),
                       (rd.tensorboard("warmup").parent, "TensorBoard event files"),
                       (rd.logs, "Ray's, DeepSpeed's and the workers' logs"),
                       (rd.run_file, "stage states and content hashes")):
        print(f"  {str(path.relative_to(rd.root)):<28} {what}")
    return 0
