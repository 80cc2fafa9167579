"""Raw MIMIC-III / MIMIC-IV tables → visits, the way SafeDrug/GAMENet built the standard benchmark.

Steps (each a `data.processing` key; docs/data.md walks through them):

1. PRESCRIPTIONS: drop NDC "0"; fill missing fields from the row above (`forward_fill`);
   drop rows still incomplete and duplicates; sort by subject, admission, ICU stay, start date;
   optionally keep only each admission's first start date (`first_day_meds`).
2. Patients with fewer than `min_visits` admissions in PRESCRIPTIONS are dropped.
3. NDC → RxCUI (SafeDrug's ndc2RXCUI table) → ATC level 4 (first row per RxCUI of GAMENet's
   ndc2atc_level4 table) → truncated to `atc_level`; unmapped rows are dropped.
4. The `top_med` most frequent ATC codes are kept (frequency = prescription rows).
5. DIAGNOSES_ICD: rows without a code dropped, duplicates dropped, `top_diag` most frequent kept.
6. PROCEDURES_ICD: ordered by SEQ_NUM, duplicates dropped, `top_proc` most frequent kept (0 = all).
7. Only admissions present in all three tables stay; each becomes one visit whose codes keep
   their first-appearance order. Visits are ordered by ADMITTIME (`visit_order`), patients by id.

MIMIC-IV differs only in names (lower-case `hosp` tables, `icd_code` + `icd_version`,
`starttime`, no ICU stay id) and in code strings: `icd9:4019` / `icd10:I10`, so the two ICD
versions never collide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from trixmed.config import ProcessingConfig
from trixmed.data.ddi import ddi_matrix
from trixmed.data.records import Records, vocab_in_order
from trixmed.data.tables import find_table, parse_times, read_table, require_int, require_pattern, require_present
from trixmed.errors import TrixmedError
from trixmed.paths import resource_path

DEMO_DIR = resource_path("mimic3_demo")
_ICD = re.compile(r"[0-9A-Za-z]{1,7}")
_NDC = re.compile(r"\d{1,11}")
_KEY = ["SUBJECT_ID", "HADM_ID"]


@dataclass(frozen=True)
class _Schema:
    version: int
    code: str               # ICD code column
    start: str              # prescription start column
    icustay: str | None     # ICU stay column (sort key), MIMIC-III only


_SCHEMAS = {
    3: _Schema(3, "ICD9_CODE", "STARTDATE", "ICUSTAY_ID"),
    4: _Schema(4, "ICD_CODE", "STARTTIME", None),
}


def load_mimic(folder: str | Path | None, version: int, processing: ProcessingConfig) -> Records:
    """Process a raw MIMIC-III (`version=3`) or MIMIC-IV `hosp` (`version=4`) folder."""
    folder = Path(folder) if folder is not None else DEMO_DIR
    if not folder.is_dir():
        raise TrixmedError(folder, "input folder not found")
    schema = _SCHEMAS[version]
    paths = {t: find_table(folder, t) for t in ("ADMISSIONS", "DIAGNOSES_ICD", "PROCEDURES_ICD", "PRESCRIPTIONS")}
    log: dict[str, int] = {}

    adm = _admissions(paths["ADMISSIONS"])
    med = _prescriptions(paths["PRESCRIPTIONS"], schema, processing, log)
    diag = _codes(paths["DIAGNOSES_ICD"], schema, with_seq=False, log=log, name="diag")
    proc = _codes(paths["PROCEDURES_ICD"], schema, with_seq=True, log=log, name="proc")
    for name, df in (("PRESCRIPTIONS", med), ("DIAGNOSES_ICD", diag), ("PROCEDURES_ICD", proc)):
        _check_admissions(df, adm, paths[name])

    med = _min_visits(med, processing.min_visits)
    log["patients_min_visits"] = int(med["SUBJECT_ID"].nunique())
    med = _to_atc(med, processing.atc_level)
    log["prescription_rows_atc"] = len(med)
    med = _most_frequent(med, processing.top_med)
    diag = _most_frequent(diag, processing.top_diag)
    proc = _most_frequent(proc, processing.top_proc)

    visits = _combine(med, diag, proc, adm, processing.visit_order)
    if visits.empty:
        raise TrixmedError(folder, "no visit survives processing (need admissions with diagnoses, procedures and mapped medications)")
    vocab = vocab_in_order(visits)
    return Records(visits=visits, vocab=vocab, ddi=ddi_matrix(vocab.med), log=log)


def _admissions(path: Path) -> pd.DataFrame:
    df = read_table(path, _KEY + ["ADMITTIME"])
    require_present(df, path, _KEY + ["ADMITTIME"])
    require_int(df, path, _KEY)
    df["ADMITTIME"] = parse_times(df, path, "ADMITTIME")
    dup = df.duplicated("HADM_ID", keep=False)
    if dup.any():
        rows = df.index[dup & (df["HADM_ID"] == df.loc[dup.idxmax(), "HADM_ID"])].tolist()
        raise TrixmedError(path, f"row {rows[1]}: field HADM_ID: duplicate admission {df.loc[rows[0], 'HADM_ID']} (also row {rows[0]})")
    return df


def _prescriptions(path: Path, schema: _Schema, p: ProcessingConfig, log: dict[str, int]) -> pd.DataFrame:
    cols = _KEY + ([schema.icustay] if schema.icustay else []) + [schema.start, "DRUG", "NDC"]
    df = read_table(path, cols)
    log["prescription_rows"] = len(df)
    require_present(df, path, _KEY)
    require_int(df, path, _KEY)
    require_pattern(df, path, "NDC", _NDC, "NDC code (expected up to 11 digits)")
    df = df[df["NDC"] != "0"]
    if p.forward_fill:
        df = df.ffill().dropna()
    else:
        # without SafeDrug's fill, a missing ICU stay (a ward prescription) is no reason to drop a row
        df = df.dropna(subset=[schema.start, "NDC"])
    if schema.icustay:
        require_pattern(df, path, schema.icustay, re.compile(r"\s*\d+\s*"), "ICU stay id (expected an integer)")
        df = df.assign(**{schema.icustay: pd.to_numeric(df[schema.icustay])})
    df = df.assign(STARTDATE=parse_times(df, path, schema.start))
    df = df.drop_duplicates()
    df = df.sort_values(_KEY + ([schema.icustay] if schema.icustay else []) + ["STARTDATE"], kind="stable")
    if p.first_day_meds:
        first = df.groupby(_KEY)["STARTDATE"].transform("min")
        df = df[df["STARTDATE"] == first]
    df = df[_KEY + ["STARTDATE", "DRUG", "NDC"]].drop_duplicates()
    log["prescription_rows_clean"] = len(df)
    return df


def _codes(path: Path, schema: _Schema, with_seq: bool, log: dict[str, int], name: str) -> pd.DataFrame:
    version_col = ["ICD_VERSION"] if schema.version == 4 else []
    seq = ["SEQ_NUM"] if with_seq else []
    df = read_table(path, _KEY + seq + [schema.code] + version_col)
    require_present(df, path, _KEY + seq + version_col)
    require_int(df, path, _KEY + seq)
    df[schema.code] = df[schema.code].str.strip()
    require_pattern(df, path, schema.code, _ICD, "ICD code (expected letters/digits without a dot)")
    if version_col:
        require_pattern(df, path, "ICD_VERSION", re.compile(r"\s*(9|10)\s*"), "ICD version (expected 9 or 10)")
    missing = df[schema.code].isna()
    log[f"{name}_rows_without_code"] = int(missing.sum())
    df = df[~missing]
    code = df[schema.code]
    if version_col:
        code = "icd" + df["ICD_VERSION"].str.strip() + ":" + code
    df = df.assign(CODE=code)[_KEY + seq + ["CODE"]].drop_duplicates()
    df = df.sort_values(_KEY + seq, kind="stable")
    return df[_KEY + ["CODE"]].drop_duplicates()


def _check_admissions(df: pd.DataFrame, adm: pd.DataFrame, path: Path) -> None:
    """Every row's admission exists in ADMISSIONS and belongs to the same patient."""
    owner = df["HADM_ID"].map(adm.set_index("HADM_ID")["SUBJECT_ID"])
    bad = owner.isna() | (owner != df["SUBJECT_ID"])
    if bad.any():
        row = int(bad.idxmax())
        h, s = df.loc[row, "HADM_ID"], df.loc[row, "SUBJECT_ID"]
        problem = "not in ADMISSIONS" if pd.isna(owner[row]) else f"belongs to SUBJECT_ID {int(owner[row])} in ADMISSIONS, not {s}"
        raise TrixmedError(path, f"row {row}: field HADM_ID: admission {h} {problem}")


def _min_visits(med: pd.DataFrame, min_visits: int) -> pd.DataFrame:
    n = med.groupby("SUBJECT_ID")["HADM_ID"].transform("nunique")
    return med[n >= min_visits]


def _to_atc(med: pd.DataFrame, level: int) -> pd.DataFrame:
    ndc = pd.read_csv(resource_path("mappings", "ndc2rxcui.csv"), dtype=str, keep_default_na=False)
    ndc = ndc[ndc["rxcui"].str.strip() != ""]
    atc = pd.read_parquet(resource_path("mappings", "ndc2atc_level4.parquet"), columns=["RXCUI", "ATC5"])
    # SafeDrug keeps the first ATC class listed for each RxCUI
    atc = atc.assign(RXCUI=atc["RXCUI"].str.strip()).drop_duplicates("RXCUI")
    rx = med["NDC"].map(dict(zip(ndc["ndc"], ndc["rxcui"].str.strip())))
    med = med.assign(RXCUI=rx).dropna(subset=["RXCUI"])
    med = med.merge(atc, on="RXCUI", how="inner")
    med = med.assign(CODE=med["ATC5"].str[: level + 1])
    return med[_KEY + ["STARTDATE", "DRUG", "CODE"]].drop_duplicates()


def _most_frequent(df: pd.DataFrame, top: int) -> pd.DataFrame:
    if top <= 0:
        return df
    counts = df.groupby("CODE").size().sort_values(ascending=False, kind="stable")
    return df[df["CODE"].isin(counts.index[:top])]


def _combine(med: pd.DataFrame, diag: pd.DataFrame, proc: pd.DataFrame, adm: pd.DataFrame, order: str) -> pd.DataFrame:
    keys = med[_KEY].drop_duplicates()
    for other in (diag, proc):
        keys = keys.merge(other[_KEY].drop_duplicates(), on=_KEY)
    out = keys
    for name, df in (("diag", diag), ("proc", proc), ("med", med)):
        codes = df.merge(keys, on=_KEY).groupby(_KEY, sort=False)["CODE"].unique().map(list).rename(name)
        out = out.merge(codes.reset_index(), on=_KEY)
    out = out.merge(adm[["HADM_ID", "ADMITTIME"]], on="HADM_ID")
    by = ["SUBJECT_ID", "ADMITTIME", "HADM_ID"] if order == "admittime" else _KEY
    out = out.sort_values(by, kind="stable").reset_index(drop=True)
    return pd.DataFrame(
        {
            "patient_id": out["SUBJECT_ID"].astype(str),
            "visit_order": out.groupby("SUBJECT_ID").cumcount().astype("int32"),
            "diag": out["diag"],
            "proc": out["proc"],
            "med": out["med"],
        }
    )
