"""benchmarks/accuracy.py --merge: a later `--only` invocation's rows folded into the record of the
whole run, the files rewritten from it, no job run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _row(model: str, jaccard: float, average: str = "visit", dataset: str = "mimic3_safedrug131") -> dict:
    metrics = {k: {"mean": jaccard if k == "jaccard" else 0.5, "std": 0.01}
               for k in ("jaccard", "f1", "prauc", "ddi_rate", "avg_drugs")}
    return {"dataset": dataset, "protocol": "safedrug", "model": model, "config": "c", "seed": 42,
            "selected_on": "val", "metrics": metrics, "average": average}


def _record(rows: list[dict], only: list[str], wall: float) -> dict:
    return {"smoke": False, "machine": {"cpus": 2}, "work_dir": "/w", "only": only, "total_wall_s": wall,
            "this_invocation_s": 1.0, "rows": rows, "attempts": []}


def test_merge_replaces_a_models_rows_and_appends_new_models(tmp_path: Path) -> None:
    both = lambda model, j: [_row(model, j), _row(model, j, "patient")]   # noqa: E731
    out = tmp_path / "accuracy.json"
    (tmp_path / "accuracy_run.json").write_text(json.dumps(_record([*both("MLP (2 layers)", 0.53),
                                                                   *both("TRIXMED", 0.5446)], [], 3720.0)))
    later = tmp_path / "accuracy_related_run.json"
    later.write_text(json.dumps(_record([*both("TRIXMED", 0.5454), *both("LAMO drug groups, ATC (TRIXMED encoder)", 0.5444)],
                                        ["safedrug131__safedrug__(TRIXMED|LAMO.*)$"], 600.0)))
    proc = subprocess.run([sys.executable, "benchmarks/accuracy.py", "--merge", str(later), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["model"], r["average"], r["metrics"]["jaccard"]["mean"]) for r in rows] == [
        ("MLP (2 layers)", "visit", 0.53), ("MLP (2 layers)", "patient", 0.53),
        ("TRIXMED", "visit", 0.5454), ("TRIXMED", "patient", 0.5454),
        ("LAMO drug groups, ATC (TRIXMED encoder)", "visit", 0.5444),
        ("LAMO drug groups, ATC (TRIXMED encoder)", "patient", 0.5444)]
    record = json.loads((tmp_path / "accuracy_run.json").read_text())
    assert record["merged"] == [{"file": "accuracy_related_run.json", "only": ["safedrug131__safedrug__(TRIXMED|LAMO.*)$"],
                                 "total_wall_s": 600.0, "models": ["LAMO drug groups, ATC (TRIXMED encoder)", "TRIXMED"]}]
    md = (tmp_path / "accuracy.md").read_text()
    assert ("- LAMO drug groups, ATC (TRIXMED encoder), TRIXMED: `python benchmarks/accuracy.py --only "
            "'safedrug131__safedrug__(TRIXMED|LAMO.*)$'` (accuracy_related_run.json, 10.0 min of jobs)") in md
    assert "| TRIXMED | 0.5454 ± 0.0100 |" in md and "0.5446" not in md
    # merging the same file again changes nothing
    before = out.read_text(), md
    subprocess.run([sys.executable, "benchmarks/accuracy.py", "--merge", str(later), "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    assert (out.read_text(), (tmp_path / "accuracy.md").read_text()) == before


def test_merge_without_a_record_says_so(tmp_path: Path) -> None:
    later = tmp_path / "later_run.json"
    later.write_text(json.dumps(_record([], [], 1.0)))
    proc = subprocess.run([sys.executable, "benchmarks/accuracy.py", "--merge", str(later), "--out", str(tmp_path / "a.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"benchmarks/accuracy.py: --merge: {tmp_path / 'a_run.json'} not found "
                                                   "(run the jobs first)")
