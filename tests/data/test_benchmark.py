"""The dataset card reproduces the statistics table of ../shared/data/README.md for every benchmark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trixmed.data.dataset import Dataset

# folder: patients, visits, (n_diag, n_proc, n_med), visits/patient mean (max), per-visit diag/proc/med,
#         paper-style avg diag/proc/med, paper-style max, DDI pairs, GT DDI rate all/test, test patients/visits
TABLE = {
    "mimic3_safedrug131": (6350, 15032, (1958, 1430, 131), (2.37, 29), (13.64, 4.54, 19.20), (10.51, 3.84, 11.44), (128, 50, 65), 448, (0.0875, 0.0815), (1058, 2264)),
    "mimic3_safedrug112": (6350, 15032, (1958, 1430, 112), (2.37, 29), (13.64, 4.54, 19.57), (10.51, 3.84, 11.65), (128, 50, 64), 337, (0.0826, 0.0758), (1058, 2264)),
    "mimic3_micron151": (6350, 15032, (1958, 1430, 151), (2.37, 29), (13.64, 4.54, 19.86), (10.51, 3.84, 11.87), (128, 50, 68), 467, (0.0816, 0.0750), (1058, 2264)),
    "mimic4_raremed122": (7568, 19452, (3972, 1338, 122), (2.57, 42), (13.39, 2.57, 11.63), (9.74, 2.19, 6.50), (254, 57, 59), 383, (0.0789, 0.0784), (1261, 3103)),
}


@pytest.mark.mimic
@pytest.mark.parametrize("name", sorted(TABLE))
def test_card_reproduces_readme_table(name, benchmark_dir, prepare_cli, tmp_path):
    src = benchmark_dir(name)
    rc, _, err = prepare_cli("--source", "benchmark", "--input", src, "--run-dir", tmp_path)
    assert rc == 0, err
    pats, visits, sizes, vpp, per_visit, paper, paper_max, pairs, rates, test = TABLE[name]
    ds = Dataset(tmp_path / "dataset")
    c = ds.card
    assert (c["patients"], c["visits"]) == (pats, visits)
    assert tuple(c["vocab_sizes"].values()) == sizes
    two_decimals = {"abs": 0.0051}  # the README prints two decimals (rounded from three)
    assert c["visits_per_patient"]["mean"] == pytest.approx(vpp[0], **two_decimals) and c["visits_per_patient"]["max"] == vpp[1]
    assert [c["per_visit_mean"][k] for k in ("diag", "proc", "med")] == pytest.approx(per_visit, **two_decimals)
    assert [c["paper_style"][k]["avg"] for k in ("diag", "proc", "med")] == pytest.approx(paper, **two_decimals)
    assert tuple(c["paper_style"][k]["max"] for k in ("diag", "proc", "med")) == paper_max
    assert c["ddi_pairs"] == pairs
    # four decimals in the README, rounded twice (0.087446 → 0.08745 → 0.0875)
    assert c["ddi_rate_ground_truth"]["all"] == pytest.approx(rates[0], abs=1e-4)
    assert c["ddi_rate_ground_truth"]["test"] == pytest.approx(rates[1], abs=1e-4)
    assert (c["splits"]["test"]["patients"], c["splits"]["test"]["visits"]) == test
    # our safedrug split is the benchmark's own split_safedrug column
    assert c["upstream_split_agrees"] is True
    upstream = pd.read_parquet(src / "records.parquet", columns=["split_safedrug"])["split_safedrug"]
    assert (ds.visits["split"].to_numpy() == upstream.to_numpy()).all()


@pytest.mark.mimic
def test_vocab_keeps_upstream_index_order(benchmark_dir, prepare_cli, tmp_path):
    src = benchmark_dir("mimic3_safedrug131")
    rc, _, err = prepare_cli("--source", "benchmark", "--input", src, "--run-dir", tmp_path)
    assert rc == 0, err
    ds = Dataset(tmp_path / "dataset")
    assert ds.vocab.med == pd.read_csv(src / "vocab_med.csv", dtype=str, keep_default_na=False)["atc3"].tolist()
    records = pd.read_parquet(src / "records.parquet")
    first = records.iloc[0]
    assert list(ds.visits.diag.iloc[0]) == [ds.vocab.diag[i] for i in first["diag"]]
    assert list(ds.visits.med.iloc[0]) == [ds.vocab.med[i] for i in first["med"]]
    assert ds.visits.patient_id.iloc[-1] == f"p{records.patient_idx.iloc[-1]}"
    with np.load(src / "graphs.npz") as z:
        assert (ds.ddi == z["ddi_A"]).all()
