"""benchmarks/report.py end to end with `--smoke`: a tiny run trained through the real pipeline,
then `trixmed report` and `trixmed explain` timed in fresh processes, coherence next to the paper's."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_smoke import run_smoke


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_report_smoke(tmp_path: Path) -> None:
    report = run_smoke("report.py", tmp_path / "report.json", timeout=540)
    assert 0 < report["report_wall_s"] and report["target_wall_s"] == 120
    assert report["within_target"] == (report["report_wall_s"] <= 120)
    assert report["explain_wall_s"] > 0 and report["tiny_run_train_s"] > 0
    c = report["coherence"]
    assert 0 <= c["between"] <= 1 and 0 <= c["within"] <= 1 and c["ratio"] == pytest.approx(c["within"] / c["between"], rel=0.02)
    assert c["training_visits"] == c["visits_sampled"] > 0 and -1 <= c["silhouette"] <= 1
    assert 0 < c["routing_sharpness_mean"] <= 1
    assert report["paper"]["ratio"] == 16.4
    assert set(report["report_timings_s"]) >= {"load_s", "coherence_s", "map_s", "render_s", "total_s"}
