"""What every source yields before splitting: visits as code strings, vocabulary and DDI matrix."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trixmed.data.dataset import Vocab
from trixmed.errors import TrixmedError


@dataclass
class Records:
    # one row per visit, patients in file order, visits chronological:
    # patient_id str, visit_order int, diag/proc/med list[str]
    visits: pd.DataFrame
    vocab: Vocab
    ddi: np.ndarray
    # the split a benchmark folder ships (`split_safedrug`), aligned with `visits`, for cross-checks
    upstream_split: pd.Series | None = None
    # processing counts for the card (rows dropped per step, ...)
    log: dict = field(default_factory=dict)
    # ATC code → SMILES of its molecules, where the source lists them (trixmed/data/drugs.py)
    smiles: dict[str, list[str]] | None = None


def vocab_in_order(visits: pd.DataFrame) -> Vocab:
    """Codes in order of first appearance, as SafeDrug's `Voc.add_sentence` builds them."""
    out = {}
    for kind in ("diag", "proc", "med"):
        seen: dict[str, None] = {}
        for codes in visits[kind]:
            seen.update(dict.fromkeys(codes))
        out[kind] = list(seen)
    return Vocab(**out)


def check_visits(visits: pd.DataFrame, where: str, rows: pd.Index | None = None) -> None:
    """Every visit has at least one code of each kind, and no visit is listed twice."""
    rows = visits.index if rows is None else rows
    for kind in ("diag", "proc", "med"):
        empty = visits[kind].map(len).to_numpy() == 0
        if empty.any():
            i = int(np.argmax(empty))
            raise TrixmedError(where, f"row {rows[i]}: field {kind}: empty visit (patient {visits['patient_id'].iloc[i]}, visit {visits['visit_order'].iloc[i]})")
    dup = visits.duplicated(["patient_id", "visit_order"]).to_numpy()
    if dup.any():
        i = int(np.argmax(dup))
        raise TrixmedError(where, f"row {rows[i]}: duplicate visit {visits['visit_order'].iloc[i]} of patient {visits['patient_id'].iloc[i]}")
