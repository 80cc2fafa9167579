"""Every benchmark script runs end to end with `--smoke` (tiny inputs, same measurement code),
so a change to the package that breaks a benchmark fails here instead of at the next full run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_smoke(script: str, out: Path, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} --smoke exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert f"wrote {out}" in proc.stdout
    report = json.loads(out.read_text())
    assert report["smoke"] is True
    return report


@pytest.mark.timeout(300)
def test_prepare_smoke(tmp_path: Path) -> None:
    out = tmp_path / "prepare.json"
    report = run_smoke("prepare.py", out, timeout=240)
    assert set(report["results"]) == {"mimic3_demo (raw CSVs, bundled)"}   # no shared data in smoke mode
    case = report["results"]["mimic3_demo (raw CSVs, bundled)"]
    assert len(case["runs"]) == 1
    assert case["wall_s_median"] > 0 and case["peak_rss_mib_max"] > 0
    assert all(r["wall_s"] > 0 and r["peak_rss_mib"] > 0 for r in case["runs"])
    assert report["target"]["case"] == "mimic3_safedrug131 (benchmark)"
    table = out.with_suffix(".md").read_text()
    assert "| mimic3_demo (raw CSVs, bundled) |" in table


@pytest.mark.timeout(300)
def test_model_smoke(tmp_path: Path) -> None:
    report = run_smoke("model.py", tmp_path / "model.json", timeout=240)
    summary = report["summary"]
    assert set(summary) == {"codes", "hf"}
    for backbone, s in summary.items():
        for key in ("plain_samples_per_s", "moe_samples_per_s", "moe_time_ratio",
                    "plain_step_memory_mb", "moe_step_memory_mb", "moe_step_memory_ratio"):
            assert s[key] > 0, (backbone, key, s[key])
        # the MoE adds experts: more trainable parameters and more step memory than one LoRA
        runs = report["runs"][backbone]
        assert runs["moe"]["trainable_params"] > runs["plain"]["trainable_params"]
        assert s["moe_step_memory_ratio"] > 1
    assert summary["codes"]["target_time_ratio"] == 1.3


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pipeline_smoke(tmp_path: Path) -> None:
    report = run_smoke("pipeline.py", tmp_path / "pipeline.json", timeout=540)
    assert report["config"] == "configs/demo_cpu.yaml"
    assert report["data"] == "bundled MIMIC-III demo"
    assert list(report["stages"]) == ["prepare", "warmup", "extract", "stratify", "experts", "evaluate"]
    assert all(s["status"] == "ran" for s in report["stages"].values())
    assert report["train_samples_per_s"]["warmup"] > 0 and report["train_samples_per_s"]["experts"] > 0
    assert report["plain_pytorch_samples_per_s"] > 0
    # kept beside it: the whole phase against the fastest of the plain loop's blocks after it
    blocks = report["plain_pytorch_blocks_samples_per_s"]
    assert len(blocks) == 3 and report["plain_pytorch_samples_per_s"] == max(blocks)
    assert report["phase_vs_fastest_plain_ratio"] == pytest.approx(
        report["train_samples_per_s"]["experts"] / report["plain_pytorch_samples_per_s"], rel=0.01)
    # the ratio that counts: an experts epoch on Ray + DeepSpeed beside a plain block, the median pair
    (pair,) = report["pairs"]
    assert pair["first"] == "ray" and pair["ray_samples_per_s"] > 0 and pair["plain_samples_per_s"] > 0
    assert pair["ratio"] == pytest.approx(pair["ray_samples_per_s"] / pair["plain_samples_per_s"], rel=0.01)
    assert report["distributed_overhead_ratio"] == pair["ratio"]
    assert report["peak_rss_gib"] > 0
    assert 0 <= report["test_metrics"]["jaccard"]["mean"] <= 1
    assert [e["epoch"] for e in report["histories"]["experts"]] == [1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_llm_features_smoke(tmp_path: Path) -> None:
    """benchmarks/llm.py's CPU figures on the demo: the real SmolLM2's frozen features and the codes
    warm-up's, on the same visits, stratified and scored alike."""
    out = tmp_path / "llm.json"
    report = run_smoke("llm.py", out, timeout=540)
    assert report["visits"] == 24 and report["mode"] == "cpu-features"
    e = report["extraction"]
    assert e["tokens_per_s"] > 0 and e["visits_per_s"] > 0 and 0 < e["mean_prompt_tokens"] <= 96
    llm, codes = report["coherence"]
    assert llm["features"].startswith("SmolLM2") and llm["dim"] == 576   # SmolLM2's hidden size
    assert codes["features"].startswith("codes") and codes["dim"] == 128  # configs/mimic3_codes.yaml's d_model
    for row in (llm, codes):
        assert sum(row["sizes"]) == 24 and len(row["sizes"]) == row["num_clusters"] == 2
        assert row["ratio"] > 0 and row["shuffled_ratio"] > 0 and "cluster 0:" in row["profiles"]
    table = out.with_suffix(".md").read_text()
    assert "## Cluster coherence" in table and table.count("| SmolLM2") == 1


def test_host_memory_smoke(tmp_path: Path) -> None:
    """benchmarks/host_memory.py with 2 loaders of SmolLM2 at once: the weights stored in the dtype
    they are loaded in are mapped from the file, one copy on the node (what `trixmed plan` counts);
    cast ones are a copy per process."""
    report = run_smoke("host_memory.py", tmp_path / "host_memory.json", timeout=240)
    mapped, cast = report["results"]["mapped"], report["results"]["cast"]
    assert mapped["processes"] == cast["processes"] == 2 and mapped["weights_mib"] == cast["weights_mib"] > 500
    assert mapped["file_backed_fraction"] == 1.0 and cast["file_backed_fraction"] == 0.0
    assert mapped["copies"] < 1.3 and cast["copies"] > 1.8
    assert mapped["anonymous_mib_per_process"] < 0.1 * mapped["weights_mib"] < cast["anonymous_mib_per_process"]
    assert (tmp_path / "host_memory.md").read_text().count("| mapped |") == 1


def test_rank_startup_smoke(tmp_path: Path) -> None:
    """benchmarks/rank_startup.py, one round: a rank with trixmed's Muon stand-ins reaches its first
    ZeRO-2 step without torch._inductor's compiler; one with DeepSpeed's own Muon modules loads it."""
    report = run_smoke("rank_startup.py", tmp_path / "rank_startup.json", timeout=240)
    stand_ins, muon = report["summary"]["stand_ins"], report["summary"]["deepspeed_muon"]
    assert not stand_ins["inductor_compiler_loaded"] and muon["inductor_compiler_loaded"]
    assert [len(r) for r in report["runs"].values()] == [1, 1]
    assert all(r["total_s"] > r["join_prepare_step_s"] > 0 for rs in report["runs"].values() for r in rs)
    assert report["saved_s_per_rank"] == round(muon["total_s_median"] - stand_ins["total_s_median"], 3)
    assert (tmp_path / "rank_startup.md").read_text().count("| stand_ins |") == 1


def test_train_startup_smoke(tmp_path: Path) -> None:
    """benchmarks/train_startup.py, one round: a Ray Train phase with trixmed's backend leaves torch
    out of Ray Train's controller; one with Ray's TorchConfig imports it there."""
    report = run_smoke("train_startup.py", tmp_path / "train_startup.json", timeout=240)
    ours, ray_torch = report["summary"]["trixmed_backend"], report["summary"]["torch_config"]
    assert not ours["controller_has_torch"] and ray_torch["controller_has_torch"]
    assert [len(r) for r in report["runs"].values()] == [1, 1]
    assert all(r["fit_s"] > r["controller_cpu_s"] > 0 for rs in report["runs"].values() for r in rs)
    assert report["fit_saved_s"] == round(ray_torch["fit_s_median"] - ours["fit_s_median"], 3)
    assert (tmp_path / "train_startup.md").read_text().count("| trixmed_backend |") == 1
