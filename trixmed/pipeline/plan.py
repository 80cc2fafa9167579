"""`trixmed run --dry-run` and `trixmed plan`: what a run would do, and whether a cluster shape can run it.

Model-state memory uses DeepSpeed's own estimators for the *trainable* parameters (LoRA / experts /
head: weights, gradients and Adam states, partitioned per the ZeRO stage) plus the frozen backbone
weights at the run's precision (partitioned only under ZeRO-3, where one layer at a time is
gathered in full). Activations are estimated from the architecture for one micro-batch at the
configured sequence length (`estimate_activations`).

`check_shape` is `trixmed plan`'s verdict on N nodes × G GPUs: the run's world size and batch
split, the expert-parallel groups, memory per GPU against the GPU's capacity, and whether the
workers fit the nodes' GPUs (and CPUs, when given); a shape that cannot divide or cannot fit is
refused in one line that names the smallest shape that would work. A Tune sweep (`tune=True`) is
checked as its trials run: each trial trains the config's own `distributed.num_workers`, and
`tune.max_concurrent_trials` of them share the allocation.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from trixmed.config import Config
from trixmed.errors import TrixmedError
from trixmed.run_dir import RunDir
from trixmed.train.deepspeed_config import build_deepspeed_config
from trixmed.train.ray_fit import worker_resources

_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
GIB = 1024**3
# share of a GPU's memory a plan may fill: the CUDA context, NCCL buffers and the caching
# allocator's fragmentation take the rest
USABLE_GPU_FRACTION = 0.9
# the largest shape `trixmed plan` searches when it suggests one
MAX_SUGGESTED_NODES = 64


def build_plan(cfg: Config, counts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything `--dry-run` and `trixmed plan` print. `counts` (from `param_counts`) saves
    rebuilding the model on the meta device when several shapes of one config are planned."""
    from trixmed.pipeline.stages import STAGES, config_hash, input_hash

    d = cfg.distributed
    world = d.num_workers
    rd = RunDir(cfg.run_dir)
    stages = []
    upstream_runs = False   # once a stage re-runs, every later stage gets new inputs
    for name, stage in ((n, s) for n, s in STAGES.items() if s.enabled(cfg)):
        try:
            done = not upstream_runs and rd.is_complete(name, input_hash(cfg, rd, stage), config_hash(cfg, stage.keys(cfg)))
            status = "up to date (skip)" if done else ("will run (after its inputs)" if upstream_runs else "will run")
        except TrixmedError:
            status = "will run (after its inputs)"
        upstream_runs = upstream_runs or not status.startswith("up to date")
        stages.append({"stage": name, "output": str(rd.stage_dir(name)), "status": status})
    phases = batch_split(cfg)
    return {
        "run_dir": str(rd.root),
        "stages": stages,
        "world_size": world,
        "device": "GPU (nccl)" if d.use_gpu else "CPU (gloo)",
        "zero_stage": d.zero_stage,
        "precision": d.precision,
        "backbone": cfg.model.backbone,
        "experts": f"{cfg.model.moe.num_experts} experts, top-{cfg.model.moe.top_n}, router {cfg.model.moe.router}, ep_size {cfg.model.moe.ep_size}",
        "expert_parallel": expert_parallel_groups(world, cfg.model.moe.num_experts, cfg.model.moe.ep_size),
        "phases": phases,
        "memory": estimate_memory(cfg, counts),
    }


def batch_split(cfg: Config) -> dict[str, dict[str, Any]]:
    """Each phase's batch arithmetic at the config's world size; a batch that does not divide is
    the TrixmedError of `build_deepspeed_config`."""
    phases = {}
    for phase in ("warmup", "experts"):
        ds_cfg = build_deepspeed_config(getattr(cfg, phase), cfg.distributed, cfg.distributed.num_workers, phase)
        phases[phase] = {
            "epochs": getattr(cfg, phase).epochs,
            "micro_batch_per_worker": ds_cfg["train_micro_batch_size_per_gpu"],
            "grad_accumulation": ds_cfg["gradient_accumulation_steps"],
            "effective_batch": ds_cfg["train_batch_size"],
            "lr": getattr(cfg, phase).lr,
            "warmup_steps": getattr(cfg, phase).warmup_steps,
            "grad_clip": getattr(cfg, phase).grad_clip,
        }
    return phases


def expert_parallel_groups(world: int, num_experts: int, ep_size: int) -> dict[str, Any]:
    """DeepSpeed's layout (`groups._create_expert_and_data_parallel`, data before expert parallel
    off): expert-parallel groups are runs of `ep_size` consecutive ranks, each holding every expert
    once; expert-data-parallel groups take every `ep_size`-th rank and all-reduce the same experts."""
    if world % ep_size:
        raise TrixmedError("model.moe.ep_size", f"{ep_size} does not divide the world size {world}")
    ep = [list(range(g * ep_size, (g + 1) * ep_size)) for g in range(world // ep_size)]
    edp = [list(range(r, world, ep_size)) for r in range(ep_size)]
    return {"ep_size": ep_size, "experts_per_rank": num_experts // ep_size, "groups": ep, "data_groups": edp}


def format_plan(plan: dict[str, Any]) -> str:
    lines = [f"plan for {plan['run_dir']}"]
    lines += [f"  {s['stage']:<9} {s['status']:<28} → {s['output']}" for s in plan["stages"]]
    lines.append(f"world size {plan['world_size']} on {plan['device']}, ZeRO stage {plan['zero_stage']}, {plan['precision']}")
    lines.append(f"backbone {plan['backbone']}; {plan['experts']}")
    lines.append(_format_expert_parallel(plan["expert_parallel"]))
    for phase, p in plan["phases"].items():
        lines.append(f"  {phase:<8} {p['epochs']} epochs, batch {p['effective_batch']} = {p['micro_batch_per_worker']} × "
                     f"{plan['world_size']} workers × {p['grad_accumulation']} accumulation, lr {p['lr']:g} "
                     f"({p['warmup_steps']} warm-up steps), clip {p['grad_clip']:g}")
    m = plan["memory"]
    unit = "GPU" if "GPU" in plan["device"] else "worker"
    if "error" in m:
        lines.append(f"memory per {unit}: unknown ({m['error']})")
    else:
        lines.append(f"memory per {unit} (experts phase; {m['source']}):")
        lines.append(f"  parameters: {m['total_params'] / 1e6:,.1f} M total, {m['trainable_params'] / 1e6:,.2f} M trainable (experts phase)")
        lines.append(f"  model states: frozen weights {_size(m['frozen_gib'])} + trainable states {_size(m['trainable_gib'])} "
                     f"(DeepSpeed {m['estimator']}) = {_size(m['per_device_gib'])}")
        a = m["activations"]
        lines.append(f"  activations ≈ {_size(a['gib'])} (micro-batch {a['micro_batch']} × sequence {a['sequence']}, "
                     f"{a['layers']} layers, {'gradient checkpointing' if a['checkpointing'] else 'no checkpointing'}, "
                     f"{a['precision']})")
        lines.append(f"  total ≈ {_size(m['total_gib'])}")
    return "\n".join(lines)


def _format_expert_parallel(ep: dict[str, Any]) -> str:
    if ep["ep_size"] == 1:
        return f"expert parallelism: off (ep_size 1; every rank holds all {ep['experts_per_rank']} experts)"
    shown = " ".join("[" + ",".join(map(str, g)) + "]" for g in ep["groups"][:8]) + (" …" if len(ep["groups"]) > 8 else "")
    data = " ".join("[" + ",".join(map(str, g)) + "]" for g in ep["data_groups"][:8]) + (" …" if len(ep["data_groups"]) > 8 else "")
    return (f"expert parallelism: ep_size {ep['ep_size']}, {len(ep['groups'])} expert-parallel groups {shown}, "
            f"{ep['experts_per_rank']} experts per rank; expert-data-parallel groups {data}")


def _size(gib: float) -> str:
    return f"{gib:.2f} GiB" if gib >= 0.1 else f"{gib * 1024:.1f} MiB"


# --------------------------------------------------------------------------------------------
# `trixmed plan`: one cluster shape


def shaped(cfg: Config, nodes: int, gpus_per_node: int, tune: bool = False) -> Config:
    """`cfg` as it runs on `nodes` × `gpus_per_node` GPUs: one worker per GPU (slurm/job.sh derives
    `trixmed run`'s worker count so). A Tune trial keeps the config's worker count, on GPUs. With no
    GPUs the config's own CPU workers are kept (spread over the nodes)."""
    if gpus_per_node <= 0:
        return cfg
    workers = cfg.distributed.num_workers if tune else nodes * gpus_per_node
    d = dataclasses.replace(cfg.distributed, num_workers=workers, use_gpu=True)
    return dataclasses.replace(cfg, distributed=d, plan=dataclasses.replace(cfg.plan, gpus_per_node=gpus_per_node))


def check_shape(cfg: Config, nodes: int, gpus_per_node: int, gpu_memory_gib: float,
                config_name: str = "config", *, cpus_per_node: float | None = None, tune: bool = False,
                mem_per_node_gib: float | None = None) -> dict[str, Any]:
    """The plan of `cfg` on this shape (of one Tune trial with `tune`), or a one-line TrixmedError
    naming the first thing that cannot divide or cannot fit and the smallest shape that would, or,
    for what the allocation lacks (CPUs, host memory), the sbatch option or config key that fixes
    it. `cpus_per_node` / `mem_per_node_gib` None: not checked."""
    if nodes < 1:
        raise TrixmedError("--nodes", f"must be >= 1, got {nodes}")
    if gpus_per_node < 0:
        raise TrixmedError("--gpus-per-node", f"must be >= 0, got {gpus_per_node}")
    if gpus_per_node and gpu_memory_gib <= 0:
        raise TrixmedError("--gpu-memory", f"must be > 0, got {gpu_memory_gib:g}")
    if cpus_per_node is not None and cpus_per_node <= 0:
        raise TrixmedError("--cpus-per-node", f"must be > 0, got {cpus_per_node:g}")
    if mem_per_node_gib is not None and mem_per_node_gib <= 0:
        raise TrixmedError("--mem-per-node", f"must be > 0, got {mem_per_node_gib:g}")
    counts = _counts_or_error(cfg)
    problem = _shape_problem(cfg, nodes, gpus_per_node, gpu_memory_gib, counts, cpus_per_node, tune)
    if problem:
        suggestion = _suggestion(cfg, nodes, gpus_per_node, gpu_memory_gib, counts, cpus_per_node, tune)
        raise TrixmedError(config_name, f"{problem}; {suggestion}")
    run_cfg = shaped(cfg, nodes, gpus_per_node, tune)
    needs = node_needs(run_cfg, nodes, gpus_per_node, counts, tune)
    problem = _allocation_problem(needs, gpus_per_node, cpus_per_node, mem_per_node_gib)
    if problem:
        raise TrixmedError(config_name, problem)
    plan = build_plan(run_cfg, counts)
    plan["shape"] = {"nodes": nodes, "gpus_per_node": gpus_per_node, "gpu_memory_gib": gpu_memory_gib,
                     "usable_gib": gpu_memory_gib * USABLE_GPU_FRACTION,
                     "trials": cfg.tune.max_concurrent_trials if tune else None,
                     "cpus_per_node": cpus_per_node, "mem_per_node_gib": mem_per_node_gib}
    plan["needs"] = needs
    return plan


def format_shape(plan: dict[str, Any], config_name: str) -> str:
    s = plan["shape"]
    if s["gpus_per_node"]:
        head = (f"{config_name} on {s['nodes']} node(s) × {s['gpus_per_node']} GPUs: world size {plan['world_size']}, "
                f"ZeRO stage {plan['zero_stage']}, {plan['precision']}")
    else:
        head = (f"{config_name} on {s['nodes']} node(s), CPU only: world size {plan['world_size']} "
                f"(distributed.num_workers), ZeRO stage {plan['zero_stage']}, {plan['precision']}")
    if s["trials"]:
        head += (f"; tune: {s['trials']} trial(s) at a time, each with this world size "
                 f"({s['trials'] * plan['world_size']} workers in all)")
    lines = [head, format_plan(plan)]
    m = plan["memory"]
    if s["gpus_per_node"] and "error" not in m:
        lines.append(f"fits: {_size(m['total_gib'])} per GPU of {s['gpu_memory_gib']:.4g} GiB "
                     f"({USABLE_GPU_FRACTION:.0%} usable = {s['usable_gib']:.1f} GiB)")
    lines.append("per node, phase by phase (Ray resources):")
    for need in plan["needs"]["phases"]:
        lines.append(f"  {need['phase']:<8} {need['count']} × ({_bundle(need['bundle'])}) = "
                     f"{_bundle({k: v * need['count'] for k, v in need['bundle'].items()})}"
                     + (f" of {s['cpus_per_node']:g} CPUs" if s["cpus_per_node"] is not None else ""))
    host = plan["needs"]["host"]
    if host:
        line = (f"host memory per node: {_copies(host)} × {_size(host['each_gib'])} "
                f"({host['what']}) = {_size(host['gib'])}")
        if s["mem_per_node_gib"] is not None:
            line += (f" of {s['mem_per_node_gib'] * USABLE_HOST_FRACTION:.1f} GiB usable "
                     f"({USABLE_HOST_FRACTION:.0%} of {s['mem_per_node_gib']:.1f} GiB; Ray's object store holds the rest)")
        lines.append(line)
    return "\n".join(lines)


def _bundle(bundle: dict[str, float]) -> str:
    return " + ".join(f"{v:g} {k}" for k, v in bundle.items() if v)


# Ray's object store takes 30 % of a job's memory per node (slurm/ray-node.sh caps it there)
USABLE_HOST_FRACTION = 0.7
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def node_needs(run_cfg: Config, nodes: int, gpus_per_node: int, counts: dict[str, Any] | None,
               tune: bool) -> dict[str, Any]:
    """What one node must hold in each phase that asks Ray for resources (the phases run one after
    another, so each is checked alone), and the host memory of the processes that load the model:
    the busiest node's share, as Ray may pack them."""
    d, e, st = run_cfg.distributed, run_cfg.extract, run_cfg.stratify
    trials = run_cfg.tune.max_concurrent_trials if tune else 1
    workers = d.num_workers * trials
    per_node = min(gpus_per_node, workers) if gpus_per_node and d.use_gpu else math.ceil(workers / nodes)
    phases = [{"phase": "training", "count": per_node, "total": workers, "bundle": worker_resources(d)},
              {"phase": "extract", "count": math.ceil(e.actors / nodes), "total": e.actors,
               "bundle": {"GPU": e.gpus_per_actor, "CPU": e.cpus_per_actor}},
              {"phase": "stratify", "count": math.ceil(st.num_workers / nodes), "total": st.num_workers,
               "bundle": {"CPU": st.cpus_per_worker}}]
    host = None
    if counts is not None:
        host = _host_memory(run_cfg, counts, phases[0]["count"], phases[1]["count"])
    return {"nodes": nodes, "phases": phases, "host": host}


def _host_memory(run_cfg: Config, counts: dict[str, Any], trainers: int, extractors: int) -> dict[str, Any]:
    """Copies of the model one node holds while its training ranks (or extract actors) load it.
    A memory-mapped checkpoint is one copy in the page cache, shared, until a process writes its
    weights: on CPU, DeepSpeed's start-up broadcast overwrites every non-source rank's (ranks on
    GPUs write their device copies). A cast checkpoint, or the codes backbone, is one per process."""
    processes = max(trainers, extractors)
    if run_cfg.model.backbone != "hf":
        each = (counts["frozen"] + counts["trainable"]) * 4 / GIB
        return {"processes": processes, "copies": processes, "each_gib": each, "gib": processes * each,
                "what": "the model, built by each"}
    dtype = run_cfg.model.hf.torch_dtype
    each = counts["frozen"] * _DTYPE_BYTES[dtype] / GIB
    weights = counts["weights"]
    what = weights["what"]
    if not weights["mapped"]:
        copies = processes
    elif run_cfg.distributed.use_gpu:
        copies, what = 1, f"{what}, memory-mapped: {processes} processes share one copy"
    else:
        copies = max(trainers, 1)
        what = f"{what}, memory-mapped, but DeepSpeed's start-up broadcast writes a copy into each CPU worker"
    if weights["assumed"]:
        what += f"; {weights['assumed']}"
    return {"processes": processes, "copies": copies, "each_gib": each, "gib": copies * each, "what": what}


def _copies(host: dict[str, Any]) -> str:
    return f"{host['copies']} cop{'y' if host['copies'] == 1 else 'ies'}"


def _allocation_problem(needs: dict[str, Any], gpus_per_node: int, cpus_per_node: float | None,
                        mem_per_node_gib: float | None) -> str | None:
    """The first phase whose busiest node needs more CPUs (or GPUs, for extraction) than a node
    has, or processes that need more host memory; the problem and its fix, in one line."""
    keys = {"training": ("distributed.cpus_per_worker", "workers"), "extract": ("extract.cpus_per_actor", "actors"),
            "stratify": ("stratify.cpus_per_worker", "workers")}
    for need in needs["phases"]:
        key, who = keys[need["phase"]]
        gpu = need["bundle"].get("GPU", 0)
        if need["phase"] == "extract" and gpu and gpu * need["count"] > gpus_per_node:
            fits = math.floor(gpus_per_node / gpu + 1e-9) * needs["nodes"]
            fix = (f"extract.actors={fits}" if fits else "--gpus-per-node=1") + ", or extract.gpus_per_actor=0 (extract on CPU)"
            return (f"extract.gpus_per_actor: {need['count']} actors per node × {gpu:g} GPU = {gpu * need['count']:g} GPUs, "
                    f"but a node has {gpus_per_node}; fix: {fix}")
        cpu = need["bundle"]["CPU"]
        if cpus_per_node is not None and cpu * need["count"] > cpus_per_node + 1e-9:
            want = math.ceil(cpu * need["count"] - 1e-9)
            each = math.floor(cpus_per_node / need["count"] * 100) / 100
            return (f"{key}: {need['count']} {who} per node × {cpu:g} CPUs = {cpu * need['count']:g} CPUs, but a node has "
                    f"{cpus_per_node:g}; fix: sbatch --cpus-per-task={want}, or {key}={each:g}")
    host = needs["host"]
    if host and mem_per_node_gib is not None and host["gib"] > mem_per_node_gib * USABLE_HOST_FRACTION:
        want = math.ceil(host["gib"] / USABLE_HOST_FRACTION)
        return (f"host memory: {_copies(host)} per node × {host['each_gib']:.1f} GiB ({host['what']}) = "
                f"{host['gib']:.1f} GiB, but {mem_per_node_gib * USABLE_HOST_FRACTION:.1f} GiB of the node's "
                f"{mem_per_node_gib:.1f} GiB is usable ({USABLE_HOST_FRACTION:.0%}; Ray's object store holds the rest); "
                f"fix: sbatch --mem={want}G (or --mem=0: the node's all)")
    return None


def _counts_or_error(cfg: Config) -> dict[str, Any] | None:
    try:
        return param_counts(cfg)
    except TrixmedError:
        return None   # estimate_memory reports it; the shape is still checked for divisibility


def _shape_problem(cfg: Config, nodes: int, gpus_per_node: int, gpu_memory_gib: float,
                   counts: dict[str, Any] | None, cpus_per_node: float | None, tune: bool) -> str | None:
    """The first reason `cfg` cannot run on this shape, as `key: problem`, or None."""
    run_cfg = shaped(cfg, nodes, gpus_per_node, tune)
    world = run_cfg.distributed.num_workers
    try:
        expert_parallel_groups(world, cfg.model.moe.num_experts, cfg.model.moe.ep_size)
        batch_split(run_cfg)
    except TrixmedError as exc:
        return str(exc)
    crowded = _placement_problem(run_cfg, nodes, gpus_per_node, cpus_per_node, tune)
    if crowded:
        return crowded
    if gpus_per_node and counts is not None:
        m = estimate_memory(run_cfg, counts)
        usable = gpu_memory_gib * USABLE_GPU_FRACTION
        if m["total_gib"] > usable:
            return (f"memory: ≈ {m['total_gib']:.1f} GiB per GPU (model states {m['per_device_gib']:.1f} + activations "
                    f"{m['activations']['gib']:.1f}) exceeds {usable:.1f} GiB usable of {gpu_memory_gib:g} GiB")
    return None


def _placement_problem(run_cfg: Config, nodes: int, gpus_per_node: int, cpus_per_node: float | None,
                       tune: bool) -> str | None:
    """Whether every training worker (of every concurrent trial, for a sweep) finds a node with a
    GPU (and, for a sweep, `distributed.cpus_per_worker` CPUs: a run's CPUs are the allocation's
    check, `_allocation_problem`). A worker cannot span nodes, so the room is counted per node; the
    trials' own processes (`tune.trial_cpus`, a hundredth of a CPU) are left out."""
    d = run_cfg.distributed
    per_node = []
    if gpus_per_node:
        per_node.append(gpus_per_node)
    if cpus_per_node is not None and tune:
        per_node.append(math.floor(cpus_per_node / d.cpus_per_worker + 1e-9))   # 0.3 / 0.1 is 2.999… in floats
    trials = run_cfg.tune.max_concurrent_trials if tune else 1
    room = nodes * min(per_node) if per_node else None
    if room is None or d.num_workers * trials <= room:
        return None
    if tune:
        key = "tune.max_concurrent_trials"
        who = f"{trials} trials at a time × {d.num_workers} workers (distributed.num_workers) = {trials * d.num_workers} workers"
    else:
        key, who = ("distributed.cpus_per_worker" if gpus_per_node else "distributed.num_workers"), f"{d.num_workers} workers"
    each = f"1 GPU + {d.cpus_per_worker:g} CPU" if gpus_per_node else f"{d.cpus_per_worker:g} CPU"
    node = " + ".join(([f"{gpus_per_node} GPUs"] if gpus_per_node else []) +
                      ([f"{cpus_per_node:g} CPUs"] if cpus_per_node is not None else []))
    return f"{key}: {who} of {each} each; {nodes} node(s) × {node} hold {room}"


def _suggestion(cfg: Config, nodes: int, gpus_per_node: int, gpu_memory_gib: float, counts: dict[str, Any] | None,
                cpus_per_node: float | None, tune: bool) -> str:
    """The shape with the fewest GPUs (then nodes) that divides and fits: nodes filled up to
    `gpus_per_node`. A CPU job gets a worker count, and so does a sweep no shape helps (its trials'
    worker count is the config's, whatever the shape)."""
    if gpus_per_node > 0:
        for total in range(1, MAX_SUGGESTED_NODES * gpus_per_node + 1):
            if total <= gpus_per_node:
                n, g = 1, total
            elif total % gpus_per_node == 0:
                n, g = total // gpus_per_node, gpus_per_node
            else:
                continue
            if _shape_problem(cfg, n, g, gpu_memory_gib, counts, cpus_per_node, tune) is None:
                return f"smallest shape that fits: --nodes {n} --gpus-per-node {g}"
        if not tune:
            return f"no shape up to {MAX_SUGGESTED_NODES} nodes × {gpus_per_node} GPUs fits"
    for workers in range(1, 257):
        trial = dataclasses.replace(cfg, distributed=dataclasses.replace(cfg.distributed, num_workers=workers))
        if _shape_problem(trial, nodes, gpus_per_node, gpu_memory_gib, counts, cpus_per_node, tune) is None:
            return f"smallest that fits: distributed.num_workers={workers}"
    return "no worker count up to 256 fits"


# --------------------------------------------------------------------------------------------
# Memory


def estimate_memory(cfg: Config, counts: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        counts = counts or param_counts(cfg)
    except TrixmedError as exc:
        return {"error": str(exc)}
    d = cfg.distributed
    world = d.num_workers
    nodes = max(1, math.ceil(world / cfg.plan.gpus_per_node))
    per_node = min(world, cfg.plan.gpus_per_node)
    # with experts partitioned over ep_size ranks a rank holds 1/ep_size of the experts' LoRA
    # weights (the partitioned optimizer states are spread over world/ep_size ranks instead of world:
    # per rank the same share)
    ep = cfg.model.moe.ep_size
    trainable = counts["trainable"] - counts["expert_trainable"] + counts["expert_trainable"] // ep
    if d.zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        _, gpu, _ = estimate_zero3_model_states_mem_needs(
            trainable, counts["largest_trainable"], per_node, nodes, cpu_offload=False, cpu_offload_params=False, zero_init=True)
        estimator = "estimate_zero3_model_states_mem_needs"
        frozen = counts["frozen"] * _BYTES[d.precision] / world + counts["largest_layer"] * _BYTES[d.precision]
    else:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        # ZeRO-0 keeps everything on every rank: the stage-2 formula with one GPU
        gpus, n = (per_node, nodes) if d.zero_stage else (1, 1)
        _, gpu = estimate_zero2_model_states_mem_needs(trainable, gpus, n, cpu_offload=False)
        estimator = "estimate_zero2_model_states_mem_needs" + (" (ZeRO-1 keeps full gradients: a lower bound)" if d.zero_stage == 1 else "")
        frozen = counts["frozen"] * _BYTES[d.precision]
    activations = estimate_activations(cfg, counts["arch"])
    states = (frozen + gpu) / GIB
    return {
        "source": counts["source"],
        "total_params": counts["frozen"] + counts["trainable"],
        "trainable_params": counts["trainable"],
        "frozen_gib": frozen / GIB,
        "trainable_gib": gpu / GIB,
        "per_device_gib": states,
        "estimator": estimator,
        "activations": activations,
        "total_gib": states + activations["gib"],
    }


def estimate_activations(cfg: Config, arch: dict[str, int]) -> dict[str, Any]:
    """Activation memory of one experts-phase micro-batch, forward kept for backward.

    Per layer and token a Llama-style block keeps about 8·h + 4·kv + 4·i values (norm inputs,
    q/k/v, attention output with SDPA — no S² score matrix —, o_proj input, the MLP's gate, up and
    product), and each MoE-LoRA linear adds its input, its E·r expert activations and its output
    (`lora_values`). With gradient checkpointing only every layer's input (h per token) is kept,
    plus one layer's full set while it is recomputed. A rough figure (in the manner of Korthikanti
    et al. 2022), good for telling 10 GiB from 100 GiB, not 10 from 12.
    """
    h, kv, inter, layers = arch["hidden"], arch["kv"], arch["intermediate"], arch["layers"]
    if cfg.model.backbone == "hf":
        seq, checkpointing = cfg.model.hf.max_length, cfg.model.hf.gradient_checkpointing
    else:
        seq, checkpointing = cfg.model.codes.max_visits, False
    micro = cfg.experts.micro_batch_size
    per_layer = 8 * h + 4 * kv + 4 * inter + arch["lora_values"] / max(layers, 1)
    tokens = micro * seq
    values = tokens * (layers * h + per_layer) if checkpointing else tokens * layers * per_layer
    values += tokens * h * 2   # the final hidden states and their fp32 copy for pooling
    return {"gib": values * _BYTES[cfg.distributed.precision] / GIB, "micro_batch": micro, "sequence": seq,
            "layers": layers, "checkpointing": checkpointing, "precision": cfg.distributed.precision}


def param_counts(cfg: Config) -> dict[str, Any]:
    """Frozen/trainable parameter counts and the block shape of the experts phase, built on the
    meta device (no weights)."""
    import torch

    experts = cfg.model.moe.num_experts if cfg.model.moe.router != "none" else 1
    if cfg.model.backbone == "hf":
        from transformers import AutoModelForCausalLM

        from trixmed.models.model import medication_head

        arch_config, arch_file = _architecture(cfg)
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(arch_config)
        c = lm.config
        hidden = c.hidden_size
        n_med = cfg.data.processing.top_med
        base = sum(p.numel() for p in lm.parameters())
        largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in lm.modules())
        adapted = [m for name, m in lm.named_modules()
                   if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in cfg.model.lora.targets)]
        lora = sum(cfg.model.lora.rank * (m.in_features + m.out_features) for m in adapted)
        router = hidden * experts + experts if cfg.model.moe.router == "learned" else 0
        if cfg.model.moe.router == "triage":
            router = cfg.stratify.num_clusters * experts + experts
        with torch.device("meta"):
            head = medication_head(cfg.model, hidden, n_med, fixed_titles=True)
        trainable = lora * experts + sum(p.numel() for p in head.parameters()) + router
        heads = c.num_attention_heads
        arch = {"hidden": hidden, "layers": c.num_hidden_layers, "intermediate": c.intermediate_size,
                "kv": getattr(c, "num_key_value_heads", heads) * (getattr(c, "head_dim", None) or hidden // heads),
                "lora_values": sum(m.in_features + m.out_features + experts * cfg.model.lora.rank for m in adapted)}
        return {"frozen": base, "trainable": trainable, "expert_trainable": lora * experts, "largest_layer": largest, "arch": arch,
                "largest_trainable": max(p.numel() for p in head.parameters()), "source": f"architecture from {arch_file}, n_med≈{n_med}",
                "weights": _weights(cfg)}

    from trixmed.data.dataset import Dataset, Vocab
    from trixmed.data.drugs import drug_table
    from trixmed.models import build_model

    ds_root = RunDir(cfg.run_dir).dataset
    if (ds_root / "vocab.json").is_file():
        vocab, source = Dataset(ds_root).vocab, f"codes backbone, vocabulary of {ds_root}"
    else:
        p = cfg.data.processing
        vocab = Vocab(*([f"x{i}" for i in range(n)] for n in (p.top_diag, p.top_diag, p.top_med)))
        source = "codes backbone, vocabulary sizes capped by data.processing"
    # title-word embeddings are left out: a few thousand word vectors, not worth loading the titles
    model_cfg = dataclasses.replace(cfg.model, codes=dataclasses.replace(cfg.model.codes, title_words=False))
    # the drug tower's size does not depend on which drugs have molecules
    drugs = drug_table(vocab.med) if cfg.model.head == "drug_tower" else None
    model = build_model(dataclasses.replace(cfg, model=model_cfg), vocab, phase="experts", num_clusters=cfg.stratify.num_clusters,
                        drugs=drugs)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    adapted = [m for m in model.modules() if hasattr(m, "base_layer") and isinstance(m.base_layer, torch.nn.Linear)]
    d = cfg.model.codes.d_model
    arch = {"hidden": d, "layers": cfg.model.codes.n_layers, "intermediate": 4 * d, "kv": d,
            "lora_values": sum(m.base_layer.in_features + m.base_layer.out_features + experts * cfg.model.lora.rank
                               for m in adapted)}
    expert_trainable = sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and ".experts_" in name)
    return {"frozen": frozen, "trainable": trainable, "expert_trainable": expert_trainable, "largest_layer": largest,
            "largest_trainable": largest, "arch": arch, "source": source}


def _weights(cfg: Config) -> dict[str, Any]:
    """Whether the checkpoint's weights stay memory-mapped when loaded (models/checkpoint.py), and
    what they are in words; planned from a laptop, it is assumed stored in `torch_dtype`."""
    from trixmed.models.checkpoint import weights_mapped

    try:
        mapped, what = weights_mapped(cfg.model.hf)
        return {"mapped": mapped, "what": what, "assumed": None}
    except TrixmedError:
        dtype = cfg.model.hf.torch_dtype
        return {"mapped": True, "what": f"the {dtype} checkpoint",
                "assumed": f"assumed stored as {dtype}: it is not on this machine"}


def _architecture(cfg: Config) -> tuple[Any, str]:
    """The hf checkpoint's architecture (no weights) and where it was read: the checkpoint itself
    when it is on this machine, else `plan.arch_config` (planning a cluster run from a laptop)."""
    from transformers import AutoConfig

    from trixmed.models.checkpoint import load_arch_config, locate

    try:
        where = str(locate(cfg.model.hf).where)
        return load_arch_config(cfg.model.hf), where
    except TrixmedError:
        if not cfg.plan.arch_config:
            raise TrixmedError(f"model.hf.{cfg.model.hf.sources()[0]}",
                               "checkpoint not on this machine; set plan.arch_config to its config.json") from None
    if not Path(cfg.plan.arch_config).is_file():
        raise TrixmedError(cfg.plan.arch_config, "not found (plan.arch_config)")
    return AutoConfig.from_pretrained(cfg.plan.arch_config), cfg.plan.arch_config
