"""`trixmed report --run R`: a trained run as one self-contained HTML page plus Markdown (metrics,
training curves, patient map, cluster coherence, routing, per-cluster accuracy), the numbers as
JSON, and the cluster coherence metrics (<run>/report/coherence.json).

`trixmed report --tune EXP`: a `trixmed tune` experiment (<run>/tune/<space>/) as one page plus
Markdown (validation scores over the grid, every trial, learning curves), pointing to the best
configuration the sweep wrote for `trixmed run` (<experiment>/best.yaml)."""

from __future__ import annotations

import argparse
import contextlib

from trixmed.commands.common import load_run_config, writing_run_dir
from trixmed.commands.explain import add_run_alias


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_alias(parser)
    # default None, not 3000: so that --sample next to --tune is refused rather than ignored
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="training visits sampled (seeded) for the similarity matrix, silhouette and map (default 3000)")
    parser.add_argument("--tune", metavar="EXPERIMENT_DIR",
                        help="report a `trixmed tune` experiment (<run>/tune/<space>/) instead of a run: the sweep's "
                             "page, pointing to the best config the sweep wrote (best.yaml); takes no --run/--config/--sample/overrides")


def main(args: argparse.Namespace) -> int:
    from trixmed.console import Console
    from trixmed.errors import TrixmedError

    console = Console(verbose=args.verbose)
    if args.tune is not None:
        from trixmed.report.sweep_report import build_sweep_report
        from trixmed.run_dir import ExperimentDir

        run_side = [flag for flag, given in (("--run/--run-dir", args.run_dir), ("--config", args.config),
                                             ("--sample", args.sample is not None), ("key=value overrides", args.overrides))
                    if given]
        if run_side:
            raise TrixmedError("--tune", f"reports a sweep from its summary alone; {', '.join(run_side)} "
                                         "choose a run to report (use one or the other)")
        exp = ExperimentDir(args.tune)
        run = exp.run_dir   # the sweep's report is written inside the run directory it belongs to, if any
        with writing_run_dir(args, run.root) if run else contextlib.nullcontext():
            build_sweep_report(exp, console)
        return 0

    from trixmed.report.run_report import SAMPLE_VISITS, build_run_report
    from trixmed.run_dir import RunDir

    n = SAMPLE_VISITS if args.sample is None else args.sample
    if n < 2:
        raise TrixmedError("--sample", f"must be >= 2, got {n}")
    cfg = load_run_config(args)
    with writing_run_dir(args, cfg.run_dir):
        build_run_report(cfg, RunDir(cfg.run_dir), map_visits=n, similarity_visits=n, silhouette_visits=n,
                         console=console)
    return 0
