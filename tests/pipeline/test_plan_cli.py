"""`trixmed run --dry-run` validates configs and prints the plan without training; CLI errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from trixmed.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_gpu_config_dry_run_prints_world_size_zero_stage_and_memory(capsys, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    assert main(["run", "--config", str(CONFIGS / "llama3_8b_moelora.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "world size 8 on GPU (nccl), ZeRO stage 3, bf16" in out
    assert "batch 64 = 2 × 8 workers × 4 accumulation, lr 0.0001 (100 warm-up steps), clip 0.3" in out
    assert "estimate_zero3_model_states_mem_needs" in out
    # LLaMA-3.1-8B: 8.03 B frozen parameters + 8 LoRA experts and the head
    assert "8,161.5 M total" in out
    for stage in ("prepare", "warmup", "extract", "stratify", "experts", "evaluate"):
        assert f"  {stage} " in out


@pytest.mark.parametrize("name", ["demo_cpu.yaml", "mimic3_codes.yaml"])
def test_cpu_configs_validate(name, capsys, tmp_path):
    assert main(["run", "--config", str(CONFIGS / name), "--dry-run", f"run_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "world size 2 on CPU (gloo), ZeRO stage 2, fp32" in out and "memory per worker" in out


def test_bad_batch_split_is_one_line_exit_2(capsys, tmp_path):
    code = main(["run", "--config", str(CONFIGS / "demo_cpu.yaml"), "--dry-run", f"run_dir={tmp_path}",
                 "distributed.num_workers=3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "trixmed run: error: warmup.effective_batch_size: 4 is not a multiple of micro_batch_size × workers = 2 × 3" in err


def test_invalid_phase_value_is_rejected(capsys, tmp_path):
    code = main(["warmup", "--config", str(CONFIGS / "demo_cpu.yaml"), f"run_dir={tmp_path}", "warmup.fraction=0"])
    assert code == 2 and "warmup.fraction: must be in (0, 1], got 0.0" in capsys.readouterr().err


def test_stage_without_its_inputs_is_exit_2(capsys, tmp_path):
    code = main(["extract", "--config", str(CONFIGS / "demo_cpu.yaml"), f"run_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path}/dataset: missing; stage extract needs it" in err
