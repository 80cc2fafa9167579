"""Experts partitioned over `ep_size` ranks with a dropless all-to-all, usable under DeepSpeed ZeRO-1/2.

Each rank of an expert-parallel group keeps E / ep_size experts of every MoE-LoRA layer. Routing is
per patient and known before the backbone runs, so the dispatch plan (which (sample, slot) rows go
to which rank, and the receivers' local expert ids) is exchanged once per forward; each adapted
layer then costs two uneven `all_to_all_single` calls (rows out, low-rank deltas back) through
torch.distributed.nn, whose autograd sends the gradients back the same way. The Γ weighting is
applied on the sending rank, so router gradients stay local.

DeepSpeed is told about the experts the way its own MoE layers do it: the expert parameters carry
`allreduce=False` and `group_name="ep_size_<n>"` (its expert/expert-data groups), the optimizer
groups are split with `split_params_into_different_moe_groups_for_optimizer`, and a parameter-free
`deepspeed.moe.layer.MoE` marker makes the engine configure its MoE gradient reduction: expert
gradients are then reduced over the expert-data-parallel group only, never as shared parameters.

The model itself knows nothing of this: `setup_expert_parallel` swaps the model's dispatch seam
(`MedRecModel.make_dispatch`) for the all-to-all one from outside.

    deepspeed.init_distributed(...)
    model = build_model(...); model.init_experts_from_warmup(state)
    ep = setup_expert_parallel(model, cfg.model.moe.ep_size)   # before building the optimizer
    groups = optimizer_param_groups(model, lr, weight_decay, ep)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(groups), ...)
    state = full_state_dict(model, ep)                         # every rank; rank 0 saves it
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from trixmed.errors import TrixmedError
from trixmed.models.lora import MoELoRALinear
from trixmed.models.router import Routing


MARKER = "ep_marker"   # submodule name of DeepSpeed's MoE marker (its state entries are views)


class ExpertParallel:
    """The expert-parallel group of this rank and the experts it holds."""

    def __init__(self, group: Any, group_name: str, ep_size: int, num_experts: int):
        self.group, self.group_name, self.ep_size = group, group_name, ep_size
        self.rank = dist.get_rank(group)
        self.num_experts = num_experts
        self.num_local = num_experts // ep_size
        self.first_expert = self.rank * self.num_local

    def dispatch(self, routing: Routing) -> AllToAllDispatch:
        if routing.rank_mask is not None:
            raise TrixmedError("model.drug_groups", "needs model.moe.ep_size 1: the expert-parallel dispatch "
                               "does not carry the drug groups' rank masks")
        return AllToAllDispatch(self, routing.weights, routing.indices)

    def gather_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """`state` with every expert tensor gathered from the group (all ranks must call it)."""
        out = dict(state)
        for k, v in state.items():
            if _is_expert_key(k):
                parts = [torch.empty_like(v) for _ in range(self.ep_size)]
                dist.all_gather(parts, v.detach().contiguous(), group=self.group)
                out[k] = torch.cat(parts)
        return out


class AllToAllDispatch:
    """One forward's routing plan: rows to send, counts both ways, receivers' local expert ids."""

    def __init__(self, ep: ExpertParallel, weights: Tensor, indices: Tensor):
        self.ep = ep
        self.batch, n = indices.shape
        flat = indices.reshape(-1)
        owner = flat // ep.num_local
        order = torch.argsort(owner, stable=True)
        self.rows = torch.arange(self.batch, device=indices.device).repeat_interleave(n)[order]
        self.weights = weights.reshape(-1)[order]
        send = torch.bincount(owner, minlength=ep.ep_size)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=ep.group)
        self.send, self.recv = send.tolist(), recv.tolist()
        self.experts = torch.empty(sum(self.recv), dtype=flat.dtype, device=flat.device)
        dist.all_to_all_single(self.experts, (flat % ep.num_local)[order].contiguous(), self.recv, self.send, group=ep.group)
        self.length: int | None = None   # common sequence length, agreed on the first layer

    def delta(self, x: Tensor, A: Tensor, B: Tensor) -> Tensor:
        from torch.distributed.nn.functional import all_to_all_single

        shape = x.shape
        xs = x.reshape(self.batch, -1, shape[-1])
        t = xs.shape[1]
        if self.length is None:
            # every layer of one forward sees the same sequence length, so one collective per forward
            agreed = torch.tensor([t], device=x.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=self.ep.group)
            self.length = int(agreed)
        xs = F.pad(xs, (0, 0, 0, self.length - t))
        out_rows = xs[self.rows]
        received = all_to_all_single(out_rows.new_empty(sum(self.recv), self.length, shape[-1]), out_rows,
                                     self.recv, self.send, group=self.ep.group)
        y = torch.bmm(torch.bmm(received, A[self.experts].transpose(1, 2)), B[self.experts])
        back = all_to_all_single(y.new_empty(len(self.rows), self.length, y.shape[-1]), y,
                                 self.send, self.recv, group=self.ep.group)
        back = back * self.weights[:, None, None].to(back.dtype)
        out = back.new_zeros(self.batch, self.length, back.shape[-1]).index_add(0, self.rows, back)
        return out[:, :t].reshape(*shape[:-1], out.shape[-1])


def setup_expert_parallel(model: nn.Module, ep_size: int) -> ExpertParallel | None:
    """Keep this rank's share of every MoE-LoRA layer's experts and tag them for DeepSpeed.

    Call after `deepspeed.init_distributed` and `init_experts_from_warmup`, before building the
    optimizer. A no-op (None) for ep_size 1 or a model without MoE-LoRA layers.
    """
    layers = model.moe_layers
    if ep_size == 1 or not layers:
        return None
    from deepspeed.utils import groups

    if not dist.is_initialized():
        raise RuntimeError("setup_expert_parallel needs torch.distributed initialised (deepspeed.init_distributed)")
    world = dist.get_world_size()
    num_experts = layers[0].num_experts
    if world % ep_size or num_experts % ep_size:
        raise TrixmedError("model.moe.ep_size", f"{ep_size} must divide the world size {world} and num_experts {num_experts}")
    if layers[0].experts_A.shape[0] != num_experts:
        raise RuntimeError("experts are already partitioned: call setup_expert_parallel once, after init_experts_from_warmup")
    name = f"ep_size_{ep_size}"
    if name not in groups._get_expert_parallel_group_dict():
        groups._create_expert_and_data_parallel(ep_size)
    ep = ExpertParallel(groups._get_expert_parallel_group(name), name, ep_size, num_experts)
    local = slice(ep.first_expert, ep.first_expert + ep.num_local)
    for layer in layers:
        for attr in ("experts_A", "experts_B"):
            old = getattr(layer, attr)
            p = nn.Parameter(old.data[local].clone(), requires_grad=old.requires_grad)
            p.allreduce = False        # DeepSpeed: an expert parameter, reduced over its expert-data group
            p.group_name = name
            setattr(layer, attr, p)
    model.make_dispatch = ep.dispatch
    model.add_module(MARKER, _deepspeed_marker(model, ep))
    return ep


def optimizer_param_groups(model: nn.Module, lr: float, weight_decay: float,
                           ep: ExpertParallel | None = None) -> list[dict[str, Any]]:
    """Trainable parameters as optimizer groups; expert-parallel experts in DeepSpeed's MoE groups."""
    params = [p for p in model.parameters() if p.requires_grad]
    param_groups = [{"params": params, "lr": lr, "weight_decay": weight_decay, "name": "trainable"}]
    if ep is None:
        return param_groups
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    return [g for g in split_params_into_different_moe_groups_for_optimizer(param_groups) if g["params"]]


def full_state_dict(model: nn.Module, ep: ExpertParallel | None,
                    state: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The model's state (or `state`) as if unpartitioned: every expert gathered from its group and
    DeepSpeed's marker views left out. With `ep` set, every rank of the group must call it."""
    state = model.state_dict() if state is None else state
    if ep is None:
        return state
    return ep.gather_state({k: v for k, v in state.items() if not k.startswith(MARKER + ".")})


def _is_expert_key(key: str) -> bool:
    return key.endswith((".experts_A", ".experts_B"))


def _deepspeed_marker(model: nn.Module, ep: ExpertParallel) -> nn.Module:
    """A parameter-free `deepspeed.moe.layer.MoE`. The engine enables MoE gradient reduction only when
    it finds an instance of that class, and its checkpoints keep experts in per-expert files named
    after `deepspeed_moe.experts.deepspeed_experts.<i>`: the marker presents this rank's experts under
    those names (views of the real parameters) so `engine.save_checkpoint` / `load_checkpoint`
    store and restore every rank's experts. Its forward is never called."""
    from deepspeed.moe.layer import MoE

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, MoELoRALinear)]

    class ExpertView(nn.Module):
        """Local expert i of every MoE-LoRA layer, as state_dict entries `layer<j>.A` / `layer<j>.B`."""

        def __init__(self, i: int):
            super().__init__()
            self.i = i

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            for j, (_, layer) in enumerate(layers):
                for part, p in (("A", layer.experts_A), ("B", layer.experts_B)):
                    destination[f"{prefix}layer{j}.{part}"] = p[self.i] if keep_vars else p.detach()[self.i]

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
            with torch.no_grad():
                for j, (_, layer) in enumerate(layers):
                    for part, p in (("A", layer.experts_A), ("B", layer.experts_B)):
                        key = f"{prefix}layer{j}.{part}"
                        if key in state_dict:
                            p[self.i].copy_(state_dict[key])
                        elif strict:
                            missing_keys.append(key)

    class ExpertParallelMarker(MoE):
        def __init__(self) -> None:
            nn.Module.__init__(self)
            self.num_experts, self.ep_size = ep.num_experts, ep.ep_size
            self.num_local_experts = ep.num_local
            self.expert_group_name = ep.group_name
            self.enable_expert_tensor_parallelism = False
            # registered after the backbone, so on load these views win over the (rank-0) copies
            # of the expert tensors that DeepSpeed's shared model file also holds
            self.deepspeed_moe = nn.Module()
            self.deepspeed_moe.experts = nn.Module()
            self.deepspeed_moe.experts.deepspeed_experts = nn.ModuleList(ExpertView(i) for i in range(ep.num_local))

        def set_deepspeed_parallelism(self, use_data_before_expert_parallel_: bool = False) -> None:
            pass  # groups were created by setup_expert_parallel

        def forward(self, *args: Any) -> None:
            raise RuntimeError("ExpertParallelMarker is a marker for DeepSpeed, not a layer")

    return ExpertParallelMarker()
