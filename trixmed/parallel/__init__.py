"""Parallelism wrapped around the model from outside: expert parallelism for the MoE-LoRA experts
(see docs/model.md), and data-parallel gradients averaged through shared memory (shared_memory.py)."""

from trixmed.parallel.expert_parallel import (
    ExpertParallel,
    full_state_dict,
    optimizer_param_groups,
    setup_expert_parallel,
)

__all__ = ["ExpertParallel", "full_state_dict", "optimizer_param_groups", "setup_expert_parallel"]
