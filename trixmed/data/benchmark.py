"""A processed benchmark folder (records.parquet + vocab_*.csv + graphs.npz, optionally
atc3_smiles.json) → visits.

Vocabulary order is the upstream index order (index i here == upstream idx i), patients keep
file order and are named `p{patient_idx}`; codes stay bare (the MIMIC-IV benchmark carries no
ICD version).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trixmed.data.dataset import Vocab
from trixmed.data.drugs import SMILES_FILE, read_smiles
from trixmed.data.records import Records, check_visits
from trixmed.errors import TrixmedError

_VOCAB_FILES = {"diag": "vocab_diag.csv", "proc": "vocab_proc.csv", "med": "vocab_med.csv"}
_CODE_COLUMNS = {"diag": ("icd9_code", "icd_code"), "proc": ("icd9_code", "icd_code"), "med": ("atc3",)}


def load_benchmark(folder: str | Path) -> Records:
    folder = Path(folder)
    if not folder.is_dir():
        raise TrixmedError(folder, "benchmark folder not found")
    vocab = Vocab(**{kind: _vocab(folder / name, kind) for kind, name in _VOCAB_FILES.items()})
    ddi = _ddi(folder / "graphs.npz", len(vocab.med))
    path = folder / "records.parquet"
    if not path.is_file():
        raise TrixmedError(path, "missing")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise TrixmedError(path, f"not a readable Parquet file: {exc}") from None
    missing = [c for c in ("patient_idx", "visit_idx", "diag", "proc", "med") if c not in df.columns]
    if missing:
        raise TrixmedError(path, f"missing column(s) {', '.join(missing)}")
    for col in ("patient_idx", "visit_idx"):
        if df[col].isna().any():
            raise TrixmedError(path, f"row {int(df[col].isna().to_numpy().argmax())}: field {col}: missing value")
    visits = pd.DataFrame(
        {
            "patient_id": "p" + df["patient_idx"].astype("int64").astype(str),
            "visit_order": df["visit_idx"].astype("int32"),
        }
    )
    for kind in ("diag", "proc", "med"):
        visits[kind] = _decode(df[kind], getattr(vocab, kind), path, kind)
    check_visits(visits, str(path))
    upstream = df["split_safedrug"].astype(str) if "split_safedrug" in df.columns else None
    smiles = read_smiles(folder / SMILES_FILE) if (folder / SMILES_FILE).is_file() else None
    return Records(visits=visits, vocab=vocab, ddi=ddi, upstream_split=upstream, smiles=smiles)


def _vocab(path: Path, kind: str) -> list[str]:
    if not path.is_file():
        raise TrixmedError(path, "missing")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    code_col = next((c for c in _CODE_COLUMNS[kind] if c in df.columns), None)
    if "idx" not in df.columns or code_col is None:
        raise TrixmedError(path, f"needs columns idx and {' or '.join(_CODE_COLUMNS[kind])}")
    idx = pd.to_numeric(df["idx"], errors="coerce")
    expected = np.arange(len(df))
    if idx.isna().any() or not np.array_equal(idx.to_numpy(), expected):
        row = int(np.argmax(idx.isna().to_numpy() | (idx.to_numpy() != expected))) + 2
        raise TrixmedError(path, f"row {row}: field idx: expected consecutive indices 0..{len(df) - 1}")
    codes = df[code_col].str.strip()
    if (codes == "").any():
        raise TrixmedError(path, f"row {int((codes == '').to_numpy().argmax()) + 2}: field {code_col}: empty code")
    if codes.duplicated().any():
        raise TrixmedError(path, f"row {int(codes.duplicated().to_numpy().argmax()) + 2}: field {code_col}: duplicate code")
    return codes.tolist()


def _ddi(path: Path, n_med: int) -> np.ndarray:
    if not path.is_file():
        raise TrixmedError(path, "missing")
    with np.load(path, allow_pickle=False) as z:
        if "ddi_A" not in z.files:
            raise TrixmedError(path, "no array ddi_A")
        ddi = z["ddi_A"]
    if ddi.shape != (n_med, n_med):
        raise TrixmedError(path, f"field ddi_A: shape {ddi.shape} does not match vocab_med.csv size {n_med}")
    return ((ddi + ddi.T) > 0).astype(np.uint8)


def _decode(column: pd.Series, codes: list[str], path: Path, kind: str) -> list[list[str]]:
    """Index lists → code lists; an index outside the vocabulary is a mismatched vocab file."""
    lengths = column.map(len).to_numpy()
    flat = np.concatenate([np.asarray(v, dtype=np.int64) for v in column]) if len(column) else np.zeros(0, np.int64)
    bad = (flat < 0) | (flat >= len(codes))
    if bad.any():
        row = int(np.searchsorted(np.cumsum(lengths), int(bad.argmax()), side="right"))
        raise TrixmedError(path, f"row {row}: field {kind}: index {flat[bad.argmax()]} outside vocab_{kind}.csv (size {len(codes)})")
    table = np.asarray(codes, dtype=object)[flat]
    return [list(x) for x in np.split(table, np.cumsum(lengths)[:-1])]
