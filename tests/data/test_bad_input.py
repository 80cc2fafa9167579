"""Every kind of bad input: exit status 2, one line naming file + row/field + problem, no dataset/."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture
def fails(prepare_cli, tmp_path):
    """Run prepare on `src` and check the failure contract; returns the error line."""

    def run(src, *extra: str, source: str = "mimic3") -> str:
        run_dir = tmp_path / "run"
        rc, out, err = prepare_cli("--source", source, "--input", src, "--run-dir", run_dir, *extra)
        assert rc == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("trixmed prepare: error: ")
        assert not (run_dir / "dataset").exists()
        if run_dir.exists():  # no temp leftovers either
            assert not any(run_dir.glob(".dataset*"))
        return lines[0]

    return run


def test_missing_column(mimic, tmp_path, fails):
    t = mimic.tables3()
    t["DIAGNOSES_ICD"] = t["DIAGNOSES_ICD"].drop(columns="ICD9_CODE")
    line = fails(mimic.write(tmp_path / "raw", t))
    assert "DIAGNOSES_ICD.csv: missing column(s) ICD9_CODE" in line


def test_unparseable_date(mimic, tmp_path, fails):
    t = mimic.tables3()
    t["ADMISSIONS"].loc[2, "ADMITTIME"] = "3/3/50 12:00"
    line = fails(mimic.write(tmp_path / "raw", t))
    assert "ADMISSIONS.csv: row 4: field ADMITTIME: unparseable date '3/3/50 12:00'" in line


def test_unparseable_code(mimic, tmp_path, fails):
    t = mimic.tables3()
    t["DIAGNOSES_ICD"].loc[1, "ICD9_CODE"] = "250.00"
    line = fails(mimic.write(tmp_path / "raw", t))
    assert "DIAGNOSES_ICD.csv: row 3: field ICD9_CODE: unparseable ICD code (expected letters/digits without a dot): '250.00'" in line


def test_unparseable_ndc(mimic, tmp_path, fails):
    t = mimic.tables3()
    t["PRESCRIPTIONS"].loc[4, "NDC"] = "0002-3235-60"
    line = fails(mimic.write(tmp_path / "raw", t))
    assert "PRESCRIPTIONS.csv: row 6: field NDC: unparseable NDC code" in line


def test_empty_visit(mimic, tmp_path, fails):
    src = mimic.benchmark(tmp_path / "bench")
    df = pd.read_parquet(src / "records.parquet")
    df.at[3, "med"] = []
    df.to_parquet(src / "records.parquet")
    line = fails(src, source="benchmark")
    assert "records.parquet: row 3: field med: empty visit (patient p2, visit 0)" in line


def test_duplicate_admission(mimic, tmp_path, fails):
    t = mimic.tables3()
    t["ADMISSIONS"] = pd.concat([t["ADMISSIONS"], t["ADMISSIONS"].iloc[[1]]], ignore_index=True)
    line = fails(mimic.write(tmp_path / "raw", t))
    assert "ADMISSIONS.csv: row 7: field HADM_ID: duplicate admission 2002 (also row 3)" in line


def test_admission_of_another_patient(mimic, tmp_path, fails):
    t = mimic.tables3()
    t["PROCEDURES_ICD"].loc[2, "SUBJECT_ID"] = 101
    line = fails(mimic.write(tmp_path / "raw", t))
    assert "PROCEDURES_ICD.csv: row 4: field HADM_ID: admission 2003 belongs to SUBJECT_ID 102" in line


def test_nan_identifier(mimic, tmp_path, fails):
    t = mimic.tables3()
    t["PRESCRIPTIONS"].loc[5, "HADM_ID"] = np.nan
    line = fails(mimic.write(tmp_path / "raw", t))
    assert "PRESCRIPTIONS.csv: row 7: field HADM_ID: missing value (NaN/empty)" in line


def test_nan_date(mimic, tmp_path, fails):
    t = mimic.tables3()
    t["ADMISSIONS"].loc[0, "ADMITTIME"] = None
    line = fails(mimic.write(tmp_path / "raw", t))
    assert "ADMISSIONS.csv: row 2: field ADMITTIME: missing value" in line


def test_non_utf8_bytes(mimic, tmp_path, fails):
    src = mimic.write(tmp_path / "raw", mimic.tables3())
    path = src / "PRESCRIPTIONS.csv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"drug b", b"drug \xe9")
    path.write_bytes(b"\n".join(lines))
    line = fails(src)
    assert "PRESCRIPTIONS.csv: row 4: not UTF-8 (byte 0xe9" in line


def test_benchmark_mismatched_vocab_size(mimic, tmp_path, fails):
    src = mimic.benchmark(tmp_path / "bench")
    np.savez(src / "graphs.npz", ddi_A=np.zeros((4, 4), dtype=np.uint8))
    line = fails(src, source="benchmark")
    assert "graphs.npz: field ddi_A: shape (4, 4) does not match vocab_med.csv size 3" in line


def test_benchmark_index_outside_vocab(mimic, tmp_path, fails):
    src = mimic.benchmark(tmp_path / "bench")
    pd.read_csv(src / "vocab_diag.csv").iloc[:2].to_csv(src / "vocab_diag.csv", index=False)
    line = fails(src, source="benchmark")
    assert "records.parquet: row 1: field diag: index 2 outside vocab_diag.csv (size 2)" in line


def test_missing_table(mimic, tmp_path, fails):
    src = mimic.write(tmp_path / "raw", mimic.tables3())
    (src / "PROCEDURES_ICD.csv").unlink()
    line = fails(src)
    assert "table PROCEDURES_ICD not found" in line


def test_missing_input_folder(tmp_path, fails):
    assert "input folder not found" in fails(tmp_path / "nowhere")


def test_failure_keeps_previous_dataset(mimic, prepare_cli, tmp_path):
    src = mimic.benchmark(tmp_path / "bench")
    rc, _, err = prepare_cli("--source", "benchmark", "--input", src, "--run-dir", tmp_path / "run")
    assert rc == 0, err
    before = (tmp_path / "run" / "dataset" / "visits.parquet").read_bytes()
    np.savez(src / "graphs.npz", ddi_A=np.zeros((4, 4), dtype=np.uint8))
    rc, _, _ = prepare_cli("--source", "benchmark", "--input", src, "--run-dir", tmp_path / "run")
    assert rc == 2
    assert (tmp_path / "run" / "dataset" / "visits.parquet").read_bytes() == before
