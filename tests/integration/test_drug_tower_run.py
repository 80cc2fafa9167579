"""`trixmed run` with the NLA-MMR drug tower on the bundled demo: every stage, the real stack."""

from __future__ import annotations

import json

import pytest

from demo_cli import check_new_patient, run_demo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_demo_runs_with_the_drug_tower_and_says_it_reads_titles_only(tmp_path, capsys):
    from safetensors.numpy import load_file

    run_dir = tmp_path / "run"
    proc = run_demo(run_dir, "model.head=drug_tower", "model.margin_weight=0.05")
    # the demo's raw MIMIC tables list no molecules
    assert "[warmup] drug tower: molecules for 0 of 106 drugs: the drug tower reads titles only" in proc.stdout.splitlines()
    weights = load_file(str(run_dir / "experts" / "model" / "model.safetensors"))
    assert weights["head.drug.2.weight"].shape == (256, 256) and weights["head.missing"].tolist() == [1.0] * 106
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert 0 < metrics["metrics"]["jaccard"]["mean"] <= 1
    # a new patient through the saved model: predict and explain read it back from the run
    check_new_patient(run_dir, tmp_path, capsys, 106)
