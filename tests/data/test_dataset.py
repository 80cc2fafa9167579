"""Samples as every stage reads them: order, history, split filter, and shard slices."""

from __future__ import annotations

import numpy as np
import pytest

from trixmed.data.dataset import Dataset
from trixmed.testing import make_dataset_dir, make_tiny_dataset


def _visit(pid: str, order: int, split: str, diag: str, med: str) -> dict:
    return {"patient_id": pid, "visit_order": order, "visit_key": f"{pid}:{order}", "split": split,
            "diag": [diag], "proc": [], "med": [med]}


@pytest.fixture
def interleaved(tmp_path) -> Dataset:
    """Patient b appears first in the file; a's and b's rows interleave and come out of visit order."""
    rows = [_visit("b", 1, "val", "D1", "M1"), _visit("a", 2, "train", "D2", "M0"), _visit("b", 0, "val", "D0", "M0"),
            _visit("a", 0, "train", "D0", "M1"), _visit("c", 0, "test", "D2", "M1"), _visit("a", 1, "train", "D1", "M1")]
    vocab = {"diag": ["D0", "D1", "D2"], "proc": [], "med": ["M0", "M1"]}
    return Dataset(make_dataset_dir(tmp_path / "dataset", rows, vocab, np.zeros((2, 2), dtype=np.uint8)))


def test_samples_keep_patients_in_file_order_and_visits_in_visit_order(interleaved):
    samples = interleaved.samples()
    assert [s.visit_key for s in samples] == ["b:0", "b:1", "a:0", "a:1", "a:2", "c:0"]
    a2 = samples[4]
    assert [v.diag for v in a2.history] == [("D0",), ("D1",)] and a2.current.diag == ("D2",) and a2.target == ("M0",)
    assert [s.visit_key for s in interleaved.samples("val")] == ["b:0", "b:1"]
    assert [s.visit_key for s in interleaved.samples("test")] == ["c:0"]


def test_a_slice_of_rows_builds_exactly_those_samples(interleaved, tmp_path):
    everything = interleaved.samples()
    for start in range(len(everything) + 1):
        for stop in range(start, len(everything) + 3):
            assert interleaved.samples(rows=range(start, stop)) == everything[start:stop], (start, stop)
    tiny = Dataset(make_tiny_dataset(tmp_path / "tiny", patients=40))
    full = tiny.samples()
    assert sum((tiny.samples(rows=range(a, a + 7)) for a in range(0, len(full), 7)), []) == full
    assert [s for s in full if s.split == "train"] == tiny.samples("train")
