"""`trixmed run --dry-run`: validate a config and print what a run would do, without training.

The memory line uses DeepSpeed's own model-state estimators for the *trainable* parameters
(LoRA / experts / head: weights, gradients and Adam states, partitioned per the ZeRO stage) plus
the frozen backbone weights at the run's precision (partitioned only under ZeRO-3, where one
layer at a time is gathered in full). Activations are not included.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trixmed.config import Config
from trixmed.errors import TrixmedError
from trixmed.run_dir import RunDir
from trixmed.train.deepspeed_config import build_deepspeed_config

_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def build_plan(cfg: Config) -> dict[str, Any]:
    from trixmed.pipeline.stages import STAGES, config_hash, input_hash

    d = cfg.distributed
    world = d.num_workers
    rd = RunDir(cfg.run_dir)
    stages = []
    upstream_runs = False   # once a stage re-runs, every later stage gets new inputs
    for name, stage in STAGES.items():
        try:
            done = not upstream_runs and rd.is_complete(name, input_hash(cfg, rd, stage), config_hash(cfg, stage.keys(cfg)))
            status = "up to date (skip)" if done else ("will run (after its inputs)" if upstream_runs else "will run")
        except TrixmedError:
            status = "will run (after its inputs)"
        upstream_runs = upstream_runs or not status.startswith("up to date")
        stages.append({"stage": name, "output": str(rd.stage_dir(name)), "status": status})
    phases = {}
    for phase in ("warmup", "experts"):
        ds_cfg = build_deepspeed_config(getattr(cfg, phase), d, world, phase)   # validates the batch split
        phases[phase] = {
            "epochs": getattr(cfg, phase).epochs,
            "micro_batch_per_worker": ds_cfg["train_micro_batch_size_per_gpu"],
            "grad_accumulation": ds_cfg["gradient_accumulation_steps"],
            "effective_batch": ds_cfg["train_batch_size"],
            "lr": getattr(cfg, phase).lr,
            "warmup_steps": getattr(cfg, phase).warmup_steps,
            "grad_clip": getattr(cfg, phase).grad_clip,
        }
    return {
        "run_dir": str(rd.root),
        "stages": stages,
        "world_size": world,
        "device": "GPU (nccl)" if d.use_gpu else "CPU (gloo)",
        "zero_stage": d.zero_stage,
        "precision": d.precision,
        "backbone": cfg.model.backbone,
        "experts": f"{cfg.model.moe.num_experts} experts, top-{cfg.model.moe.top_n}, router {cfg.model.moe.router}, ep_size {cfg.model.moe.ep_size}",
        "phases": phases,
        "memory": estimate_memory(cfg),
    }


def format_plan(plan: dict[str, Any]) -> str:
    lines = [f"plan for {plan['run_dir']}"]
    lines += [f"  {s['stage']:<9} {s['status']:<28} → {s['output']}" for s in plan["stages"]]
    lines.append(f"world size {plan['world_size']} on {plan['device']}, ZeRO stage {plan['zero_stage']}, {plan['precision']}")
    lines.append(f"backbone {plan['backbone']}; {plan['experts']}")
    for phase, p in plan["phases"].items():
        lines.append(f"  {phase:<8} {p['epochs']} epochs, batch {p['effective_batch']} = {p['micro_batch_per_worker']} × "
                     f"{plan['world_size']} workers × {p['grad_accumulation']} accumulation, lr {p['lr']:g} "
                     f"({p['warmup_steps']} warm-up steps), clip {p['grad_clip']:g}")
    m = plan["memory"]
    if "error" in m:
        lines.append(f"memory per {'GPU' if 'GPU' in plan['device'] else 'worker'}: unknown ({m['error']})")
    else:
        lines.append(f"memory per {'GPU' if 'GPU' in plan['device'] else 'worker'} (model states, no activations; {m['source']}):")
        lines.append(f"  parameters: {m['total_params'] / 1e6:,.1f} M total, {m['trainable_params'] / 1e6:,.2f} M trainable (experts phase)")
        lines.append(f"  frozen weights {_size(m['frozen_gib'])} + trainable states {_size(m['trainable_gib'])} "
                     f"(DeepSpeed {m['estimator']}) = {_size(m['per_device_gib'])}")
    return "\n".join(lines)


def _size(gib: float) -> str:
    return f"{gib:.2f} GiB" if gib >= 0.1 else f"{gib * 1024:.1f} MiB"


def estimate_memory(cfg: Config) -> dict[str, Any]:
    try:
        counts = _param_counts(cfg)
    except TrixmedError as exc:
        return {"error": str(exc)}
    d = cfg.distributed
    world = d.num_workers
    nodes = max(1, math.ceil(world / cfg.plan.gpus_per_node))
    per_node = min(world, cfg.plan.gpus_per_node)
    trainable = counts["trainable"]
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
    gib = 1024**3
    return {
        "source": counts["source"],
        "total_params": counts["frozen"] + trainable,
        "trainable_params": trainable,
        "frozen_gib": frozen / gib,
        "trainable_gib": gpu / gib,
        "per_device_gib": (frozen + gpu) / gib,
        "estimator": estimator,
    }


def _param_counts(cfg: Config) -> dict[str, Any]:
    """Frozen/trainable parameter counts of the experts phase, built on the meta device (no weights)."""
    import torch

    if cfg.model.backbone == "hf":
        from transformers import AutoConfig, AutoModelForCausalLM

        candidates = [Path(cfg.model.hf.path) / "config.json"] if cfg.model.hf.path else []
        if cfg.plan.arch_config:
            candidates.append(Path(cfg.plan.arch_config))
        arch = next((c for c in candidates if c.is_file()), None)
        if arch is None:
            raise TrixmedError("model.hf.path", "model directory not on this machine; set plan.arch_config to its config.json")
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(arch)))
        hidden = lm.config.hidden_size
        n_med = cfg.data.processing.top_med
        base = sum(p.numel() for p in lm.parameters())
        largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in lm.modules())
        experts = cfg.model.moe.num_experts if cfg.model.moe.router != "none" else 1
        lora = sum(
            cfg.model.lora.rank * (m.in_features + m.out_features)
            for name, m in lm.named_modules()
            if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in cfg.model.lora.targets)
        )
        router = hidden * experts + experts if cfg.model.moe.router == "learned" else 0
        if cfg.model.moe.router == "triage":
            router = cfg.stratify.num_clusters * experts + experts
        trainable = lora * experts + hidden * n_med + n_med + router
        return {"frozen": base, "trainable": trainable, "largest_layer": largest,
                "largest_trainable": hidden * n_med, "source": f"architecture from {arch}, n_med≈{n_med}"}

    import dataclasses

    from trixmed.data.dataset import Dataset, Vocab
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
    model = build_model(dataclasses.replace(cfg, model=model_cfg), vocab, phase="experts", num_clusters=cfg.stratify.num_clusters)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return {"frozen": frozen, "trainable": trainable, "largest_layer": largest, "largest_trainable": largest, "source": source}
