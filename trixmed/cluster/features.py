"""Feature shards: the `extract` stage's output and the stratification's input.

    features/shard-00000.parquet, shard-00001.parquet, ...   (sorted name = sample order)
        visit_key   string
        patient_id  string
        split       string (train | val | test)
        features    fixed_size_list<float32>[H]: the frozen warm-up model's mean-pooled last layer

Shards are written atomically one by one, so an interrupted extraction keeps every finished shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

SHARD_GLOB = "shard-*.parquet"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def write_feature_shard(path: str | Path, visit_keys: list[str], patient_ids: list[str], splits: list[str],
                        features: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trixmed.io import atomic_file

    x = np.ascontiguousarray(features, dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    table = pa.table({"visit_key": pa.array(visit_keys, pa.string()), "patient_id": pa.array(patient_ids, pa.string()),
                      "split": pa.array(splits, pa.string()), "features": column})
    with atomic_file(path, "wb") as fh:
        pq.write_table(table, fh)


def feature_dim(path: str | Path) -> int:
    """The feature width H of a shard, from its schema alone."""
    import pyarrow.parquet as pq

    return int(pq.read_schema(path).field("features").type.list_size)


def feature_shards(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob(SHARD_GLOB))


def read_feature_shard(path: str | Path, columns: tuple[str, ...] = ("visit_key", "patient_id", "split")) -> tuple[dict[str, list], np.ndarray]:
    """One shard: the key columns as lists and the features as float32 [N, H]."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[*columns, "features"])
    col = table.column("features").combine_chunks()
    x = col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    return {c: table.column(c).to_pylist() for c in columns}, x


def iter_feature_shards(directory: str | Path) -> Iterator[tuple[Path, dict[str, list], np.ndarray]]:
    for path in feature_shards(directory):
        keys, x = read_feature_shard(path)
        yield path, keys, x
