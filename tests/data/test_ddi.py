from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trixmed.data.ddi import PAIRS_FILE, build_pairs, ddi_matrix, load_pairs, matrix_pairs


def test_matrix_from_pairs():
    m = ddi_matrix(["A01A", "N03A", "B01A", "X99X"], {("A01A", "N03A"), ("B01A", "Q00Q")})
    assert m.dtype == np.uint8 and (m == m.T).all()
    assert m.sum() == 2 and m[0, 1] == m[1, 0] == 1
    assert matrix_pairs(m, ["A01A", "N03A", "B01A", "X99X"]) == {("A01A", "N03A")}


@pytest.mark.mimic
def test_bundled_pairs_rebuild_and_cover_every_benchmark(shared_data, tmp_path):
    out = tmp_path / "pairs.csv"
    build_pairs(shared_data / "benchmark", out)
    assert out.read_text() == PAIRS_FILE.read_text()
    pairs = load_pairs()
    for folder in sorted((shared_data / "benchmark").iterdir()):
        codes = pd.read_csv(folder / "vocab_med.csv", dtype=str, keep_default_na=False)["atc3"].tolist()
        with np.load(folder / "graphs.npz") as z:
            published = z["ddi_A"]
        # the union contains every published pair (the versions disagree on a few, hence >=)
        assert (ddi_matrix(codes, pairs) >= published).all(), folder.name
