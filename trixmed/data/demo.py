"""The bundled MIMIC-III demo (100 patients, ODbL): how `resources/mimic3_demo/` was built.

The public copy of the demo that we start from was re-written by its uploader, which turned
ADMISSIONS' timestamps into `m/d/yy H:MM`. Two-digit years cannot order visits (MIMIC's shifted
years run 2100–2210; one demo patient's admissions span "98" to "02"), so the builder restores
each timestamp's century from the same admission's ICU `INTIME` (full ISO dates) and writes
MIMIC's own `YYYY-MM-DD HH:MM:SS` form. All other content is copied unchanged, gzipped.

    python -m trixmed.data.demo --build /path/to/mimic3_demo
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

from trixmed.errors import TrixmedError
from trixmed.paths import resource_path

DEMO_DIR = resource_path("mimic3_demo")
TABLES = ("ADMISSIONS", "DIAGNOSES_ICD", "PROCEDURES_ICD", "PRESCRIPTIONS")
_TIME_COLUMNS = ("ADMITTIME", "DISCHTIME", "DEATHTIME", "EDREGTIME", "EDOUTTIME")


def build_demo(src: str | Path, out: str | Path = DEMO_DIR) -> None:
    """Copy the four tables (+ licence) from an unpacked demo folder into `out` as `.csv.gz`."""
    import pandas as pd

    src, out = Path(src), Path(out)
    adm = pd.read_csv(src / "ADMISSIONS.csv", dtype=str, keep_default_na=False)
    icu = pd.read_csv(src / "ICUSTAYS.csv", dtype=str, keep_default_na=False)
    ref_year = pd.to_datetime(icu["INTIME"]).groupby(icu["HADM_ID"]).min().dt.year
    for col in _TIME_COLUMNS:
        adm[col] = [_restore(v, ref_year.get(h), f"{src / 'ADMISSIONS.csv'}: {col}") for v, h in zip(adm[col], adm["HADM_ID"])]
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / "ADMISSIONS.csv.gz", "wt", encoding="utf-8", newline="") as fh:
        adm.to_csv(fh, index=False)
    for table in TABLES[1:]:
        with open(src / f"{table}.csv", "rb") as fin, gzip.open(out / f"{table}.csv.gz", "wb") as fout:
            shutil.copyfileobj(fin, fout)
    shutil.copyfile(src / "LICENSE.txt", out / "LICENSE.txt")


def _restore(value: str, year: int | None, where: str) -> str:
    from datetime import datetime

    if not value:
        return value
    if year is None:
        raise TrixmedError(where, f"no ICU stay to restore the century of {value!r}")
    t = datetime.strptime(value, "%m/%d/%y %H:%M")
    # the full year ≡ yy (mod 100) nearest to the ICU stay's year
    full = min((year // 100 * 100 + t.year % 100 + k for k in (-100, 0, 100)), key=lambda y: abs(y - year))
    return t.replace(year=full).strftime("%Y-%m-%d %H:%M:%S")


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trixmed.data.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", metavar="SRC", required=True, help="unpacked MIMIC-III demo folder (CSV)")
    args = parser.parse_args(argv)
    build_demo(args.build)
    print(f"wrote {', '.join(TABLES)} to {DEMO_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
