from __future__ import annotations

import numpy as np
import pytest

from trixmed.data.dataset import Dataset
from trixmed.io import read_json


def _visits(ds: Dataset) -> list[tuple]:
    v = ds.visits
    return [(p, int(o), list(d), list(pr), list(m)) for p, o, d, pr, m in zip(v.patient_id, v.visit_order, v.diag, v.proc, v.med)]


def test_bundled_demo(prepare_cli, tmp_path):
    rc, out, err = prepare_cli("--run-dir", tmp_path)
    assert rc == 0, err
    ds = Dataset(tmp_path / "dataset")
    assert (ds.card["patients"], ds.card["visits"]) == (13, 38)
    assert ds.vocab.sizes() == {"diag": 246, "proc": 58, "med": 82}
    assert ds.ddi.shape == (82, 82) and ds.ddi.dtype == np.uint8 and (ds.ddi == ds.ddi.T).all()
    assert len(ds.samples()) == 38 and all(len(m) == 4 for m in ds.vocab.med)
    assert read_json(tmp_path / "dataset" / "meta.json")["input"] == "bundled:mimic3_demo"
    card = (tmp_path / "dataset" / "card.md").read_text()
    assert "| patients | 13 |" in card
    # raw MIMIC lists no molecules: a drug tower on the demo reads titles only, and the card says so
    assert "| drug molecules (drug tower) | molecules for 0 of 82 drugs: the drug tower reads titles only |" in card
    # narratives are rendered where they are used (the hf collator), not stored by prepare
    assert not (tmp_path / "dataset" / "narratives.parquet").exists()


@pytest.mark.parametrize("gz,lower", [(False, False), (True, True)], ids=["csv-upper", "gz-lower"])
def test_mimic3_processing(prepare_cli, mimic, tmp_path, gz, lower):
    tables = mimic.tables3()
    if lower:
        tables = {k: v.rename(columns=str.lower) for k, v in tables.items()}
    src = mimic.write(tmp_path / "raw", tables, gz=gz, lower_names=lower)
    rc, _, err = prepare_cli("--input", src, "--run-dir", tmp_path / "run")
    assert rc == 0, err
    ds = Dataset(tmp_path / "run" / "dataset")
    # 103 has one admission; 101's admission 2002 precedes 2001 in time; NDC "0" is dropped
    assert _visits(ds) == [
        ("101", 0, ["V5861"], ["8856"], ["B01A"]),
        ("101", 1, ["4019", "25000"], ["3961"], ["A01A", "N03A"]),
        ("102", 0, ["4019", "5849"], ["3961"], ["A02B", "N06A"]),
        ("102", 1, ["4019"], ["9604"], ["B01A"]),
    ]
    assert ds.vocab.med == ["B01A", "A01A", "N03A", "A02B", "N06A"]
    assert ds.vocab.diag == ["V5861", "4019", "25000", "5849"]
    med = ds.vocab.index("med")
    assert ds.ddi[med["A01A"], med["N03A"]] == 1 and ds.ddi[med["A02B"], med["N06A"]] == 1
    assert ds.ddi[med["B01A"], med["B01A"]] == 0
    assert list(ds.visits.visit_key) == ["101:0", "101:1", "102:0", "102:1"]


def test_visit_order_hadm_id(prepare_cli, mimic, tmp_path):
    src = mimic.write(tmp_path / "raw", mimic.tables3())
    rc, _, err = prepare_cli("--input", src, "--run-dir", tmp_path, "data.processing.visit_order=hadm_id")
    assert rc == 0, err
    v = Dataset(tmp_path / "dataset").visits
    assert list(v.med[v.patient_id == "101"].map(list)) == [["A01A", "N03A"], ["B01A"]]


def test_filters_are_config_values(prepare_cli, mimic, tmp_path):
    src = mimic.write(tmp_path / "raw", mimic.tables3())
    rc, _, err = prepare_cli("--input", src, "--run-dir", tmp_path / "a", "data.processing.min_visits=1")
    assert rc == 0, err
    assert set(Dataset(tmp_path / "a" / "dataset").visits.patient_id) == {"101", "102", "103"}
    # B01A is the most prescribed class: keeping one class keeps only the visits that have it
    rc, _, err = prepare_cli("--input", src, "--run-dir", tmp_path / "b", "data.processing.top_med=1")
    assert rc == 0, err
    ds = Dataset(tmp_path / "b" / "dataset")
    assert ds.vocab.med == ["B01A"] and list(ds.visits.visit_key) == ["101:0", "102:0"]
    rc, _, err = prepare_cli("--input", src, "--run-dir", tmp_path / "c", "data.processing.first_day_meds=true")
    assert rc == 0, err
    v = Dataset(tmp_path / "c" / "dataset").visits
    assert list(v.med[v.visit_key == "101:1"].iloc[0]) == ["A01A"]
    rc, _, err = prepare_cli("--input", src, "--run-dir", tmp_path / "d", "data.processing.atc_level=4")
    assert rc == 0, err
    assert all(len(c) == 5 for c in Dataset(tmp_path / "d" / "dataset").vocab.med)


def test_forward_fill_as_safedrug(prepare_cli, mimic, tmp_path):
    tables = mimic.tables3()
    tables["PRESCRIPTIONS"].loc[3, "NDC"] = None  # 102/2003's A02B row loses its NDC
    src = mimic.write(tmp_path / "raw", tables)
    rc, _, err = prepare_cli("--input", src, "--run-dir", tmp_path / "ffill")
    assert rc == 0, err
    v = Dataset(tmp_path / "ffill" / "dataset").visits
    assert list(v.med[v.visit_key == "102:0"].iloc[0]) == ["B01A", "N06A"]  # the row above's NDC (B01A)

    med = tables["PRESCRIPTIONS"]
    med["ICUSTAY_ID"] = med["ICUSTAY_ID"].astype("Int64")
    med.loc[0, "ICUSTAY_ID"] = None  # a ward prescription
    src = mimic.write(tmp_path / "raw2", tables)
    rc, _, err = prepare_cli("--input", src, "--run-dir", tmp_path / "drop", "data.processing.forward_fill=false")
    assert rc == 0, err
    v = Dataset(tmp_path / "drop" / "dataset").visits
    assert list(v.med[v.visit_key == "102:0"].iloc[0]) == ["N06A"]
    # kept despite no ICU stay (and sorted after the rows that have one)
    assert list(v.med[v.visit_key == "101:1"].iloc[0]) == ["N03A", "A01A"]


def test_mimic4_keeps_icd_versions_apart(prepare_cli, mimic, tmp_path):
    src = mimic.write(tmp_path / "hosp", mimic.tables4(), gz=True, lower_names=True)
    rc, _, err = prepare_cli("--source", "mimic4", "--input", src, "--run-dir", tmp_path)
    assert rc == 0, err
    ds = Dataset(tmp_path / "dataset")
    assert ds.vocab.diag == ["icd9:V5861", "icd9:4019", "icd9:25000", "icd9:5849", "icd10:I10"]
    assert ds.vocab.proc == ["icd9:8856", "icd9:3961", "icd9:9604"]
    assert ds.card["patients"] == 2 and ds.card["visits"] == 4
