"""`trixmed plan`: can this config run on N nodes × G GPUs, and how?

Prints the world size, ZeRO stage, batch split, expert-parallel groups and memory per GPU (DeepSpeed's
model-state estimate + an activation estimate for the configured sequence length and micro-batch),
or refuses in one line (exit 2) a shape that cannot divide or cannot fit, naming the smallest that
would. `--tune` checks a sweep's trials instead of one run (slurm/job.sh passes it for tune jobs). slurm/job.sh runs it before starting Ray, so a bad shape costs seconds, not a queue wait.
"""

from __future__ import annotations

import argparse

from trixmed.commands.common import add_run_dir, load_run_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir(parser)
    parser.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes in the job (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=None, metavar="G",
                        help="GPUs per node; training uses one worker per GPU (world size N × G). "
                             "0 = CPU only: the config's distributed.num_workers (default: the config's plan.gpus_per_node "
                             "when distributed.use_gpu, else 0)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, metavar="GIB",
                        help="memory of one GPU in GiB (default 80, an H100/A100-80GB); the plan may fill 90%% of it")
    parser.add_argument("--cpus-per-node", type=float, default=None, metavar="C",
                        help="CPUs per node; with it every worker must find distributed.cpus_per_worker of them on its "
                             "node (default: not checked)")
    parser.add_argument("--tune", action="store_true",
                        help="plan a `trixmed tune` sweep: each trial trains distributed.num_workers workers (one GPU "
                             "each with GPUs), tune.max_concurrent_trials of them at once")


def main(args: argparse.Namespace) -> int:
    import os

    # the plan is arithmetic on a meta-device model: no accelerator is touched, so spare the log
    # line DeepSpeed prints while it looks for one (job.sh runs this on a node before Ray starts)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from trixmed.pipeline.plan import check_shape, format_shape

    cfg = load_run_config(args)
    gpus = args.gpus_per_node
    if gpus is None:
        gpus = cfg.plan.gpus_per_node if cfg.distributed.use_gpu else 0
    name = args.config or "<defaults>"
    plan = check_shape(cfg, args.nodes, gpus, args.gpu_memory, name, cpus_per_node=args.cpus_per_node, tune=args.tune)
    print(format_shape(plan, name))
    return 0
