"""Reading raw EHR tables (MIMIC CSVs) strictly: every problem names the file, row and field.

Row numbers are file line numbers (the header is line 1), so `sed -n ROWp` shows the culprit.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import pandas as pd

from trixmed.errors import TrixmedError

_INT = re.compile(r"^\d+$")


def find_table(folder: Path, name: str) -> Path:
    """`NAME.csv` or `NAME.csv.gz` in `folder`, whatever the case of the file name."""
    wanted = {f"{name}.csv".lower(), f"{name}.csv.gz".lower()}
    hits = sorted(p for p in folder.iterdir() if p.name.lower() in wanted) if folder.is_dir() else []
    if not hits:
        raise TrixmedError(folder, f"table {name} not found (expected {name}.csv or {name}.csv.gz)")
    return hits[0]


def read_table(path: Path, required: Iterable[str], optional: Iterable[str] = ()) -> pd.DataFrame:
    """Read the named columns of a CSV (gz or not) as strings, headers upper-cased.

    Empty cells become NaN. The frame's index is the file line number of each row.
    """
    required, optional = [c.upper() for c in required], [c.upper() for c in optional]
    wanted = set(required) | set(optional)
    try:
        header = pd.read_csv(path, nrows=0, encoding="utf-8").columns
    except UnicodeDecodeError:
        _raise_encoding(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError) as exc:
        raise TrixmedError(path, f"not a readable CSV: {exc}") from None
    upper = [str(c).strip().upper() for c in header]
    missing = [c for c in required if c not in upper]
    if missing:
        raise TrixmedError(path, f"missing column(s) {', '.join(missing)} (found: {', '.join(upper)})")
    try:
        df = pd.read_csv(
            path,
            usecols=lambda c: str(c).strip().upper() in wanted,
            dtype=str,
            encoding="utf-8",
            keep_default_na=False,
            na_values=[""],
        )
    except UnicodeDecodeError:
        _raise_encoding(path)
    except (pd.errors.ParserError, OSError, EOFError) as exc:
        raise TrixmedError(path, f"not a readable CSV: {' '.join(str(exc).split())}") from None
    df.columns = [str(c).strip().upper() for c in df.columns]
    df.index = pd.RangeIndex(2, len(df) + 2)
    return df


def require_present(df: pd.DataFrame, path: Path, columns: Iterable[str]) -> None:
    """Fail on the first missing (NaN/empty) value in any of `columns`."""
    for col in columns:
        bad = df[col].isna()
        if bad.any():
            row = int(bad.idxmax())
            raise TrixmedError(path, f"row {row}: field {col}: missing value (NaN/empty)")


def require_int(df: pd.DataFrame, path: Path, columns: Iterable[str]) -> None:
    """Fail on the first non-integer identifier (after `require_present`); convert to int64 in place."""
    for col in columns:
        s = df[col].str.strip()
        bad = ~s.str.match(_INT)
        if bad.any():
            row = int(bad.idxmax())
            raise TrixmedError(path, f"row {row}: field {col}: not an integer id: {df[col][row]!r}")
        df[col] = s.astype("int64")


def require_pattern(df: pd.DataFrame, path: Path, column: str, pattern: re.Pattern[str], what: str) -> None:
    """Fail on the first non-missing value of `column` that does not match `pattern`."""
    s = df[column]
    bad = s.notna() & ~s.str.fullmatch(pattern).fillna(False).astype(bool)
    if bad.any():
        row = int(bad.idxmax())
        raise TrixmedError(path, f"row {row}: field {column}: unparseable {what}: {s[row]!r}")


def parse_times(df: pd.DataFrame, path: Path, column: str) -> pd.Series:
    """ISO timestamps (MIMIC's `YYYY-MM-DD HH:MM:SS`); NaN stays NaT, anything else fails."""
    s = df[column]
    out = pd.to_datetime(s, format="ISO8601", errors="coerce")
    bad = s.notna() & out.isna()
    if bad.any():
        row = int(bad.idxmax())
        raise TrixmedError(path, f"row {row}: field {column}: unparseable date {s[row]!r} (expected YYYY-MM-DD HH:MM:SS)")
    return out


def _raise_encoding(path: Path) -> NoReturn:
    """Locate the first non-UTF-8 byte by line, streaming so huge tables stay cheap."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TrixmedError(path, f"row {line_no}: not UTF-8 (byte {line[exc.start]:#04x} at column {exc.start + 1})") from None
    raise TrixmedError(path, "not UTF-8")
