"""The canonical dataset artifact, as every later stage reads it.

    <run_dir>/dataset/
        visits.parquet   one row per visit: patient_id, visit_order, visit_key, split,
                         diag / proc / med (list<string> of codes, not indices)
        vocab.json       {"diag": [...], "proc": [...], "med": [...]}: list position = model index
        ddi.npz          "ddi": uint8 [n_med, n_med], symmetric, indexed by vocab["med"] order
        drugs.parquet    each medication's molecules, in vocab["med"] order (trixmed/data/drugs.py)
        card.json/.md    statistics (patients, visits, vocab sizes, DDI rates, molecules, ...)

A *sample* is one visit T of a patient: the earlier visits (diagnoses, procedures, medications)
plus the diagnoses and procedures of visit T; its target is the medication set of visit T.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from trixmed.errors import TrixmedError
from trixmed.io import read_json
from trixmed.run_dir import DRUGS_FILE

VISIT_COLUMNS = ("patient_id", "visit_order", "visit_key", "split", "diag", "proc", "med")
SPLITS = ("train", "val", "test")


def visit_key(patient_id: str, visit_order: int) -> str:
    """Stable identifier of one visit, used by predictions files and evaluation."""
    return f"{patient_id}:{int(visit_order)}"


@dataclass(frozen=True)
class Visit:
    diag: tuple[str, ...]
    proc: tuple[str, ...]
    med: tuple[str, ...]


@dataclass(frozen=True)
class Sample:
    visit_key: str
    patient_id: str
    split: str
    visits: tuple[Visit, ...]   # chronological; the last one is the current visit T

    @property
    def history(self) -> tuple[Visit, ...]:
        return self.visits[:-1]

    @property
    def current(self) -> Visit:
        return self.visits[-1]

    @property
    def target(self) -> tuple[str, ...]:
        return self.current.med


@dataclass
class Vocab:
    diag: list[str]
    proc: list[str]
    med: list[str]
    _index: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)

    def index(self, kind: str) -> dict[str, int]:
        if kind not in self._index:
            self._index[kind] = {c: i for i, c in enumerate(getattr(self, kind))}
        return self._index[kind]

    def sizes(self) -> dict[str, int]:
        return {"diag": len(self.diag), "proc": len(self.proc), "med": len(self.med)}


class Dataset:
    """A prepared dataset directory, loaded lazily."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for name in ("visits.parquet", "vocab.json", "ddi.npz"):
            if not (self.root / name).is_file():
                raise TrixmedError(self.root / name, "missing; run `trixmed prepare` first")

    @cached_property
    def visits(self) -> pd.DataFrame:
        return pd.read_parquet(self.root / "visits.parquet")

    @cached_property
    def vocab(self) -> Vocab:
        raw = read_json(self.root / "vocab.json")
        return Vocab(diag=list(raw["diag"]), proc=list(raw["proc"]), med=list(raw["med"]))

    @cached_property
    def ddi(self) -> np.ndarray:
        with np.load(self.root / "ddi.npz", allow_pickle=False) as z:
            return z["ddi"]

    @cached_property
    def drugs(self) -> pd.DataFrame:
        """Each medication's SMILES, in vocabulary order (read only by the drug tower)."""
        path = self.root / DRUGS_FILE
        if not path.is_file():
            raise TrixmedError(path, "missing; the drug tower needs it: run `trixmed prepare` again "
                               "(datasets prepared before drug tables have none)")
        return pd.read_parquet(path)

    @cached_property
    def card(self) -> dict:
        path = self.root / "card.json"
        return read_json(path) if path.is_file() else {}

    @cached_property
    def _ordered(self) -> pd.DataFrame:
        """Visits in sample order: patients as they first appear in the file (the benchmark splits
        assume it), each patient's visits by visit_order; `_first` is the row of the patient's first visit."""
        v = self.visits
        df = v.assign(_p=pd.factorize(v["patient_id"])[0]).sort_values(["_p", "visit_order"], kind="stable")
        df = df.reset_index(drop=True)
        p = df["_p"].to_numpy()
        starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]]) if len(p) else np.zeros(0, dtype=np.int64)
        return df.assign(_first=np.repeat(starts, np.diff(np.r_[starts, len(p)])))

    def samples(self, split: str | None = None, rows: range | None = None) -> list[Sample]:
        """Every visit of the chosen split as a sample (all splits when `split` is None), in sample
        order; `rows` keeps positions start..stop-1 of the all-splits order (an extraction shard),
        building only the visits they need."""
        df = self._ordered
        rows = range(len(df)) if rows is None else range(rows.start, min(rows.stop, len(df)))
        if not len(rows):
            return []
        first = df["_first"].to_numpy()
        lo = int(first[rows.start])   # the earliest visit a sample in `rows` looks back to
        part = df.iloc[lo:rows.stop]
        visits = [Visit(tuple(d), tuple(p), tuple(m)) for d, p, m in zip(part["diag"], part["proc"], part["med"])]
        keys, pids, splits = (part[c].astype(str).tolist() for c in ("visit_key", "patient_id", "split"))
        return [Sample(keys[i - lo], pids[i - lo], splits[i - lo], tuple(visits[first[i] - lo:i - lo + 1]))
                for i in rows if split is None or splits[i - lo] == split]

    def multi_hot(self, codes_per_row: list[tuple[str, ...]] | list[list[str]]) -> np.ndarray:
        """Medication sets → [N, n_med] 0/1 matrix in vocabulary order."""
        idx = self.vocab.index("med")
        out = np.zeros((len(codes_per_row), len(self.vocab.med)), dtype=np.float32)
        for r, codes in enumerate(codes_per_row):
            for c in codes:
                out[r, idx[c]] = 1.0
        return out
