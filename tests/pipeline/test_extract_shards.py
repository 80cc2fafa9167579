"""How `extract` cuts the samples into shards (the Ray Data path itself: tests/integration/test_extract.py)."""

from __future__ import annotations

from trixmed.pipeline.extract import shard_ranges


def test_shards_are_equal_and_cover_every_sample_once():
    assert shard_ranges(15032, 4096) == [(0, 0, 3758), (1, 3758, 7516), (2, 7516, 11274), (3, 11274, 15032)]
    assert shard_ranges(32, 16) == [(0, 0, 16), (1, 16, 32)]
    assert shard_ranges(5, 16) == [(0, 0, 5)] and shard_ranges(0, 16) == []
    for n, size in ((1, 1), (17, 4), (100, 7), (4097, 4096)):
        ranges = shard_ranges(n, size)
        assert len(ranges) == -(-n // size) and all(0 < b - a <= size for _, a, b in ranges)
        assert [a for _, a, _ in ranges[1:]] == [b for _, _, b in ranges[:-1]] and ranges[-1][2] == n
