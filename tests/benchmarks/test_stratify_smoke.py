"""benchmarks/stratify.py runs end to end with `--smoke` (tiny sizes, the same measurement code)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_smoke import run_smoke   # tests/benchmarks is on sys.path (pytest's default import mode)


@pytest.mark.timeout(300)
def test_stratify_smoke(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    report = run_smoke("stratify.py", out, timeout=240)
    a, b = report["results"]["in_memory"], report["results"]["streamed"]
    assert a["ratio_s_per_iteration"] > 0
    for side in ("distributed", "sklearn"):
        assert a[side]["s_per_iteration"] > 0 and a[side]["total_s"] > 0 and a[side]["peak_rss_gib"] > 0
    # the same initial centroids and the same algorithm: the same clustering
    assert a["inertia_rel_diff"] < 1e-6 and a["sklearn"]["adjusted_rand_vs_distributed"] > 0.99
    assert b["distributed"]["streaming_workers"] == 2
    assert b["distributed"]["total_s"] > 0 and b["distributed"]["peak_rss_gib"] > 0
    assert report["target"] == {"ratio_s_per_iteration": 1.2, "case": "in_memory", "streamed_peak_rss_gib": 2.0}
    assert "## (b) streamed from Parquet" in out.with_suffix(".md").read_text()
    c = report["results"]["extract"]   # (c) on the tiny run the smoke mode builds
    assert c["runs"] == 1 and c["plain_s"] == c["plain_runs_s"][0] and c["ray_data_s"] == c["ray_data_runs_s"][0]
    assert c["ratio"] == pytest.approx(c["plain_s"] / c["ray_data_s"], abs=0.01) and c["target_ratio"] == 0.8
    assert c["ray_data_samples_per_s"] == pytest.approx(c["samples"] / c["ray_data_s"], rel=0.01)
