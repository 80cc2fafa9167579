"""benchmarks/gpu_check.py: `--smoke` on CPU, run from outside the repository with Ray, DeepSpeed
and gguf made unimportable (the bare GPU machine has none of them); without CUDA and without
--smoke it refuses in one line and writes nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
ABSENT = ("ray", "deepspeed", "gguf")


def _without_absent(tmp_path: Path) -> dict[str, str]:
    """An environment whose interpreter fails on any import of ABSENT (sys.modules[name] = None)."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(f"import sys\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n")
    return {**os.environ, "PYTHONPATH": str(guard)}


def _lora_params(arch: dict, rank: int) -> int:
    """One rank-`rank` LoRA on q, k, v, o, up, down of every layer: rank × (in + out) per linear."""
    h, i, hd = arch["hidden_size"], arch["intermediate_size"], arch["head_dim"]
    q, kv = arch["num_attention_heads"] * hd, arch["num_key_value_heads"] * hd
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i)
    return rank * per_layer * arch["num_hidden_layers"]


def test_gpu_check_smoke(tmp_path: Path) -> None:
    env = _without_absent(tmp_path)
    probe = subprocess.run([sys.executable, "-c", f"""
for name in {ABSENT!r}:
    try:
        __import__(name)
    except ImportError:
        print(name, "blocked")
"""], env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.split() == [w for name in ABSENT for w in (name, "blocked")], probe.stderr

    out = tmp_path / "results" / "gpu_check.json"
    # cwd outside the repository: the script must find trixmed and its configs from its own path
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"gpu_check.py --smoke exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["device"] == "CPU (smoke)"
    assert set(report["versions"]) >= {"torch", "transformers", "peft"} and report["machine"]["cpu"]
    setup, arch = report["setup"], report["architecture"]
    assert (setup["num_experts"], setup["top_n"], setup["lora_rank"], setup["gradient_checkpointing"]) == (8, 2, 8, True)
    assert set(report["variants"]) == {"moe", "one_lora"}
    one_lora = _lora_params(arch, setup["lora_rank"])
    for name, v in report["variants"].items():
        assert v["tokens_per_s"] > 0 and v["step_time_s_median"] > 0
        assert len(v["losses"]) == v["timed_steps"] == setup["timed_steps"]
        assert all(math.isfinite(x) for x in v["losses"])
        assert v["adapted_layers"] == 6 * arch["num_hidden_layers"]
        assert v["adapter_params"] == (setup["num_experts"] if name == "moe" else 1) * one_lora
    assert report["variants"]["moe"]["router"] == "triage" and report["variants"]["one_lora"]["router"] == "none"
    assert report["moe_over_one_lora"]["adapter_params"] == 8.0
    md = out.with_suffix(".md").read_text()
    assert "| MoE-LoRA (8 experts, top-2) |" in md and "| one LoRA (w/o MoE) |" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal path cannot run")
def test_without_cuda_refuses_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr
    assert not out.exists() and not out.with_suffix(".md").exists()
