"""Predictions files, reader and writer: any model's medication sets, scored by the same harness (docs/metrics.md).

JSON lines (.jsonl / .json / .ndjson), one object per visit:
    {"visit_key": "p17:2", "predicted": ["N02B", "A02B"], "probabilities": {"N02B": 0.93, "A02B": 0.71, "B01A": 0.2}}
Parquet (.parquet / .pq) with the same columns: visit_key string, predicted list<string>,
probabilities (optional) map<string, double> or list<struct<code: string, prob: double>>.

`probabilities` is optional, but given on every row or on none; ATC codes it leaves out score 0.
Only with it is PRAUC computed. Every problem is a `TrixmedError` naming the file, the line
(JSON lines, 1-based) or row (Parquet, 0-based as pandas shows it), the field and the problem.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trixmed.errors import TrixmedError

FIELDS = ("visit_key", "predicted", "probabilities")
PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass
class Predictions:
    """Predicted medication sets in vocabulary order, one row per visit key."""

    visit_keys: list[str]
    y_pred: np.ndarray                 # [N, n_med] bool
    y_prob: np.ndarray | None = None   # [N, n_med] float64 scores in [0, 1]
    source: str = "<predictions>"      # the file (or frame) they came from, for error messages
    rows: list[str] = field(default_factory=list)  # where each row came from, ditto

    def where(self, i: int) -> str:
        return self.rows[i] if self.rows else f"{self.source}: row {i}"


@dataclass(frozen=True)
class _Record:
    where: str
    visit_key: str
    predicted: list[str]
    probabilities: dict[str, float] | None


def read_predictions(path: str | Path, med_vocab: list[str]) -> Predictions:
    """Read and validate a predictions file against a medication vocabulary."""
    path = Path(path)
    if not path.is_file():
        raise TrixmedError(path, "predictions file not found")
    records = _read_parquet(path) if _is_parquet(path) else _read_jsonl(path)
    if not records:
        raise TrixmedError(path, "no predictions in the file")
    return _from_records(records, med_vocab, str(path))


def write_predictions(path: str | Path, visit_keys: list[str], probs: np.ndarray, med_vocab: list[str],
                      predicted: np.ndarray) -> None:
    """Write model scores as a JSON-lines predictions file (atomically): the decided sets
    (`predicted`, [N, n_med] bool) and every drug's probability, in the format `read_predictions`
    reads back."""
    from trixmed.io import atomic_file

    with atomic_file(path) as fh:
        for key, p, chosen in zip(visit_keys, probs, predicted):
            row = {
                "visit_key": key,
                "predicted": [med_vocab[j] for j in np.flatnonzero(chosen)],
                "probabilities": {med_vocab[j]: float(p[j]) for j in range(len(med_vocab))},
            }
            fh.write(json.dumps(row) + "\n")


def predictions_from_frame(df: Any, med_vocab: list[str], source: str = "<predictions>") -> Predictions:
    """The same validation for an in-memory DataFrame with the file's columns."""
    _check_columns(source, list(df.columns))
    records = [
        _record(f"{source}: row {i}", row.get("visit_key"), row.get("predicted"), row.get("probabilities"))
        for i, row in enumerate(df.to_dict("records"))
    ]
    if not records:
        raise TrixmedError(source, "no predictions")
    return _from_records(records, med_vocab, source)


def _from_records(records: list[_Record], med_vocab: list[str], source: str) -> Predictions:
    index = {c: i for i, c in enumerate(med_vocab)}
    with_probs = [r for r in records if r.probabilities is not None]
    if with_probs and len(with_probs) != len(records):
        lacking = next(r for r in records if r.probabilities is None)
        raise TrixmedError(lacking.where, f"field 'probabilities': missing here but given at {with_probs[0].where}; give it on every row or on none")
    y_pred = np.zeros((len(records), len(med_vocab)), dtype=bool)
    y_prob = np.zeros((len(records), len(med_vocab)), dtype=np.float64) if with_probs else None
    seen: dict[str, str] = {}
    for r_i, rec in enumerate(records):
        if rec.visit_key in seen:
            raise TrixmedError(rec.where, f"field 'visit_key': {rec.visit_key!r} repeats the key of {seen[rec.visit_key]}")
        seen[rec.visit_key] = rec.where
        for code in rec.predicted:
            if code not in index:
                raise TrixmedError(rec.where, f"field 'predicted': unknown ATC code {code!r} (not in the dataset's {len(index)}-code medication vocabulary)")
            y_pred[r_i, index[code]] = True
        if y_prob is not None and rec.probabilities is not None:
            for code, p in rec.probabilities.items():
                if code not in index:
                    raise TrixmedError(rec.where, f"field 'probabilities': unknown ATC code {code!r} (not in the dataset's {len(index)}-code medication vocabulary)")
                y_prob[r_i, index[code]] = p
    return Predictions([r.visit_key for r in records], y_pred, y_prob, source, [r.where for r in records])


# --------------------------------------------------------------------------------------------


def _is_parquet(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return True
    if suffix in JSONL_SUFFIXES:
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def _read_jsonl(path: Path) -> list[_Record]:
    out = []
    for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        where = f"{path}: line {n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TrixmedError(where, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrixmedError(where, f"not valid JSON: {exc.msg} at column {exc.colno}") from None
        if not isinstance(obj, dict):
            raise TrixmedError(where, f"expected a JSON object with {', '.join(FIELDS[:2])}, got {type(obj).__name__}")
        _check_columns(where, list(obj))
        out.append(_record(where, obj.get("visit_key"), obj.get("predicted"), obj.get("probabilities")))
    return out


def _read_parquet(path: Path) -> list[_Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise TrixmedError(path, f"not a readable Parquet file: {' '.join(str(exc).split())[:200]}") from None
    _check_columns(str(path), table.column_names)
    columns = {name: _column_values(path, table.column(name), name) for name in FIELDS if name in table.column_names}
    n = table.num_rows
    return [
        _record(f"{path}: row {i}", columns["visit_key"][i], columns["predicted"][i], columns["probabilities"][i] if "probabilities" in columns else None)
        for i in range(n)
    ]


def _column_values(path: Path, column: Any, name: str) -> list[Any]:
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        # find the offending row so the message can name it
        for i in range(len(column)):
            try:
                column[i].as_py()
            except UnicodeDecodeError:
                raise TrixmedError(f"{path}: row {i}", f"field {name!r}: not valid UTF-8") from None
        raise


def _check_columns(where: str, names: list[str]) -> None:
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise TrixmedError(where, f"unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)}; probabilities is optional)")
    for required in FIELDS[:2]:
        if required not in names:
            raise TrixmedError(where, f"field {required!r} is missing")


def _record(where: str, visit_key: Any, predicted: Any, probabilities: Any) -> _Record:
    if not isinstance(visit_key, str) or not visit_key:
        raise TrixmedError(where, f"field 'visit_key': expected a non-empty string, got {visit_key!r}")
    if isinstance(predicted, np.ndarray):
        predicted = predicted.tolist()
    if not isinstance(predicted, (list, tuple)):
        raise TrixmedError(where, f"field 'predicted': expected a list of ATC codes, got {_describe(predicted)}")
    for c in predicted:
        if not isinstance(c, str):
            raise TrixmedError(where, f"field 'predicted': expected ATC code strings, got {_describe(c)}")
    return _Record(where, visit_key, list(predicted), _probabilities(where, probabilities))


def _probabilities(where: str, value: Any) -> dict[str, float] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None  # absent (pandas fills a missing cell of an object column with NaN)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        items = value  # Parquet map<string, double>
    elif isinstance(value, list) and all(isinstance(v, dict) and set(v) == {"code", "prob"} for v in value):
        items = [(v["code"], v["prob"]) for v in value]  # Parquet list<struct<code, prob>>
    else:
        raise TrixmedError(where, f"field 'probabilities': expected a mapping ATC code → probability, got {_describe(value)}")
    out: dict[str, float] = {}
    for code, p in items:
        if not isinstance(code, str):
            raise TrixmedError(where, f"field 'probabilities': expected ATC code strings as keys, got {_describe(code)}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            raise TrixmedError(where, f"field 'probabilities': {code!r} has {_describe(p)}, expected a finite number in [0, 1]")
        if not 0.0 <= p <= 1.0:
            raise TrixmedError(where, f"field 'probabilities': {code!r} has {p}, expected a number in [0, 1]")
        out[code] = float(p)
    return out


def _describe(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"
