"""`trixmed run --dry-run` validates configs and prints the plan without training; CLI errors."""

from __future__ import annotations

import os
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


def test_plan_counts_the_drug_tower(capsys, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    assert main(["run", "--config", str(CONFIGS / "llama3_8b_moelora.yaml"), "--dry-run", "model.head=drug_tower"]) == 0
    # + the tower (256-dim, 1024-bit fingerprints, 4096-dim titles: 2,491,948) - the free head (4096 × 300 + 300)
    assert "8,162.8 M total" in capsys.readouterr().out


@pytest.mark.parametrize("name,stage", [("demo_cpu.yaml", 2), ("mimic3_codes.yaml", 0)])
def test_cpu_configs_validate(name, stage, capsys, tmp_path):
    assert main(["run", "--config", str(CONFIGS / name), "--dry-run", f"run_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert f"world size 2 on CPU (gloo), ZeRO stage {stage}, fp32" in out and "memory per worker" in out


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
# the environment a job's Ray nodes start with: Ray Train's 0.2 s poll, no preemption watcher (the
# job's signals stop trixmed), no print patch (each rank prints once, to its own log), and the
# mark that tells the driver to leave the runtime env empty
RAY_NODE_ENV = ("env RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2\nenv RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0\n"
                "env RAY_TRAIN_ENABLE_PRINT_PATCH=0\nenv TRIXMED_RAY_NODES_HAVE_ENV=1\n")


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
    fits = next(line for line in lines if line.startswith("fits: "))
    assert fits.endswith(" per GPU of 80 GiB (90% usable = 72.0 GiB)")
    assert lines[-1] == "derived overrides: distributed.use_gpu=true plan.gpus_per_node=8 distributed.num_workers=16"


def test_plan_shows_the_expert_parallel_groups(capsys, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    code, out, _ = plan(capsys, "--config", LLAMA, "--nodes", "1", "--gpus-per-node", "4",
                        "model.moe.ep_size=2", "distributed.zero_stage=2", "extract.actors=4")
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
    assert lines[0] == (f"{CODES} on 2 node(s) × 2 GPUs: world size 2, ZeRO stage 0, fp32; "
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
    assert err == (f"trixmed plan: error: {CONFIGS / 'demo_cpu.yaml'}: distributed.cpus_per_worker: 2 workers per node × "
                   "1.5 CPUs = 3 CPUs, but a node has 2; fix: sbatch --cpus-per-task=3, or distributed.cpus_per_worker=1\n")


# --------------------------------------------------------------------------------------------
# the allocation: CPUs, extract actors, stratify workers and host memory per node

@pytest.mark.parametrize("args,error", [
    # the README's flagship command on the templates' old 8 CPUs per node
    (["--cpus-per-node", "8"],
     "distributed.cpus_per_worker: 8 workers per node × 4 CPUs = 32 CPUs, but a node has 8; "
     "fix: sbatch --cpus-per-task=32, or distributed.cpus_per_worker=1"),
    (["--cpus-per-node", "32", "extract.cpus_per_actor=16"],
     "extract.cpus_per_actor: 4 actors per node × 16 CPUs = 64 CPUs, but a node has 32; "
     "fix: sbatch --cpus-per-task=64, or extract.cpus_per_actor=8"),
    (["--cpus-per-node", "32", "stratify.num_workers=8", "stratify.cpus_per_worker=16"],
     "stratify.cpus_per_worker: 4 workers per node × 16 CPUs = 64 CPUs, but a node has 32; "
     "fix: sbatch --cpus-per-task=64, or stratify.cpus_per_worker=8"),
    (["extract.actors=24"],
     "extract.gpus_per_actor: 12 actors per node × 1 GPU = 12 GPUs, but a node has 8; "
     "fix: extract.actors=16, or extract.gpus_per_actor=0 (extract on CPU)"),
    # a node's 8 ranks map the 8 B bf16 checkpoint (15 GiB): one copy in the page cache, shared
    (["--mem-per-node", "16"],
     "host memory: 1 copy per node × 15.0 GiB (the bfloat16 checkpoint, memory-mapped: 8 processes share one copy; "
     "assumed stored as bfloat16: it is not on this machine) = 15.0 GiB, but "
     "11.2 GiB of the node's 16.0 GiB is usable (70%; Ray's object store holds the rest); "
     "fix: sbatch --mem=22G (or --mem=0: the node's all)"),
])
def test_plan_refuses_what_the_allocation_lacks_naming_the_fix(capsys, monkeypatch, args, error):
    monkeypatch.chdir(CONFIGS.parent)
    code, out, err = plan(capsys, "--config", LLAMA, "--nodes", "2", "--gpus-per-node", "8", *args)
    assert code == 2 and out == ""
    assert err == f"trixmed plan: error: {LLAMA}: {error}\n"


def slurm_env(monkeypatch, **env: str) -> None:
    for key in [k for k in os.environ if k.startswith("SLURM") or k in ("CUDA_VISIBLE_DEVICES", "TRIXMED_FAKE_GPUS")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", "/nonexistent")   # no nvidia-smi answers


def test_plan_reads_the_slurm_allocation_and_writes_the_jobs_overrides(capsys, monkeypatch, tmp_path):
    """The README's flagship job on the templates' defaults: 2 nodes × 8 GPUs, 32 CPUs, the node's memory."""
    monkeypatch.chdir(CONFIGS.parent)
    slurm_env(monkeypatch, SLURM_JOB_ID="42", SLURM_JOB_NUM_NODES="2", SLURM_CPUS_ON_NODE="32",
              CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7", SLURM_MEM_PER_NODE="1031680")
    job_file = tmp_path / "plan.job"
    code, out, _ = plan(capsys, "--slurm", "--job-file", str(job_file),
                        "--job", "run", "--dashboard", "--config", LLAMA, "--force", "experts.epochs=2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("allocation (SLURM job 42): 2 node(s), 32 CPUs, 8 GPUs of 80.0 GiB (assumed: nvidia-smi did not "
                        "answer; --gpu-memory), 1007.5 GiB memory per node")
    assert lines[1] == f"{LLAMA} on 2 node(s) × 8 GPUs: world size 16, ZeRO stage 3, bf16"
    assert "  training 8 × (1 GPU + 4 CPU) = 8 GPU + 32 CPU of 32 CPUs" in lines
    assert "  extract  4 × (1 GPU + 4 CPU) = 4 GPU + 16 CPU of 32 CPUs" in lines
    assert ("host memory per node: 1 copy × 14.96 GiB (the bfloat16 checkpoint, memory-mapped: 8 processes share one "
            "copy; assumed stored as bfloat16: it is not on this machine) = 14.96 GiB of "
            "705.2 GiB usable (70% of 1007.5 GiB; Ray's object store holds the rest)") in lines
    assert lines[-1] == "derived overrides: distributed.use_gpu=true plan.gpus_per_node=8 distributed.num_workers=16"
    assert job_file.read_text() == ("override distributed.use_gpu=true\noverride plan.gpus_per_node=8\n"
                                    "override distributed.num_workers=16\ndashboard\n" + RAY_NODE_ENV)


def test_plan_of_a_tune_job_on_fake_gpus_trains_on_cpu(capsys, monkeypatch, tmp_path):
    """A test cluster's fake GPUs: the trials' GPU shape is planned, the derived run is on CPU, and
    an override on the job's command line wins over a derived one."""
    slurm_env(monkeypatch, SLURM_JOB_ID="7", SLURM_JOB_NUM_NODES="2", SLURM_CPUS_ON_NODE="2",
              CUDA_VISIBLE_DEVICES="0,1", SLURM_MEM_PER_NODE="4096", TRIXMED_FAKE_GPUS="1")
    job_file = tmp_path / "plan.job"
    code, out, _ = plan(capsys, "--slurm", "--job-file", str(job_file), "--job", "tune", "tune_spaces/demo_2x2.yaml",
                        "--config", CODES, f"run_dir={tmp_path}", "tune.max_concurrent_trials=2", "plan.gpus_per_node=2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("allocation (SLURM job 7): 2 node(s), 2 CPUs, 2 fake GPUs (TRIXMED_FAKE_GPUS=1: planned as 80 GiB "
                        "GPUs, trained on CPU), 4.0 GiB memory per node")
    assert lines[1] == (f"{CODES} on 2 node(s) × 2 GPUs: world size 2, ZeRO stage 0, fp32; "
                        "tune: 2 trial(s) at a time, each with this world size (4 workers in all)")
    assert "  training 2 × (1 GPU + 0.5 CPU) = 2 GPU + 1 CPU of 2 CPUs" in lines
    assert lines[-1] == "derived overrides: distributed.use_gpu=false"
    assert job_file.read_text() == "override distributed.use_gpu=false\n" + RAY_NODE_ENV


def test_plan_slurm_outside_a_job_and_a_bad_job_line_are_one_line(capsys, monkeypatch):
    slurm_env(monkeypatch)
    code, _, err = plan(capsys, "--slurm", "--job", "run", "--config", str(CONFIGS / "demo_cpu.yaml"))
    assert code == 2 and err == ("trixmed plan: error: --slurm: not inside a SLURM job (no SLURM_JOB_ID); give --nodes, "
                                 "--gpus-per-node, --cpus-per-node and --mem-per-node instead\n")
    code, _, err = plan(capsys, "--job", "evaluate", "--config", str(CONFIGS / "demo_cpu.yaml"))
    assert code == 2 and err == ("trixmed plan: error: --job: must be followed by run or tune and its arguments, "
                                 f"got evaluate --config {CONFIGS / 'demo_cpu.yaml'}\n")


def test_plan_in_a_job_reads_each_gpus_memory_from_nvidia_smi(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(CONFIGS.parent)
    slurm_env(monkeypatch, SLURM_JOB_ID="9", SLURM_JOB_NUM_NODES="1", SLURM_CPUS_ON_NODE="32",
              CUDA_VISIBLE_DEVICES="0,1", SLURM_MEM_PER_NODE="262144")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 81559\necho 81920\n")   # memory.total in MiB, one line per GPU
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    code, out, _ = plan(capsys, "--slurm", "--job", "run", "--config", LLAMA, "extract.actors=2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "allocation (SLURM job 9): 1 node(s), 32 CPUs, 2 GPUs of 79.6 GiB (nvidia-smi), 256.0 GiB memory per node"
    assert any(line.startswith("fits: ") and " per GPU of 79.65 GiB (90% usable = 71.7 GiB)" in line for line in lines)
