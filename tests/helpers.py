"""Test helpers shared across test folders (import as `from helpers import ...`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trixmed.data.dataset import VISIT_COLUMNS, visit_key
from trixmed.io import write_json


def make_dataset_dir(
    root: Path,
    visits: Sequence[Mapping[str, Any]] | pd.DataFrame,
    vocab: Mapping[str, Sequence[str]],
    ddi: np.ndarray | Sequence[Sequence[int]] | None = None,
    card: Mapping[str, Any] | None = None,
) -> Path:
    """Write a dataset directory following trixmed/data/dataset.py, without running `prepare`.

    `visits`: rows with patient_id, visit_order, split, diag, proc, med (visit_key is filled in
    when absent). Codes must be in `vocab` ({"diag": [...], "proc": [...], "med": [...]}).
    `ddi` defaults to no interactions. Returns `root` (created if needed).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(list(visits) if not isinstance(visits, pd.DataFrame) else visits).copy()
    df["patient_id"] = df["patient_id"].astype(str)
    df["visit_order"] = df["visit_order"].astype("int64")
    if "visit_key" not in df:
        df["visit_key"] = [visit_key(p, o) for p, o in zip(df["patient_id"], df["visit_order"])]
    for kind in ("diag", "proc", "med"):
        known = set(vocab[kind])
        df[kind] = [list(codes) for codes in df[kind]]
        bad = [c for codes in df[kind] for c in codes if c not in known]
        if bad:
            raise ValueError(f"{kind} code {bad[0]!r} is not in the vocab")
    df[list(VISIT_COLUMNS)].to_parquet(root / "visits.parquet", index=False)
    write_json(root / "vocab.json", {k: list(vocab[k]) for k in ("diag", "proc", "med")})
    n_med = len(vocab["med"])
    matrix = np.zeros((n_med, n_med), dtype=np.uint8) if ddi is None else np.asarray(ddi, dtype=np.uint8)
    if matrix.shape != (n_med, n_med):
        raise ValueError(f"ddi must be [{n_med}, {n_med}], got {matrix.shape}")
    np.savez(root / "ddi.npz", ddi=matrix)
    if card is not None:
        write_json(root / "card.json", dict(card))
    return root
