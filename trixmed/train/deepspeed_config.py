"""PhaseConfig + DistributedConfig → the DeepSpeed config dict, and the batch arithmetic behind it.

The effective batch is fixed by the config and the world size only changes how it is split:
`effective = micro × world × grad_accumulation`. Keeping the global batch fixed is what makes a
1-worker and a 2-worker run follow the same loss curve.
"""

from __future__ import annotations

from collections.abc import Callable

from typing import Any

from trixmed.config import DistributedConfig, PhaseConfig
from trixmed.errors import TrixmedError


def grad_accumulation_steps(phase: PhaseConfig, world_size: int, where: str = "phase") -> int:
    """Micro-batches each worker accumulates per optimizer step."""
    per_step = phase.micro_batch_size * world_size
    if phase.effective_batch_size % per_step:
        raise TrixmedError(
            f"{where}.effective_batch_size",
            f"{phase.effective_batch_size} is not a multiple of micro_batch_size × workers = "
            f"{phase.micro_batch_size} × {world_size}",
        )
    return phase.effective_batch_size // per_step


def build_deepspeed_config(phase: PhaseConfig, dist: DistributedConfig, world_size: int, where: str = "phase", *,
                           engine_clips: bool = True) -> dict[str, Any]:
    """The DeepSpeed config for one phase. The optimizer (torch AdamW) and the lr schedule
    (`linear_warmup`) are passed to `deepspeed.initialize` as client objects, see engine.py.
    `engine_clips=False`: the caller clips the gradients itself (`DeepSpeedStrategy.step`)."""
    accum = grad_accumulation_steps(phase, world_size, where)
    zero: dict[str, Any] = {"stage": dist.zero_stage}
    if dist.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = dist.stage3_param_persistence_threshold
        # saving a usable model needs the full weights gathered on rank 0
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config: dict[str, Any] = {
        "train_batch_size": phase.effective_batch_size,
        "train_micro_batch_size_per_gpu": phase.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": phase.grad_clip if engine_clips else 0.0,
        "zero_optimization": zero,
        # a client torch AdamW avoids JIT-compiling DeepSpeed's fused CPU Adam (~80 s, STACK.md)
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,   # the engine logs on rank 0 itself
        "wall_clock_breakdown": False,
    }
    if dist.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif dist.precision == "fp16":
        config["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return config


def linear_warmup(warmup_steps: int) -> Callable[[int], float]:
    """LambdaLR factor: the first optimizer step already uses lr/warmup_steps, full lr from step
    `warmup_steps` on. (DeepSpeed's WarmupLR spends its first step at lr 0.)"""
    n = max(warmup_steps, 1)
    return lambda step: min(1.0, (step + 1) / n)
