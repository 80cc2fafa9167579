"""Parquet feature shards as K-means reads them: `visit_key`, `split` and `features` (a list of
floats, one width for all shards), checked before any K-means: the driver reads every shard's
schema; the workers' first pass checks every row (null, width, NaN/±inf), naming file, row and
visit_key. Each problem is a one-line `TrixmedError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trixmed.errors import TrixmedError

COLUMNS = ("visit_key", "split", "features")


def check_schemas(paths: Sequence[Path]) -> int:
    """Every shard exists and has the three columns; returns the feature width H."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not paths:
        raise TrixmedError("stratify", "no feature shards given")
    if len(set(paths)) != len(paths):
        raise TrixmedError(next(p for p in paths if paths.count(p) > 1), "listed twice among the feature shards")
    width = None
    for path in paths:
        if not path.is_file():
            raise TrixmedError(path, "feature shard not found")
        schema = pq.read_schema(path)
        missing = [c for c in COLUMNS if c not in schema.names]
        if missing:
            raise TrixmedError(path, f"missing column(s) {', '.join(missing)} (a feature shard has {', '.join(COLUMNS)})")
        kind = schema.field("features").type
        if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)) \
                or not pa.types.is_floating(kind.value_type):
            raise TrixmedError(path, f"column features must be a list of floats, got {kind}")
        if pa.types.is_fixed_size_list(kind):
            w = kind.list_size
        else:   # variable-size lists: the first row's length; workers check every row
            w = next((len(v) for b in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["features"])
                      for v in b.column("features").to_pylist() if v is not None), None)
        if w is not None and width is None:
            width, first = w, path
        elif w is not None and w != width:
            raise TrixmedError(path, f"features have width {w}, but {first.name} has {width}")
    if width is None:
        raise TrixmedError(paths[0], "no feature rows in any shard")
    return width


def features_block(batch: Any, path: str, row0: int, width: int, check: bool) -> np.ndarray:
    """The features column of a record batch as float64 [n, width]; with `check`, a one-line error
    for a null, a row of another width or a non-finite value (file and row named)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = batch.column("features")

    def bad(i: int, problem: str) -> TrixmedError:
        key = batch.column("visit_key")[i].as_py()
        return TrixmedError(path, f"row {row0 + i} (visit_key {key!r}): {problem}")

    if check and col.null_count:
        raise bad(int(np.flatnonzero(np.asarray(col.is_null()))[0]), "features is null")
    if check and not pa.types.is_fixed_size_list(col.type):
        lengths = np.asarray(pc.list_value_length(col))
        wrong = np.flatnonzero(lengths != width)
        if wrong.size:
            raise bad(int(wrong[0]), f"features have width {lengths[wrong[0]]}, expected {width}")
    x = np.asarray(col.flatten(), dtype=np.float64).reshape(len(col), width)
    if check:
        finite = np.isfinite(x)
        if not finite.all():
            i, j = np.argwhere(~finite)[0]
            raise bad(int(i), f"features[{j}] is {x[i, j]}, not a finite number")
    return x
