"""`trixmed prepare`: raw MIMIC-III/IV CSVs, a processed benchmark or SafeDrug pickles → dataset/."""

from __future__ import annotations

import argparse

from trixmed.commands.common import add_run_dir, load_run_config, writing_run_dir, yaml_quote

_FLAGS = {"source": "data.source", "input": "data.path", "split": "data.split.kind"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", choices=("mimic3", "mimic4", "benchmark", "safedrug-pickle"), help="= data.source")
    parser.add_argument("--input", metavar="PATH", help="= data.path (mimic3 without it: the bundled demo)")
    add_run_dir(parser, "= run_dir; the dataset goes to DIR/dataset")
    parser.add_argument("--split", choices=("safedrug", "random", "visit-random"), help="= data.split.kind")


def main(args: argparse.Namespace) -> int:
    from trixmed.data.prepare import prepare
    from trixmed.io import read_json

    flags = [f"{key}={yaml_quote(getattr(args, attr))}" for attr, key in _FLAGS.items() if getattr(args, attr) is not None]
    cfg = load_run_config(args, flags)
    with writing_run_dir(args, cfg.run_dir):
        out = prepare(cfg)
    card = read_json(out / "card.json")
    sizes = card["vocab_sizes"]
    print(
        f"trixmed prepare: {out}: {card['patients']} patients, {card['visits']} visits, "
        f"vocab {sizes['diag']}/{sizes['proc']}/{sizes['med']}, split {card['split']['kind']}"
    )
    return 0
