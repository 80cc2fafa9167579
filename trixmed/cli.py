"""`trixmed` command line: one subcommand per pipeline stage.

Every subcommand takes `--config FILE` and dotted `key=value` overrides anywhere on the command
line, validates the config and its inputs before doing any work, and turns a `TrixmedError` into
one line on stderr and exit status 2. Command modules (trixmed/commands/) are imported lazily so
`trixmed --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from trixmed.errors import TrainingStopped, TrixmedError

# name → (module with `add_arguments(parser)` and `main(args) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("trixmed.commands.prepare", "raw MIMIC-III/IV CSVs, a processed benchmark or SafeDrug pickles → dataset/"),
    "warmup": ("trixmed.commands.stage", "phase 1: train the warm-up model on a seeded 30 %% of train → warmup/"),
    "extract": ("trixmed.commands.stage", "pooled hidden states of every training sample → features/"),
    "stratify": ("trixmed.commands.stage", "PCA + z-score + K-means → clusters/"),
    "experts": ("trixmed.commands.stage", "phase 3: train the cluster-routed MoE-LoRA experts → experts/"),
    "edit": ("trixmed.commands.stage", "FLAME's list-wise editor over the evaluated run's sets (editor.enabled) → editor/"),
    "evaluate": ("trixmed.commands.evaluate", "score a trained run (threshold on val, bootstrap on test) or any predictions file → table + JSON"),
    "baseline": ("trixmed.commands.baseline", "a multi-hot baseline (lr, mlp) trained and scored by the same harness → baselines/<name>/"),
    "transfer": ("trixmed.commands.transfer", "zero-shot: a trained run on this config's dataset (codes mapped by string) → transfer/<source>/"),
    "predict": ("trixmed.commands.predict", "a patient's visits as JSON → ranked medications, cluster and expert weights"),
    "explain": ("trixmed.commands.explain", "a patient → cluster, experts, similar training patients, cluster profile"),
    "report": ("trixmed.commands.report", "a run or a Tune experiment → HTML/Markdown report"),
    "tune": ("trixmed.commands.tune", "Ray Tune sweep of a search space (tune_spaces/*.yaml) over a run's warm-up → report + best config"),
    "run": ("trixmed.commands.run", "chain every stage over a run directory (skips stages already complete)"),
    "plan": ("trixmed.commands.plan", "can a config run on N nodes × G GPUs: world size, ZeRO, expert groups, memory per GPU"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trixmed",
        description="TRIXMED medication recommendation: triage-routed mixture of LoRA experts.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="YAML config (see configs/)")
        p.add_argument("--verbose", action="store_true", help="show Ray's, DeepSpeed's and the workers' own logs on the console")
        # a command's own positionals (tune's SPACE) come before the overrides, which take the rest
        importlib.import_module(module).add_arguments(p)
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted config overrides, anywhere on the line, e.g. model.moe.top_n=1")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Like `parse_args`, but `key=value` overrides may also follow flags (`--dry-run run_dir=X`):
    argparse stops filling a positional list at the first flag, so the rest arrive as extras."""
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, sys.argv[1:] if argv is None else argv)
    if not args.command:
        parser.print_help()
        return 0
    module, _ = COMMANDS[args.command]
    try:
        return int(importlib.import_module(module).main(args) or 0)
    except TrixmedError as exc:
        print(f"trixmed {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except TrainingStopped as exc:
        print(f"trixmed {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
