"""DeepSpeed around a model, from outside: process group, expert parallelism, optimizer groups,
the engine, checkpoints and the export of gathered weights.

The trainer only sees `DeepSpeedStrategy`; the model sees nothing of it. Expert parallelism is
set up here (before the optimizer is built, so DeepSpeed learns which parameters are experts),
and the export gathers both kinds of partitioning — ZeRO-3's parameter shards and experts held
by other ranks — before rank 0 writes the model.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from trixmed.config import DistributedConfig, MoEConfig, PhaseConfig
from trixmed.train.deepspeed_config import build_deepspeed_config, linear_warmup

DS_TAG = "engine"   # DeepSpeed also writes a file named "latest" beside the tag directory


def join_process_group(use_gpu: bool) -> None:
    """Join this process's group from the env:// variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE) Ray
    Train or a worker group set: nccl on GPUs, gloo on CPUs. DeepSpeed keeps the group; joining
    again is a no-op, so a long-lived rank joins once and its trainers each call this."""
    import deepspeed

    # The shared-memory comm op is not used over gloo; building it costs 20-30 s (STACK.md).
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")


class DeepSpeedStrategy:
    def __init__(self, dist_cfg: DistributedConfig, moe: MoEConfig):
        self.dist_cfg, self.moe = dist_cfg, moe
        self.rank, self.world = 0, 1
        self.device = torch.device("cpu")
        self.expert_parallel: Any = None
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dist_cfg.precision)

    def setup_distributed(self, rank: int, world: int, local_rank: int) -> torch.device:
        """Join the process group whoever runs the trainer prepared (`join_process_group`)."""
        join_process_group(self.dist_cfg.use_gpu)
        self.rank, self.world = rank, world
        if self.dist_cfg.use_gpu:
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        return self.device

    def prepare(self, model: torch.nn.Module, phase_cfg: PhaseConfig, where: str) -> Any:
        """The DeepSpeed engine for `model`: experts partitioned when ep_size > 1, a client AdamW
        with a linear lr warm-up, ZeRO stage, precision, accumulation and clipping from the config."""
        import deepspeed

        from trixmed.parallel import optimizer_param_groups, setup_expert_parallel

        if self.moe.ep_size > 1 and getattr(model, "phase", None) == "experts":
            self.expert_parallel = setup_expert_parallel(model, self.moe.ep_size)
        groups = optimizer_param_groups(model, phase_cfg.lr, phase_cfg.weight_decay, self.expert_parallel)
        optimizer = torch.optim.AdamW(groups, lr=phase_cfg.lr, weight_decay=phase_cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup(phase_cfg.warmup_steps))
        ds_config = build_deepspeed_config(phase_cfg, self.dist_cfg, self.world, where)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
        return engine

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Move tensors; floating inputs follow the engine's precision (labels too: the loss upcasts)."""
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device)
                if self.dtype is not None and v.is_floating_point():
                    v = v.to(self.dtype)
            out[k] = v
        return out

    def save_checkpoint(self, engine: Any, directory: str | Path) -> None:
        engine.save_checkpoint(str(directory), tag=DS_TAG)   # every rank: its own shards and experts

    def load_checkpoint(self, engine: Any, directory: str | Path) -> None:
        engine.load_checkpoint(str(directory), tag=DS_TAG)

    def export(self, engine: Any, directory: Path) -> None:
        """The full model, gathered from every rank, written by rank 0 (a collective: all ranks call it)."""
        import deepspeed

        from trixmed.models import save_model
        from trixmed.parallel import full_state_dict

        model = engine.module
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            state = full_state_dict(model, self.expert_parallel)
            if self.rank == 0:
                save_model(model, directory, state)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        import torch.distributed as dist

        # on this rank's device: NCCL, the GPU backend, reduces no host tensors
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Row j of rank r's `local` becomes row j*world + r (the order of `shard_for_eval`)."""
        import torch.distributed as dist

        local = local.to(self.device)   # as in all_reduce_sum: NCCL gathers device tensors only
        gathered = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        return torch.stack(gathered, 1).reshape(-1, local.shape[1]).cpu()

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()
