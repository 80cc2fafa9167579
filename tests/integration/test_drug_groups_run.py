"""`trixmed run` with LAMO's drug-group adapters on the bundled demo: every stage, the real stack,
then predict, explain and the report reading the groups back from the run."""

from __future__ import annotations

import json

import pytest

from demo_cli import check_new_patient, run_demo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_demo_runs_with_atc_drug_groups(tmp_path, capsys):
    from safetensors.numpy import load_file

    from trixmed.cli import main
    from trixmed.cluster.drug_groups import atc_groups
    from trixmed.data.dataset import Dataset

    run_dir = tmp_path / "run"
    proc = run_demo(run_dir, "model.drug_groups.by=atc", "model.drug_groups.count=4")
    codes = Dataset(run_dir / "dataset").vocab.med
    expected = atc_groups(codes, 4)
    sizes = ", ".join(str((expected == g).sum()) for g in range(4))
    assert f"[warmup] drug groups: atc, 4 groups of {sizes} drugs" in proc.stdout.splitlines()
    for phase in ("warmup", "experts"):
        weights = load_file(str(run_dir / phase / "model" / "model.safetensors"))
        assert weights["drug_group"].tolist() == expected.tolist()
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert 0 < metrics["metrics"]["jaccard"]["mean"] <= 1
    # a new patient through the saved model: predict and explain read it back from the run
    check_new_patient(run_dir, tmp_path, capsys, len(codes))
    assert main(["report", "--run", str(run_dir)]) == 0
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert report["drug_groups"]["by"] == "atc"
    assert [len(g) for g in report["drug_groups"]["groups"]] == [int((expected == g).sum()) for g in range(4)]
    assert "Drug groups" in (run_dir / "report" / "report.html").read_text()
