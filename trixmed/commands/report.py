"""`trixmed report --run R`: a trained run as one self-contained HTML page plus Markdown (metrics,
training curves, patient map, cluster coherence, routing, per-cluster accuracy), the numbers as
JSON, and the cluster coherence metrics (<run>/report/coherence.json)."""

from __future__ import annotations

import argparse

from trixmed.commands.common import load_run_config
from trixmed.commands.explain import add_run_alias


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_alias(parser)
    parser.add_argument("--sample", type=int, default=3000, metavar="N",
                        help="training visits sampled (seeded) for the similarity matrix, silhouette and map (default 3000)")


def main(args: argparse.Namespace) -> int:
    from trixmed.console import Console
    from trixmed.errors import TrixmedError
    from trixmed.report.run_report import build_run_report
    from trixmed.run_dir import RunDir

    if args.sample < 2:
        raise TrixmedError("--sample", f"must be >= 2, got {args.sample}")
    cfg = load_run_config(args)
    n = args.sample
    build_run_report(cfg, RunDir(cfg.run_dir), map_visits=n, similarity_visits=n, silhouette_visits=n,
                     console=Console(verbose=args.verbose))
    return 0
