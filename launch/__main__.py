"""`python -m launch run|tune [launcher options] [trixmed arguments]`: submit through submitit.

    python -m launch run --config configs/llama3_8b_moelora.yaml --nodes 2 --gpus-per-node 8
    python -m launch tune tune_spaces/demo_2x2.yaml --config configs/demo_cpu.yaml --executor local --wait
    python -m launch run --dashboard --config configs/demo_cpu.yaml     (Ray's dashboard: see the job's dashboard.txt)

Launcher options are listed below; every other argument goes to `trixmed run|tune` unchanged
(the job's `trixmed plan --job` reads it, `--dashboard` included).
Resources not given come from slurm/train.sbatch or slurm/tune.sbatch (the same job either way).
"""

from __future__ import annotations

import argparse
import json
import sys

from launch import submit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     epilog="Every other argument (--config, key=value, tune's SPACE …) goes to trixmed.")
    parser.add_argument("command", choices=["run", "tune"])
    parser.add_argument("--executor", choices=["slurm", "local"], default="slurm",
                        help="slurm (default): sbatch through submitit; local: this machine, no SLURM")
    parser.add_argument("--nodes", type=int, help="nodes (default: the template's)")
    parser.add_argument("--gpus-per-node", type=int, help="GPUs per node (default: the template's, none)")
    parser.add_argument("--cpus-per-task", type=int, help="CPUs per node, one task per node (default: the template's)")
    parser.add_argument("--time", type=int, dest="time_min", metavar="MINUTES", help="time limit (default: the template's)")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--job-name")
    parser.add_argument("--folder", help="submitit's folder (default logs/submitit; a sub-folder per job id)")
    parser.add_argument("--max-requeues", type=int, default=3,
                        help="requeues after the time limit (submitit's max_num_timeout; preemptions always requeue)")
    parser.add_argument("--max-stalled-attempts", type=int, default=3,
                        help="attempts in a row that save no work before the job is not requeued again")
    parser.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    args, trixmed_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        job = submit(args.command, trixmed_args, executor=args.executor, folder=args.folder, nodes=args.nodes,
                     gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, time_min=args.time_min,
                     partition=args.partition, account=args.account, job_name=args.job_name,
                     max_requeues=args.max_requeues, max_stalled_attempts=args.max_stalled_attempts)
    except (RuntimeError, ValueError) as exc:   # no checkout, no SLURM, no room to stop: one line, as trixmed reports bad input
        print(f"python -m launch: error: {exc}", file=sys.stderr)
        return 2
    print(f"submitted job {job.job_id} ({args.executor}): trixmed {args.command} {' '.join(trixmed_args)}")
    print(f"submitit's output: {job.paths.stdout}")
    if not args.wait:
        return 0
    try:
        # one submitit task per node; the first runs the job (job.sh), the others only report their rank
        result = job.results()[0]
    except Exception as exc:   # submitit re-raises the job's error with its traceback text
        print(f"job {job.job_id} failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
