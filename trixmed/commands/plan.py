"""`trixmed plan`: can this config run on N nodes × G GPUs, and how?

Prints the world size, ZeRO stage, batch split, expert-parallel groups and memory per GPU (DeepSpeed's
model-state estimate + an activation estimate for the configured sequence length and micro-batch),
what each phase asks of a node (training workers, extract actors, stratify workers, a sweep's
concurrent trials) and the host memory of the processes that load the model, or refuses in one
line (exit 2) a shape that cannot run, naming the smallest shape that would or the sbatch option /
config key that fixes it. `--tune` checks a sweep's trials instead of one run.

Inside a SLURM job, `--slurm --job run|tune ARGS…` is what slurm/job.sh and launch/ run before
starting Ray: the allocation is read from the job itself (allocation.py), ARGS is the job's own
trixmed command line, parsed by trixmed's parser (the one place it is parsed), and `--job-file`
receives what the job needs from it: the overrides derived from the allocation (one worker per
GPU …; an override on the command line wins), whether the command asked for the dashboard, and
the environment its Ray nodes start with (train/ray_session.py: ray_node_env).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trixmed.commands.common import add_run_dir, load_run_config
from trixmed.pipeline.allocation import Allocation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir(parser)
    parser.add_argument("--nodes", type=int, default=None, metavar="N", help="nodes in the job (default 1, or the job's)")
    parser.add_argument("--gpus-per-node", type=int, default=None, metavar="G",
                        help="GPUs per node; training uses one worker per GPU (world size N × G). "
                             "0 = CPU only: the config's distributed.num_workers (default: the job's with --slurm, else the "
                             "config's plan.gpus_per_node when distributed.use_gpu, else 0)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, metavar="GIB",
                        help="memory of one GPU in GiB when nvidia-smi does not say (default 80, an H100/A100-80GB); "
                             "the plan may fill 90%% of it")
    parser.add_argument("--cpus-per-node", type=float, default=None, metavar="C",
                        help="CPUs per node; every worker and actor must find its CPUs on its node (default: the job's "
                             "with --slurm, else not checked)")
    parser.add_argument("--mem-per-node", type=float, default=None, metavar="GIB",
                        help="host memory per node in GiB; the processes that load the model must fit in 70%% of it "
                             "(default: the job's with --slurm, else not checked)")
    parser.add_argument("--tune", action="store_true",
                        help="plan a `trixmed tune` sweep: each trial trains distributed.num_workers workers (one GPU "
                             "each with GPUs), tune.max_concurrent_trials of them at once")
    parser.add_argument("--slurm", action="store_true",
                        help="read the allocation from the SLURM job this runs in: nodes, CPUs, memory and GPUs per node, "
                             "each GPU's memory from nvidia-smi")
    parser.add_argument("--job-file", type=Path, metavar="FILE",
                        help="write what the job needs: one `override KEY=VALUE` line per derived override, a "
                             "`dashboard` line when the command asks for the dashboard, and one `env NAME=VALUE` line "
                             "per variable the job's Ray nodes and driver start with")
    parser.add_argument("--job", nargs=argparse.REMAINDER, metavar="run|tune ARGS",
                        help="the job's trixmed command line (the rest of the line): plan it as that command runs")


def main(args: argparse.Namespace) -> int:
    import os

    # the plan is arithmetic on a meta-device model: no accelerator is touched, so spare the log
    # line DeepSpeed prints while it looks for one (job.sh runs this on a node before Ray starts)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from trixmed.pipeline.allocation import derive_overrides, from_slurm, user_keys
    from trixmed.pipeline.plan import check_shape, format_shape

    job = _job_args(args.job) if args.job else args
    command = job.command if args.job else ("tune" if args.tune else "run")
    alloc = from_slurm() if args.slurm else Allocation(nodes=1, cpus_per_node=None, gpus_per_node=-1,
                                                      gpu_memory_gib=None, mem_per_node_gib=None)
    nodes = args.nodes if args.nodes is not None else alloc.nodes
    cpus = args.cpus_per_node if args.cpus_per_node is not None else alloc.cpus_per_node
    mem = args.mem_per_node if args.mem_per_node is not None else alloc.mem_per_node_gib
    gpus = args.gpus_per_node if args.gpus_per_node is not None else alloc.gpus_per_node
    derived: list[str] = []
    if gpus >= 0:
        derived = derive_overrides(load_run_config(job), nodes, gpus, command, fake_gpus=alloc.fake_gpus)
        derived = [kv for kv in derived if kv.split("=", 1)[0] not in user_keys(job.overrides)]
    cfg = load_run_config(job, derived)
    if gpus < 0:
        gpus = cfg.plan.gpus_per_node if cfg.distributed.use_gpu else 0
    gpu_memory = alloc.gpu_memory_gib or args.gpu_memory
    name = job.config or "<defaults>"
    plan = check_shape(cfg, nodes, gpus, gpu_memory, name, cpus_per_node=cpus, tune=command == "tune",
                       mem_per_node_gib=mem)
    if args.slurm:
        print(_allocation_line(alloc, gpus, gpu_memory))
    print(format_shape(plan, name))
    print("derived overrides: " + (" ".join(derived) or "none"))
    if args.job_file:
        from trixmed.io import atomic_file
        from trixmed.train.ray_session import ray_node_env

        lines = [f"override {kv}" for kv in derived] + (["dashboard"] if getattr(job, "dashboard", False) else [])
        lines += [f"env {k}={v}" for k, v in ray_node_env().items()]
        with atomic_file(args.job_file) as fh:
            fh.write("".join(line + "\n" for line in lines))
    return 0


def _job_args(argv: list[str]) -> argparse.Namespace:
    """The job's `run|tune …` line, parsed by trixmed's own parser."""
    from trixmed.cli import build_parser, parse_args
    from trixmed.errors import TrixmedError

    if not argv or argv[0] not in ("run", "tune"):
        raise TrixmedError("--job", f"must be followed by run or tune and its arguments, got {' '.join(argv) or 'nothing'}")
    return parse_args(build_parser(), argv)


def _allocation_line(alloc: Allocation, gpus: int, gpu_memory: float) -> str:
    parts = [f"{alloc.nodes} node(s)"]
    parts.append(f"{alloc.cpus_per_node:g} CPUs" if alloc.cpus_per_node is not None else "CPUs unknown")
    if alloc.fake_gpus:
        parts.append(f"{gpus} fake GPUs (TRIXMED_FAKE_GPUS=1: planned as {gpu_memory:g} GiB GPUs, trained on CPU)")
    elif gpus:
        parts.append(f"{gpus} GPUs of {gpu_memory:.1f} GiB "
                     + ("(nvidia-smi)" if alloc.gpu_memory_gib else "(assumed: nvidia-smi did not answer; --gpu-memory)"))
    if alloc.mem_per_node_gib is not None:
        parts.append(f"{alloc.mem_per_node_gib:.1f} GiB memory")
    return f"allocation ({alloc.source}): " + ", ".join(parts) + " per node"
