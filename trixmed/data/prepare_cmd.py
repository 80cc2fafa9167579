"""`trixmed prepare`: raw MIMIC-III/IV CSVs, a processed benchmark or SafeDrug pickles → dataset/."""

from __future__ import annotations

import argparse

_FLAGS = {"source": "data.source", "input": "data.path", "run_dir": "run_dir", "split": "data.split.kind"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", choices=("mimic3", "mimic4", "benchmark", "safedrug-pickle"), help="= data.source")
    parser.add_argument("--input", metavar="PATH", help="= data.path (mimic3 without it: the bundled demo)")
    parser.add_argument("--run-dir", metavar="DIR", help="= run_dir; the dataset goes to DIR/dataset")
    parser.add_argument("--split", choices=("safedrug", "random", "visit-random"), help="= data.split.kind")


def main(args: argparse.Namespace) -> int:
    from trixmed.config import load_config
    from trixmed.data.prepare import prepare

    flags = [f"{key}={_quote(getattr(args, attr))}" for attr, key in _FLAGS.items() if getattr(args, attr) is not None]
    cfg = load_config(args.config, list(args.overrides) + flags)
    out = prepare(cfg)
    from trixmed.io import read_json

    card = read_json(out / "card.json")
    sizes = card["vocab_sizes"]
    print(
        f"trixmed prepare: {out}: {card['patients']} patients, {card['visits']} visits, "
        f"vocab {sizes['diag']}/{sizes['proc']}/{sizes['med']}, split {card['split']['kind']}"
    )
    return 0


def _quote(value: str) -> str:
    # overrides are parsed as YAML: quote so paths like `yes` or `1e3` stay strings
    return "'" + str(value).replace("'", "''") + "'"
