"""benchmarks/tune.py end to end with `--smoke`: a 2×2 sweep on the demo (one training epoch) through
`trixmed tune`'s code, and the overhead accounting checked against the summary it read."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_smoke import run_smoke


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tune_smoke(tmp_path: Path) -> None:
    out = tmp_path / "tune.json"
    report = run_smoke("tune.py", out, timeout=840)
    assert report["space"] == "tune_spaces/demo_2x2.yaml" and report["trials"] == 4
    assert sum(report["statuses"].values()) == 4 and report["statuses"]["error"] == 0
    assert report["sweep_wall_s"] > report["own_training_s"] > 0
    assert report["overhead_share"] == pytest.approx(
        (report["sweep_wall_s"] - report["own_training_s"]) / report["own_training_s"], rel=0.002)
    # every second of the sweep is own training, once-per-sweep overhead or per-trial overhead
    once, parts = report["overhead_once_s"], report["overhead_per_trial_s"]
    assert set(once) == {"clusterings", "tune_start_and_first_trial_process", "worker_group_starts",
                         "first_trial_start_up", "tune_wrap_up"}
    assert once["clusterings"] > 0 and once["worker_group_starts"] > 0   # trainer `workers`: one group
    per_trial = report["sweep_wall_s"] - report["own_training_s"] - sum(once.values())
    assert parts["all"] == pytest.approx(per_trial / 4, abs=0.02)
    assert report["per_trial_overhead_share"] == pytest.approx(per_trial / report["own_training_s"], abs=0.002)
    assert report["per_trial_overhead_share"] < report["overhead_share"]
    assert parts["trainer_setup_reports_export"] > 0 and parts["validation_scoring"] >= 0
    assert report["trials_per_min"] == pytest.approx(60 * 4 / report["sweep_wall_s"], rel=0.01)
    assert report["targets"]["overhead_share_max"] == 0.3 and report["best"]["scores"]["jaccard"] > 0
    assert len(report["per_trial"]) == 4 and all(t["own_training_s"] > 0 for t in report["per_trial"])
    assert f"| sweep wall time | {report['sweep_wall_s']:.1f} s |" in out.with_suffix(".md").read_text()
