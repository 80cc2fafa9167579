"""What job.sh asks of the job's Ray cluster, as a driver connected to $RAY_ADDRESS.

    python slurm/ray_cluster.py wait --nodes N --timeout S --out nodes.json
        block until N nodes are alive (or fail after S seconds); write them (IP, CPUs, GPUs)
    python slurm/ray_cluster.py placement --out placement.json
        after a run: which node IPs hosted the training workers and other actors of the job

`placement.json` is the record that a job really spread over its nodes (the SLURM tests read it,
and so can a person wondering why a job was slow). Ray's state API needs its dashboard; the actor
table in the GCS does not, so that is what is read here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


def connect() -> None:
    import ray

    # quiet: this helper's own output is one line; Ray's connection chatter goes to /dev/null
    with contextlib.redirect_stderr(io.StringIO()):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, configure_logging=False)


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [{"ip": n["NodeManagerAddress"], "node_id": n["NodeID"],
             "cpus": n["Resources"].get("CPU", 0), "gpus": n["Resources"].get("GPU", 0),
             "head": "node:__internal_head__" in n["Resources"]}
            for n in ray.nodes() if n["Alive"]]


def wait_nodes(count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = alive_nodes()
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise SystemExit(f"ray_cluster.py: only {len(nodes)} of {count} Ray nodes joined within {timeout:g} s "
                             f"({', '.join(n['ip'] for n in nodes) or 'none'}): see ray-worker-*.log in the job's log directory")
        time.sleep(0.1)   # the job waits on this poll before trixmed starts


def placement() -> dict[str, Any]:
    """Actors of every driver that ran on this cluster, by class and node IP (dead ones included:
    the GCS keeps finished actors of the cluster's lifetime)."""
    from ray._private.state import state

    ip_of = {n["NodeID"]: n["NodeManagerAddress"] for n in __import__("ray").nodes()}
    by_class: dict[str, Counter[str]] = {}
    for actor in state.actor_table(None).values():
        node_id = actor.get("Address", {}).get("NodeID")
        ip = ip_of.get(node_id) or actor.get("Address", {}).get("IPAddress") or "?"
        by_class.setdefault(actor.get("ActorClassName") or "?", Counter())[ip] += 1
    train = by_class.get("RayTrainWorker", Counter())
    return {"nodes": alive_nodes(),
            "train_worker_ips": sorted(train),
            "actors": {cls: dict(sorted(c.items())) for cls, c in sorted(by_class.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_cluster.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("--nodes", type=int, required=True)
    w.add_argument("--timeout", type=float, default=180)
    w.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("placement")
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    connect()
    if args.cmd == "wait":
        nodes = wait_nodes(args.nodes, args.timeout)
        args.out.write_text(json.dumps({"nodes": nodes}, indent=2))
        print(f"{len(nodes)} Ray nodes: " + ", ".join(f"{n['ip']} ({n['cpus']:g} CPU, {n['gpus']:g} GPU)" for n in nodes))
    else:
        report = placement()
        args.out.write_text(json.dumps(report, indent=2))
        print("training workers ran on " + (", ".join(report["train_worker_ips"]) or "no node (no Ray Train run)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
