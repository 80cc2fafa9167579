"""Tiny raw-MIMIC folders built in tmp_path, and a CLI runner for `trixmed prepare`."""

from __future__ import annotations

import gzip
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from trixmed.cli import main as cli_main

# NDC → ATC-3 through the bundled mappings; A01A–N03A and A02B–N06A interact in the DDI pair list
NDC = {"A01A": "00009001201", "N03A": "00004005850", "B01A": "00002475977", "N06A": "00002323560", "A02B": "00006096328"}


def mimic3_tables() -> dict[str, pd.DataFrame]:
    """Patients 101 and 102 have two admissions each, 103 one (dropped by min_visits=2).

    Patient 101's admission 2002 comes before 2001 in time, so admittime and hadm_id orders differ.
    """
    adm = pd.DataFrame(
        [
            (101, 2001, "2101-06-01 10:00:00"),
            (101, 2002, "2100-01-01 08:00:00"),
            (102, 2003, "2150-03-03 12:00:00"),
            (102, 2004, "2150-09-09 12:00:00"),
            (103, 2005, "2120-01-01 00:00:00"),
        ],
        columns=["SUBJECT_ID", "HADM_ID", "ADMITTIME"],
    )
    diag = pd.DataFrame(
        [
            (101, 2001, 1, "4019"), (101, 2001, 2, "25000"),
            (101, 2002, 1, "V5861"),
            (102, 2003, 1, "4019"), (102, 2003, 2, "5849"),
            (102, 2004, 1, "4019"),
            (103, 2005, 1, "4019"),
        ],
        columns=["SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"],
    )
    proc = pd.DataFrame(
        [(101, 2001, 1, "3961"), (101, 2002, 1, "8856"), (102, 2003, 1, "3961"), (102, 2004, 1, "9604"), (103, 2005, 1, "3961")],
        columns=["SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"],
    )
    med = pd.DataFrame(
        [
            (101, 2001, 1, "2101-06-01 00:00:00", "drug a", NDC["A01A"]),
            (101, 2001, 1, "2101-06-02 00:00:00", "drug n", NDC["N03A"]),
            (101, 2002, 2, "2100-01-01 00:00:00", "drug b", NDC["B01A"]),
            (102, 2003, 3, "2150-03-03 00:00:00", "drug a2", NDC["A02B"]),
            (102, 2003, 3, "2150-03-03 00:00:00", "drug n6", NDC["N06A"]),
            (102, 2004, 4, "2150-09-09 00:00:00", "drug b", NDC["B01A"]),
            (102, 2004, 4, "2150-09-09 00:00:00", "zero", "0"),
            (103, 2005, 5, "2120-01-01 00:00:00", "drug b", NDC["B01A"]),
        ],
        columns=["SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "STARTDATE", "DRUG", "NDC"],
    )
    return {"ADMISSIONS": adm, "DIAGNOSES_ICD": diag, "PROCEDURES_ICD": proc, "PRESCRIPTIONS": med}


def mimic4_tables() -> dict[str, pd.DataFrame]:
    """The same patients in MIMIC-IV `hosp` shape; patient 102 mixes ICD-9 and ICD-10 codes."""
    t = mimic3_tables()
    for name in ("DIAGNOSES_ICD", "PROCEDURES_ICD"):
        df = t[name].rename(columns={"ICD9_CODE": "ICD_CODE"})
        df["ICD_VERSION"] = 9
        t[name] = df
    t["DIAGNOSES_ICD"].loc[t["DIAGNOSES_ICD"]["HADM_ID"] == 2004, ["ICD_CODE", "ICD_VERSION"]] = ["I10", 10]
    t["PRESCRIPTIONS"] = t["PRESCRIPTIONS"].drop(columns="ICUSTAY_ID").rename(columns={"STARTDATE": "STARTTIME"})
    return {k: v.rename(columns=str.lower) for k, v in t.items()}


def write_tables(folder: Path, tables: dict[str, pd.DataFrame], gz: bool = False, lower_names: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        fname = (name.lower() if lower_names else name) + ".csv"
        if gz:
            with gzip.open(folder / (fname + ".gz"), "wt", encoding="utf-8", newline="") as fh:
                df.to_csv(fh, index=False)
        else:
            df.to_csv(folder / fname, index=False)
    return folder


@pytest.fixture
def prepare_cli(capsys):
    """Run `trixmed prepare ARGS`; returns (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        rc = cli_main(["prepare", *map(str, args)])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


def tiny_benchmark(folder: Path) -> Path:
    """A processed-benchmark folder of the shared layout: 3 patients, 5 visits, 3/2/3 codes."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "patient_idx": np.array([0, 0, 1, 2, 2], dtype=np.int32),
            "visit_idx": np.array([0, 1, 0, 0, 1], dtype=np.int16),
            "diag": [[0, 1], [2], [0], [1, 2], [0]],
            "proc": [[0], [1], [0, 1], [1], [0]],
            "med": [[0, 1], [1, 2], [2], [0], [0, 2]],
            "split_safedrug": ["train", "train", "train", "test", "test"],
        }
    ).to_parquet(folder / "records.parquet")
    pd.DataFrame({"idx": range(3), "icd9_code": ["4019", "25000", "V5861"]}).to_csv(folder / "vocab_diag.csv", index=False)
    pd.DataFrame({"idx": range(2), "icd9_code": ["3961", "8856"]}).to_csv(folder / "vocab_proc.csv", index=False)
    pd.DataFrame({"idx": range(3), "atc3": ["N02B", "A01A", "N03A"], "atc_name": ["x", "y", "z"]}).to_csv(folder / "vocab_med.csv", index=False)
    ddi = np.zeros((3, 3), dtype=np.uint8)
    ddi[1, 2] = ddi[2, 1] = 1
    np.savez(folder / "graphs.npz", ddi_A=ddi)
    return folder


@pytest.fixture
def mimic():
    """The raw-table builders above, for tests (a fixture, so no test imports conftest)."""
    return SimpleNamespace(tables3=mimic3_tables, tables4=mimic4_tables, write=write_tables, ndc=NDC, benchmark=tiny_benchmark)
