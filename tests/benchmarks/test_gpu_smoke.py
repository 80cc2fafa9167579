"""benchmarks/gpu.py: without CUDA it measures nothing and writes nothing; --smoke runs the same
path (random-weight Llama → experts phase on Ray Train + DeepSpeed ZeRO-3, bf16, checkpointing)
with the tiny Llama on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _expected_world_size() -> int:
    """One training worker per GPU, two CPU workers without one (the benchmark's docstring)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 2


@pytest.mark.timeout(120)
def test_without_cuda_it_says_so_and_writes_nothing(tmp_path: Path) -> None:
    if _has_cuda():
        pytest.skip("this machine has CUDA: the no-GPU path does not apply")
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == ("benchmarks/gpu.py: no CUDA device on this machine: nothing measured, no results written "
                                   "(--smoke runs the same path on CPU with a tiny model)")
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=560, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert f"wrote {out}" in proc.stdout
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["config"] == "configs/llama3_8b_moelora.yaml"
    r = report["result"]
    # the paper's set-up, with the tiny model in place of LLaMA
    assert r["setup"] == {"zero_stage": 3, "precision": "bf16", "gradient_checkpointing": True, "experts": 8, "top_n": 2,
                          "lora_rank": 8, "max_length": 256, "micro_batch_per_gpu": 2, "world_size": _expected_world_size()}
    assert r["steps_measured"] >= 4 and r["step_time_s"] > 0 and r["tokens_per_s_per_gpu"] > 0
    assert 10 < r["mean_tokens_per_sample"] <= 256
    if not _has_cuda():
        assert r["device"] == "CPU (smoke)" and r["peak_gpu_memory_mib"] is None


def test_the_random_llama_is_made_off_the_gpu_and_initialised_as_transformers_would(tmp_path: Path, monkeypatch) -> None:
    """save_random_llama lays the model out on the meta device and fills it in host memory: the
    saved weights must still be a properly initialised bf16 model (norms 1, projections ~N(0, 0.02))."""
    import torch
    from transformers import LlamaForCausalLM

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from gpu import save_random_llama

    arch = tmp_path / "config.json"
    arch.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
                                "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                                "num_key_value_heads": 2, "vocab_size": 512, "initializer_range": 0.02,
                                "tie_word_embeddings": False}))
    path = save_random_llama(tmp_path / "model", arch, ["aspirin 81 mg daily; metoprolol 25 mg twice a day"] * 20)
    model = LlamaForCausalLM.from_pretrained(path)
    weights = dict(model.named_parameters())
    assert {p.dtype for p in weights.values()} == {torch.bfloat16}
    norms = [p for name, p in weights.items() if name.endswith("norm.weight")]
    assert len(norms) == 5 and all(bool((p == 1).all()) for p in norms)
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.embed_tokens.weight", "lm_head.weight"):
        assert 0.018 < weights[name].float().std().item() < 0.022, name
