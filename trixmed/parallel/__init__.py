"""Expert parallelism for the MoE-LoRA experts, wrapped around the model from outside (see docs/model.md)."""

from trixmed.parallel.expert_parallel import (
    ExpertParallel,
    full_state_dict,
    optimizer_param_groups,
    setup_expert_parallel,
)

__all__ = ["ExpertParallel", "full_state_dict", "optimizer_param_groups", "setup_expert_parallel"]
