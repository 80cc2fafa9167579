"""benchmarks/accuracy.py end to end with `--smoke`: every model of the table (two baselines, the
TRIXMED ablations, the NLA-MMR drug tower, the FLAME editor, LAMO's drug groups, TRIXMED) through the product's commands on the demo,
rows in the issue's format, a kept job not re-run, and the Markdown table built from the rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = {"LR (per-drug logistic regression)", "MLP (2 layers)", "TRIXMED w/o MoE (one LoRA)",
          "Std. MoE (learned gate, no clusters)", "NLA-MMR drug tower (TRIXMED encoder)", "FLAME editor (TRIXMED point-wise)",
          "LAMO drug groups, ATC (TRIXMED encoder)", "LAMO drug groups, co-prescription (TRIXMED encoder)", "TRIXMED"}


def _smoke(out: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "benchmarks/accuracy.py", "--smoke", "--out", str(out), "--work-dir", str(work), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"accuracy.py --smoke exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert f"wrote {out}" in proc.stdout
    return proc


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_accuracy_smoke(tmp_path: Path) -> None:
    out, work = tmp_path / "accuracy.json", tmp_path / "work"
    first = _smoke(out, work)
    rows = json.loads(out.read_text())
    assert {r["model"] for r in rows} == MODELS
    assert len(rows) == 2 * len(MODELS) and {r["average"] for r in rows} == {"visit", "patient"}
    for r in rows:
        assert set(r) == {"dataset", "protocol", "model", "config", "seed", "selected_on", "metrics", "average"}
        assert r["selected_on"] == "val" and r["dataset"] == "mimic3_demo" and r["protocol"] == "safedrug"
        assert set(r["metrics"]) == {"jaccard", "f1", "prauc", "ddi_rate", "avg_drugs"}
        assert all(0 <= m["mean"] <= (60 if k == "avg_drugs" else 1) and m["std"] >= 0 for k, m in r["metrics"].items())
    by = {(r["model"], r["average"]): r for r in rows}
    # the ablations are the headline config with one router override each
    assert "model.moe.router=none" in by[("TRIXMED w/o MoE (one LoRA)", "visit")]["config"]
    assert "model.moe.router" not in by[("TRIXMED", "visit")]["config"]
    # the drug tower trains its own warm-up, in a run directory of its own
    tower = by[("NLA-MMR drug tower (TRIXMED encoder)", "visit")]["config"]
    assert "model.head=drug_tower model.margin_weight=0.05" in tower and "-drug-tower " in tower
    assert "model.head" not in by[("TRIXMED", "visit")]["config"]
    # the editor over TRIXMED's sets, in TRIXMED's own run directory (it changes no earlier stage)
    flame = by[("FLAME editor (TRIXMED point-wise)", "visit")]["config"]
    assert "editor.enabled=true" in flame
    assert flame.replace(" editor.enabled=true", "") == by[("TRIXMED", "visit")]["config"]
    # so do LAMO's drug groups, one run directory per grouping
    for by_what, tag in (("atc", "lamo-atc"), ("coprescription", "lamo-coprescription")):
        name = "ATC" if by_what == "atc" else "co-prescription"
        config = by[(f"LAMO drug groups, {name} (TRIXMED encoder)", "visit")]["config"]
        assert f"model.drug_groups.by={by_what} model.drug_groups.count=4" in config and f"-{tag} " in config
    assert "model.drug_groups" not in by[("TRIXMED", "visit")]["config"]
    run = json.loads((tmp_path / "accuracy_run.json").read_text())
    assert run["smoke"] is True and run["total_wall_s"] > 0 and len(run["attempts"]) == 1
    (editor,) = run["editor"]
    assert editor["edits_per_patient"] >= 0 and [c["alpha"] for c in editor["curve"]] == [0.0, 1.0]   # the row's α, then the swept one
    table = out.with_suffix(".md").read_text()
    j = by[("MLP (2 layers)", "visit")]["metrics"]["jaccard"]
    assert f"| MLP (2 layers) | {j['mean']:.4f} ± {j['std']:.4f} |" in table
    assert "## FLAME's list-wise editor over TRIXMED's point-wise sets (test)" in table
    assert "### Jaccard–DDI over α, mimic3_demo (test)" in table
    assert "trixmed.cli" in (work / "jobs").joinpath(next(p.name for p in (work / "jobs").glob("*TRIXMED.log"))).read_text()

    # a second invocation keeps every finished job: nothing is trained again
    second = _smoke(out, work)
    assert "[accuracy]" not in second.stdout and "[accuracy]" in first.stdout
    assert json.loads(out.read_text()) == rows
