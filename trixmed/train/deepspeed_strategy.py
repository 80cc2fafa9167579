"""DeepSpeed around a model, from outside: process group, expert parallelism, optimizer groups,
the engine, checkpoints and the export of gathered weights.

The trainer only sees `DeepSpeedStrategy`; the model sees nothing of it. Expert parallelism is
set up here (before the optimizer is built, so DeepSpeed learns which parameters are experts),
and the export gathers both kinds of partitioning — ZeRO-3's parameter shards and experts held
by other ranks — before rank 0 writes the model.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterable
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

    _skip_unused_deepspeed_parts()
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")


MUON_MODULES = ("deepspeed.runtime.zero.muon.muon_optimizer", "deepspeed.runtime.zero.muon.original_muon")


def _skip_unused_deepspeed_parts() -> None:
    """Two parts of DeepSpeed that trixmed never uses would cost every rank start-up time:
    - the shared-memory comm op, not used over gloo: building it costs 20-30 s (STACK.md);
    - Muon. To ask whether the optimizer is its Muon, DeepSpeed imports Muon's modules (ZeRO 1-3,
      bf16), which compile their kernels as they load: torch._inductor, 1.2 s a rank on 2 cores in
      every phase. trixmed's optimizer is always its own AdamW (`prepare`), so stand-ins answer:
      a class nothing is an instance of, and updates that are never called. Modules already
      loaded stay as they are."""
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None

    class MuonWithAuxAdam:   # never instantiated: isinstance(AdamW(...), MuonWithAuxAdam) is False
        pass

    def muon_step(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("DeepSpeed applied a Muon update, but trixmed's optimizer is AdamW and "
                           "Muon's modules are stand-ins here (deepspeed_strategy.py)")

    for name in MUON_MODULES:
        if name not in sys.modules:
            module = types.ModuleType(name, "trixmed's stand-in: Muon is never trixmed's optimizer")
            module.MuonWithAuxAdam = MuonWithAuxAdam   # type: ignore[attr-defined]
            module.muon_update = module.adam_update = muon_step   # type: ignore[attr-defined]
            sys.modules[name] = module


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float,
                   norms: torch.Tensor | None = None) -> torch.Tensor:
    """Scale the gradients to a total 2-norm of at most `max_norm`, as DeepSpeed's ZeRO-0 float32
    path does (`deepspeed.runtime.utils.clip_grad_norm_`), less its all-reduce of the norm. That
    all-reduce averages the ranks' norms because expert-parallel ranks hold different gradients;
    where every rank holds the same reduced gradients it is the norm itself. Same operations in
    the same order, so the same bits as DeepSpeed's on 1 or 2 ranks (more ranks: DeepSpeed's sum
    of W copies of norm/W rounds). `norms`: every gradient's norm in parameter order, where this
    rank holds only its share of them (a sharded step). Returns the norm before clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if norms is None:
        norms = torch.stack([g.detach().float().norm(2.0) for g in grads])
    total = norms.pow(2.0).sum().float().pow(0.5)
    coef = torch.min(torch.tensor([1.0], device=total.device),
                     torch.tensor([float(max_norm)], device=total.device) / (total + 1e-6))
    for g in grads:
        g.mul_(coef)
    return total


class DeepSpeedStrategy:
    def __init__(self, dist_cfg: DistributedConfig, moe: MoEConfig):
        self.dist_cfg, self.moe = dist_cfg, moe
        self.rank, self.world = 0, 1
        self.device = torch.device("cpu")
        self.expert_parallel: Any = None
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dist_cfg.precision)
        self.clip_norm: float | None = None   # set by `prepare` when `step` clips, not the engine
        self.shared_grads: Any = None         # set by `prepare` when `step` averages the gradients, not the engine
        self.optimizer: torch.optim.Optimizer | None = None

    def clips_itself(self, phase_cfg: PhaseConfig) -> bool:
        """Whether `step` clips the gradients rather than the engine: on DeepSpeed's ZeRO-0 float32
        path (the only one where its engine clips with `clip_grad_norm_`; ZeRO and bf16/fp16 have
        their optimizers clip) when every rank holds every expert, so all ranks hold the same
        reduced gradients. There the engine's clipping costs one more collective every step:
        5–7 % of a 2-rank CPU step of configs/mimic3_codes.yaml, with its per-tensor norms."""
        return phase_cfg.grad_clip > 0 and self._plain_zero0()

    def averages_itself(self) -> bool:
        """Whether `step` may average the gradients through shared memory rather than the engine's
        gloo all-reduce (`trixmed/parallel/shared_memory.py`): on the same ZeRO-0 float32 path, on
        CPU ranks, when there is more than one. `prepare` then tries whether the ranks share a host."""
        return self._plain_zero0() and not self.dist_cfg.use_gpu and self.world > 1

    def _plain_zero0(self) -> bool:
        """DeepSpeed's ZeRO-0 float32 path with every expert on every rank: every rank holds the
        same full gradients after the average."""
        return self.dist_cfg.zero_stage == 0 and self.dist_cfg.precision == "fp32" and self.moe.ep_size == 1

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
        self.optimizer = optimizer = torch.optim.AdamW(groups, lr=phase_cfg.lr, weight_decay=phase_cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup(phase_cfg.warmup_steps))
        clips = self.clips_itself(phase_cfg)
        self.clip_norm = phase_cfg.grad_clip if clips else None
        ds_config = build_deepspeed_config(phase_cfg, self.dist_cfg, self.world, where, engine_clips=not clips)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
        self.shared_grads = None
        if self.averages_itself():
            from trixmed.parallel.shared_memory import SharedMemoryGradients

            # the parameters DeepSpeed's ZeRO-0 all-reduce would average (`_get_gradients_for_reduction`)
            params = [p for p in model.parameters() if p.requires_grad and p.numel()]
            self.shared_grads = SharedMemoryGradients.open(params, self.rank, self.world)
            engine.enable_backward_allreduce = self.shared_grads is None
            how = "shared memory" if self.shared_grads else "DeepSpeed's all-reduce (no /dev/shm file all ranks can map)"
            print(f"[{where}] gradients averaged over {self.world} ranks through {how}", flush=True)
        return engine

    def step(self, engine: Any) -> None:
        """`engine.step()` after a micro-batch's backward; at an optimizer step's boundary the
        gradients are first averaged over the ranks where the engine's backward did not (shared
        memory: each rank then updates its share of the parameters, and publishes it after the
        step), then clipped where `clips_itself`."""
        boundary = engine.is_gradient_accumulation_boundary()
        shared = self.shared_grads if boundary else None
        if shared is not None:
            shared.average()
        if boundary and self.clip_norm is not None:
            clip_grad_norm(engine.module.parameters(), self.clip_norm, shared.grad_norms() if shared else None)
        engine.step()
        if shared is not None:
            shared.publish()

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
        """Every rank (a collective): its own shards and experts; a sharded step's optimizer state
        whole in it, as an unsharded run's."""
        if self.shared_grads is not None:
            self.shared_grads.gather_state(self.optimizer)
        engine.save_checkpoint(str(directory), tag=DS_TAG)
        if self.shared_grads is not None:
            self.shared_grads.keep_own_state(self.optimizer)

    def load_checkpoint(self, engine: Any, directory: str | Path) -> None:
        engine.load_checkpoint(str(directory), tag=DS_TAG)
        if self.shared_grads is not None:
            self.shared_grads.keep_own_state(self.optimizer)

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
        return self.all_reduce_sum_started(values)()

    def all_reduce_sum_started(self, values: list[float]) -> Callable[[], list[float]]:
        """`all_reduce_sum`, started now; the returned function waits for its answer. Every rank
        must start the same reductions in the same order, as with any collective."""
        import torch.distributed as dist

        # on this rank's device: NCCL, the GPU backend, reduces no host tensors
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        work = dist.all_reduce(t, async_op=True)

        def answer() -> list[float]:
            work.wait()
            return t.tolist()

        return answer

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
