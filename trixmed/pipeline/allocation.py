"""What a SLURM job was given, read from inside it: nodes, CPUs, memory and GPUs per node, and each
GPU's memory where nvidia-smi answers. `trixmed plan --slurm` checks a config against it, so the
plan sees the allocation itself instead of what a submission script passed on.

A test cluster's GPUs can be fake (slurm/local-cluster.sh: GRES backed by device files that
nothing computes on). `TRIXMED_FAKE_GPUS=1` says so: the plan still checks the GPU shape, but the
run it derives trains on CPU (`distributed.use_gpu=false`, extraction on CPU).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from trixmed.config import Config
from trixmed.errors import TrixmedError

GIB = 1024**3


@dataclass(frozen=True)
class Allocation:
    nodes: int
    cpus_per_node: float | None      # None: not known (not checked)
    gpus_per_node: int               # -1: not known (the config's plan.gpus_per_node is planned)
    gpu_memory_gib: float | None     # None: nvidia-smi did not answer (the plan assumes --gpu-memory)
    mem_per_node_gib: float | None   # None: not known (host memory not checked)
    fake_gpus: bool = False
    source: str = "command line"


def from_slurm(env: Mapping[str, str] | None = None) -> Allocation:
    """The allocation of the SLURM job this process runs in (its batch step's view)."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    if not job:
        raise TrixmedError("--slurm", "not inside a SLURM job (no SLURM_JOB_ID); give --nodes, --gpus-per-node, "
                                      "--cpus-per-node and --mem-per-node instead")
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    cpus = float(env["SLURM_CPUS_ON_NODE"]) if env.get("SLURM_CPUS_ON_NODE") else None
    fake = env.get("TRIXMED_FAKE_GPUS", "0") not in ("", "0")
    gpus = gpu_count(env)
    return Allocation(nodes=nodes, cpus_per_node=cpus, gpus_per_node=gpus,
                      gpu_memory_gib=None if fake or not gpus else nvidia_smi_memory_gib(),
                      mem_per_node_gib=_memory_gib(env, cpus), fake_gpus=fake, source=f"SLURM job {job}")


def gpu_count(env: Mapping[str, str]) -> int:
    """GPUs of this step: CUDA_VISIBLE_DEVICES (set by SLURM's gres plugin), else SLURM's count."""
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    if visible and visible != "NoDevFiles":
        return len([d for d in visible.split(",") if d])
    return int(env.get("SLURM_GPUS_ON_NODE") or 0)


def nvidia_smi_memory_gib() -> float | None:
    """The smallest visible GPU's memory, or None when nvidia-smi is missing or does not answer."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sizes = [float(v) for v in out.stdout.split() if v.replace(".", "", 1).isdigit()]
    return min(sizes) / 1024 if out.returncode == 0 and sizes else None


def _memory_gib(env: Mapping[str, str], cpus: float | None) -> float | None:
    """SLURM's memory per node (MB); `--mem=0` or a cluster that does not track memory leaves it
    unset or 0, and the job may then use the node's all."""
    per_node = int(env.get("SLURM_MEM_PER_NODE") or 0)
    if per_node > 0:
        return per_node / 1024
    per_cpu = int(env.get("SLURM_MEM_PER_CPU") or 0)
    if per_cpu > 0 and cpus:
        return per_cpu * cpus / 1024
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def derive_overrides(cfg: Config, nodes: int, gpus_per_node: int, command: str, *, fake_gpus: bool = False) -> list[str]:
    """The config overrides that make `cfg` use this allocation: with GPUs, one training worker per
    GPU for a run (a sweep's trials keep their worker count), on GPUs (CPU when they are fake)."""
    if gpus_per_node <= 0:
        return []
    out = [f"distributed.use_gpu={'false' if fake_gpus else 'true'}", f"plan.gpus_per_node={gpus_per_node}"]
    if command == "run":
        out.append(f"distributed.num_workers={nodes * gpus_per_node}")
    if fake_gpus and cfg.extract.gpus_per_actor:
        out.append("extract.gpus_per_actor=0")
    return out


def user_keys(overrides: list[str]) -> set[str]:
    """The keys a command line's `key=value` overrides set (they win over derived ones)."""
    return {kv.split("=", 1)[0] for kv in overrides if "=" in kv}
