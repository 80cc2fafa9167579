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


# --------------------------------------------------------------------------------------------
# `trixmed plan --nodes N --gpus-per-node G`: the shape a SLURM job checks before starting Ray

LLAMA = str(CONFIGS / "llama3_8b_moelora.yaml")


def plan(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_prints_world_size_zero_groups_and_memory_per_gpu(capsys, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    code, out, _ = plan(capsys, "--config", LLAMA, "--nodes", "2", "--gpus-per-node", "8")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{LLAMA} on 2 node(s) × 8 GPUs: world size 16, ZeRO stage 3, bf16"
    assert "expert parallelism: off (ep_size 1; every rank holds all 8 experts)" in lines
    assert "  experts  3 epochs, batch 64 = 2 × 16 workers × 2 accumulation, lr 0.0001 (100 warm-up steps), clip 0.3" in lines
    assert "  activations ≈ 2.27 GiB (micro-batch 2 × sequence 2048, 32 layers, gradient checkpointing, bf16)" in lines
    # ZeRO-3 over 16 GPUs: a sixteenth of the 8 B frozen weights + the largest layer gathered in full
    assert ("  model states: frozen weights 1.91 GiB + trainable states 0.14 GiB "
            "(DeepSpeed estimate_zero3_model_states_mem_needs) = 2.06 GiB") in lines
    assert lines[-1].startswith("fits: ") and lines[-1].endswith(" per GPU of 80 GiB (90% usable = 72.0 GiB)")


def test_plan_shows_the_expert_parallel_groups(capsys, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    code, out, _ = plan(capsys, "--config", LLAMA, "--nodes", "1", "--gpus-per-node", "4",
                        "model.moe.ep_size=2", "distributed.zero_stage=2")
    assert code == 0
    assert ("expert parallelism: ep_size 2, 2 expert-parallel groups [0,1] [2,3], 4 experts per rank; "
            "expert-data-parallel groups [0,2] [1,3]") in out.splitlines()


def test_plan_on_cpu_keeps_the_configs_workers(capsys, tmp_path):
    code, out, _ = plan(capsys, "--config", str(CONFIGS / "demo_cpu.yaml"), "--nodes", "2", "--gpus-per-node", "0",
                        f"run_dir={tmp_path}")
    assert code == 0
    assert out.splitlines()[0] == f"{CONFIGS / 'demo_cpu.yaml'} on 2 node(s), CPU only: world size 2 (distributed.num_workers), ZeRO stage 2, fp32"
    assert "fits:" not in out and not tmp_path.joinpath("dataset").exists()


@pytest.mark.parametrize("args,error", [
    (["--nodes", "3", "--gpus-per-node", "8"],
     "warmup.effective_batch_size: 64 is not a multiple of micro_batch_size × workers = 2 × 24; "
     "smallest shape that fits: --nodes 1 --gpus-per-node 1"),
    (["--nodes", "1", "--gpus-per-node", "1", "--gpu-memory", "16"],
     "memory: ≈ 20.4 GiB per GPU (model states 18.1 + activations 2.3) exceeds 14.4 GiB usable of 16 GiB; "
     "smallest shape that fits: --nodes 2 --gpus-per-node 1"),
    (["--nodes", "1", "--gpus-per-node", "6", "model.moe.ep_size=4", "distributed.zero_stage=2"],
     "model.moe.ep_size: 4 does not divide the world size 6; smallest shape that fits: --nodes 1 --gpus-per-node 4"),
    (["--nodes", "1", "--gpus-per-node", "4", "--gpu-memory", "8"],
     "memory: ≈ 7.5 GiB per GPU (model states 5.3 + activations 2.3) exceeds 7.2 GiB usable of 8 GiB; "
     "smallest shape that fits: --nodes 2 --gpus-per-node 4"),
    # activations alone (2.3 GiB at 2048 tokens) and the gathered largest layer never fit in 3.6 GiB
    (["--nodes", "1", "--gpus-per-node", "8", "--gpu-memory", "4"],
     "memory: ≈ 5.4 GiB per GPU (model states 3.1 + activations 2.3) exceeds 3.6 GiB usable of 4 GiB; "
     "no shape up to 64 nodes × 8 GPUs fits"),
])
def test_plan_refuses_a_shape_in_one_line_with_the_smallest_that_fits(capsys, monkeypatch, args, error):
    monkeypatch.chdir(CONFIGS.parent)
    code, out, err = plan(capsys, "--config", LLAMA, *args)
    assert code == 2 and out == ""
    assert err == f"trixmed plan: error: {LLAMA}: {error}\n"


def test_plan_refuses_a_cpu_batch_that_does_not_divide(capsys, tmp_path):
    code, _, err = plan(capsys, "--config", str(CONFIGS / "demo_cpu.yaml"), "--nodes", "2", "--gpus-per-node", "0",
                        "distributed.num_workers=3", f"run_dir={tmp_path}")
    assert code == 2
    assert err == (f"trixmed plan: error: {CONFIGS / 'demo_cpu.yaml'}: warmup.effective_batch_size: 4 is not a multiple of "
                   "micro_batch_size × workers = 2 × 3; smallest that fits: distributed.num_workers=1\n")


def test_plan_refuses_a_bad_node_count(capsys):
    code, _, err = plan(capsys, "--config", str(CONFIGS / "demo_cpu.yaml"), "--nodes", "0")
    assert code == 2 and err == "trixmed plan: error: --nodes: must be >= 1, got 0\n"


def test_expert_parallel_groups_follow_deepspeeds_layout():
    from trixmed.errors import TrixmedError
    from trixmed.pipeline.plan import expert_parallel_groups

    g = expert_parallel_groups(8, 8, 4)
    assert g["groups"] == [[0, 1, 2, 3], [4, 5, 6, 7]] and g["data_groups"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert g["experts_per_rank"] == 2
    with pytest.raises(TrixmedError, match="model.moe.ep_size: 4 does not divide the world size 6"):
        expert_parallel_groups(6, 8, 4)


# --------------------------------------------------------------------------------------------
# `trixmed plan --tune`: a sweep's trials each train the config's own workers, several at once

CODES = str(CONFIGS / "mimic3_codes.yaml")


def test_plan_of_a_tune_job_checks_the_trials_not_one_worker_per_gpu(capsys, tmp_path):
    """The shape a run refuses (4 GPUs for a batch of 64 in micro-batches of 32) holds a sweep
    whose trials train 2 workers each."""
    shape = ["--config", CODES, "--nodes", "2", "--gpus-per-node", "2", f"run_dir={tmp_path}"]
    code, _, err = plan(capsys, *shape)
    assert code == 2 and "64 is not a multiple of micro_batch_size × workers = 32 × 4" in err
    code, out, _ = plan(capsys, *shape, "--tune", "tune.max_concurrent_trials=2", "--cpus-per-node", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (f"{CODES} on 2 node(s) × 2 GPUs: world size 2, ZeRO stage 2, fp32; "
                        "tune: 2 trial(s) at a time, each with this world size (4 workers in all)")
    assert "  experts  10 epochs, batch 64 = 32 × 2 workers × 1 accumulation, lr 0.002 (20 warm-up steps), clip 0.3" in lines


@pytest.mark.parametrize("args,error", [
    (["--gpus-per-node", "2", "tune.max_concurrent_trials=4"],
     "tune.max_concurrent_trials: 4 trials at a time × 2 workers (distributed.num_workers) = 8 workers of 1 GPU + 0.5 CPU "
     "each; 2 node(s) × 2 GPUs hold 4; smallest shape that fits: --nodes 4 --gpus-per-node 2"),
    (["--gpus-per-node", "4", "--cpus-per-node", "1", "tune.max_concurrent_trials=3"],
     "tune.max_concurrent_trials: 3 trials at a time × 2 workers (distributed.num_workers) = 6 workers of 1 GPU + 0.5 CPU "
     "each; 2 node(s) × 4 GPUs + 1 CPUs hold 4; smallest shape that fits: --nodes 3 --gpus-per-node 4"),
    # the trial's batch is split over the trial's workers
    (["--gpus-per-node", "8", "distributed.num_workers=3"],
     "warmup.effective_batch_size: 64 is not a multiple of micro_batch_size × workers = 32 × 3; "
     "smallest that fits: distributed.num_workers=1"),
])
def test_plan_refuses_a_tune_shape_its_trials_do_not_fit(capsys, tmp_path, args, error):
    code, out, err = plan(capsys, "--config", CODES, "--nodes", "2", "--tune", *args, f"run_dir={tmp_path}")
    assert code == 2 and out == ""
    assert err == f"trixmed plan: error: {CODES}: {error}\n"


def test_plan_refuses_cpu_workers_that_do_not_fit_the_nodes_cpus(capsys, tmp_path):
    code, _, err = plan(capsys, "--config", str(CONFIGS / "demo_cpu.yaml"), "--nodes", "1", "--gpus-per-node", "0",
                        "--cpus-per-node", "2", "distributed.cpus_per_worker=1.5", f"run_dir={tmp_path}")
    assert code == 2
    assert err == (f"trixmed plan: error: {CONFIGS / 'demo_cpu.yaml'}: distributed.num_workers: 2 workers of 1.5 CPU each; "
                   "1 node(s) × 2 CPUs hold 1; smallest that fits: distributed.num_workers=1\n")
