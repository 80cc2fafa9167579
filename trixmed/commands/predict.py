"""`trixmed predict`: a patient's visits as JSON → ranked medications, cluster, expert weights.

Input: {"visits": [{"diag": [...], "proc": [...], "med": [...]}, ...]}, oldest first; the last
visit is the one to prescribe for (its "med" is ignored). Codes are the dataset's code strings.
"""

from __future__ import annotations

import argparse

from trixmed.commands.common import add_run_dir, load_run_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir(parser, "a trained run directory (default: the config's run_dir)")
    parser.add_argument("--input", required=True, help="patient JSON file")
    parser.add_argument("--output", help="write the JSON result here (default: stdout)")
    parser.add_argument("--top", type=int, default=10, help="medications listed (default 10; 0 = all)")


def main(args: argparse.Namespace) -> int:
    import json

    from trixmed.data.dataset import Dataset
    from trixmed.eval.selection import read_choices
    from trixmed.io import atomic_file
    from trixmed.pipeline.predict import predict_patient, read_patient
    from trixmed.report.run_data import trained_config
    from trixmed.run_dir import RunDir

    cfg = load_run_config(args)
    rd = RunDir(cfg.run_dir)
    choices = read_choices(rd.metrics, "predict")
    cfg = trained_config(cfg, rd)   # collate as the run's models were trained (an hf run needs no --config)
    ds = Dataset(rd.dataset)
    sample = read_patient(args.input, ds.vocab)
    result = predict_patient(cfg, rd, sample, ds, choices)
    if args.top > 0:
        result["medications"] = result["medications"][: args.top]
    text = json.dumps(result, indent=2)
    if args.output:
        with atomic_file(args.output) as fh:
            fh.write(text + "\n")
    else:
        print(text)
    return 0
