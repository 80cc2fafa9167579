"""`trixmed transfer --from RUN_DIR --config C [key=value ...]`: a trained run applied without
fine-tuning to the test split of the config's dataset (prepared if needed), scored by that
dataset's harness with the source's validation-chosen threshold and α → transfer/<source>/."""

from __future__ import annotations

import argparse
from pathlib import Path

from trixmed.commands.common import add_run_dir, load_run_config, writing_run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", metavar="RUN_DIR", required=True,
                        help="a trained and evaluated run directory (its warm-up, clusters, experts and eval/)")
    add_run_dir(parser, "the target run directory whose dataset is scored (default: the config's run_dir)")


def main(args: argparse.Namespace) -> int:
    from trixmed.console import Console
    from trixmed.eval.evaluate import format_table
    from trixmed.pipeline.stages import run_stage
    from trixmed.pipeline.transfer import KINDS, transfer
    from trixmed.run_dir import RunDir

    cfg = load_run_config(args)
    console = Console(verbose=args.verbose)
    with writing_run_dir(args, cfg.run_dir):
        run_stage(cfg, "prepare", console=console)
        result = transfer(cfg, Path(args.source), console)
    cov = result["coverage"]
    print(format_table(result))
    for kind in KINDS:
        c = cov[kind]
        top = ", ".join(f"{code} ×{n}" for code, n in c["top_unseen"][:5])
        print(f"unseen {kind}: {c['unseen']} of {c['occurrences']} codes ({c['unseen_share']:.1%}, {c['unseen_codes']} distinct)"
              + (f"; most frequent: {top}" if top else ""))
    print(f"target medications the source cannot predict: {len(cov['target_medications_not_predictable'])}; "
          f"source medications the target lacks: {len(cov['source_medications_dropped'])}")
    console.line(f"[transfer] done → {RunDir(cfg.run_dir).transfer(Path(args.source).name)}")
    return 0
