"""`prepare`: any of the four sources → the canonical `<run_dir>/dataset/` artifact.

    records = load_records(cfg.data)           # visits as code strings, vocab, DDI matrix
    visits["split"] = assign_split(...)        # safedrug | random | visit-random
    write_dataset(run_dir / "dataset", ...)    # atomic: a temp dir renamed into place

The artifact layout is the contract in `trixmed/data/dataset.py`.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pandas as pd

from trixmed.config import Config, DataConfig, to_dict
from trixmed.data.card import card_markdown, dataset_card
from trixmed.data.dataset import visit_key
from trixmed.data.drugs import drug_table, molecule_counts, write_drugs
from trixmed.data.records import Records
from trixmed.data.splits import assign_split
from trixmed.io import atomic_dir, atomic_file, write_json
from trixmed.run_dir import DRUGS_FILE, RunDir


def load_records(data: DataConfig) -> Records:
    """Read and process the configured source (no splitting, nothing written)."""
    if data.source in ("mimic3", "mimic4"):
        from trixmed.data.mimic import load_mimic

        return load_mimic(data.path, 3 if data.source == "mimic3" else 4, data.processing)
    if data.source == "benchmark":
        from trixmed.data.benchmark import load_benchmark

        return load_benchmark(data.path)
    from trixmed.data.pickles import load_safedrug_pickles

    return load_safedrug_pickles(data.path)


def prepare(cfg: Config) -> Path:
    """Build `<cfg.run_dir>/dataset/` from `cfg.data`; returns its path."""
    records = load_records(cfg.data)
    visits = records.visits.copy()
    visits["split"] = assign_split(visits, cfg.data.split)
    visits["visit_key"] = [visit_key(p, o) for p, o in zip(visits["patient_id"], visits["visit_order"])]
    card = dataset_card(visits, records.vocab, records.ddi, cfg.data.split.kind)
    card["source"] = cfg.data.source
    drugs = drug_table(records.vocab.med, records.smiles)
    card["molecules"] = molecule_counts(drugs)
    if records.upstream_split is not None and cfg.data.split.kind == "safedrug":
        # the benchmark's own split column must be the one we recompute
        card["upstream_split_agrees"] = bool((records.upstream_split.to_numpy() == visits["split"].to_numpy()).all())
    if records.log:
        card["processing"] = records.log
    title = Path(cfg.data.path).name if cfg.data.path else "bundled MIMIC-III demo"
    return write_dataset(RunDir(cfg.run_dir).dataset, visits, records, drugs, card, _meta(cfg), title)


def write_dataset(
    target: Path,
    visits: pd.DataFrame,
    records: Records,
    drugs: pd.DataFrame,
    card: dict,
    meta: dict,
    title: str,
) -> Path:
    """Write the artifact (atomically: a temp directory renamed into place)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    codes = pa.list_(pa.string())
    schema = pa.schema(
        [
            ("patient_id", pa.string()),
            ("visit_order", pa.int32()),
            ("visit_key", pa.string()),
            ("split", pa.string()),
            ("diag", codes),
            ("proc", codes),
            ("med", codes),
        ]
    )
    table = pa.table({name: visits[name].tolist() for name in schema.names}, schema=schema)
    with atomic_dir(target) as tmp:
        pq.write_table(table, tmp / "visits.parquet")
        write_json(tmp / "vocab.json", {"diag": records.vocab.diag, "proc": records.vocab.proc, "med": records.vocab.med})
        with atomic_file(tmp / "ddi.npz", "wb") as fh:
            np.savez(fh, ddi=records.ddi.astype(np.uint8))
        write_drugs(tmp / DRUGS_FILE, drugs)
        write_json(tmp / "card.json", card)
        with atomic_file(tmp / "card.md") as fh:
            fh.write(card_markdown(card, title))
        write_json(tmp / "meta.json", meta)
    return target


def _meta(cfg: Config) -> dict:
    import pyarrow

    import trixmed

    path = cfg.data.path
    return {
        "source": cfg.data.source,
        "input": str(Path(path).resolve()) if path else "bundled:mimic3_demo",
        "split": cfg.data.split.kind,
        "config": {"data": to_dict(cfg.data)},
        "versions": {
            "trixmed": trixmed.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "pyarrow": pyarrow.__version__,
        },
    }
