"""`trixmed explain`: one patient's triage explanation — cluster and distances to every centre,
expert weights, the cluster's profile, the most similar training patients, and each recommended
drug with its cluster and history shares and interactions. Text on stdout (or JSON).

Input: the same patient JSON as `trixmed predict` ({"visits": [{"diag", "proc", "med"}, ...]}).
"""

from __future__ import annotations

import argparse

from trixmed.commands.common import add_run_dir, load_run_config


def add_run_alias(parser: argparse.ArgumentParser) -> None:
    """`--run DIR` as another spelling of `--run-dir DIR` (explain and report)."""
    add_run_dir(parser, "a trained run directory (default: the config's run_dir)")
    parser.add_argument("--run", dest="run_dir", metavar="DIR", help="same as --run-dir")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_alias(parser)
    parser.add_argument("--patient", required=True, metavar="FILE", help="patient JSON file (as for `trixmed predict`)")
    parser.add_argument("--neighbours", type=int, default=5, metavar="K", help="similar training patients listed (default 5)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="what stdout gets (default text)")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write the JSON explanation here")


def main(args: argparse.Namespace) -> int:
    import json

    from trixmed.data.dataset import Dataset
    from trixmed.errors import TrixmedError
    from trixmed.eval.selection import read_choices
    from trixmed.io import write_json
    from trixmed.pipeline.predict import read_patient
    from trixmed.report.explain import explain_patient, format_explanation
    from trixmed.run_dir import RunDir

    if args.neighbours < 0:
        raise TrixmedError("--neighbours", f"must be >= 0, got {args.neighbours}")
    cfg = load_run_config(args)
    rd = RunDir(cfg.run_dir)
    choices = read_choices(rd.metrics, "explain")
    ds = Dataset(rd.dataset)
    sample = read_patient(args.patient, ds.vocab)
    result = explain_patient(cfg, rd, ds, sample, choices, neighbours=args.neighbours)
    if args.json_out:
        write_json(args.json_out, result)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.format == "json" else format_explanation(result))
    return 0
