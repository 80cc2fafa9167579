"""Expert parallelism for the MoE-LoRA experts (see docs/model.md for the design choice)."""

from trixmed.parallel.expert_parallel import (
    ExpertParallel,
    gather_expert_state,
    optimizer_param_groups,
    setup_expert_parallel,
)

__all__ = ["ExpertParallel", "gather_expert_state", "optimizer_param_groups", "setup_expert_parallel"]
