"""LoRA and MoE-LoRA linear layers (the `codes` backbone's own; `hf` uses peft for warm-up).

    LoRA      y = W x + s · B A x
    MoE-LoRA  y = W x + s · Σ_{e ∈ top-n} Γ_e · B_e A_e x        (s = alpha / rank)

Routing is per sample and fixed for the whole forward, so the model hands every MoE-LoRA layer a
`Dispatch` once per forward (`MedRecModel` does it) instead of each layer recomputing the gate.
The local dispatch runs all E experts as one rank-(E·r) adapter with per-sample weights (zero
outside the top-n), so a layer costs two dense matmuls and no per-sample gathers.

Drug-group adapters (LAMO, `model.drug_groups`): the rank r of an adapter is cut into G blocks of
r/G, block g being the adapter of drug group g. A per-sample rank mask [B, r] (ones on the row's
block, zeros elsewhere) scales the low-rank activations h = A x, so a row's delta is s · B_g A_g x
and the other blocks add exactly nothing and get no gradient from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """A frozen-or-not base linear plus one low-rank adapter (peft's init: A Kaiming, B zero)."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.Parameter(torch.empty(rank, base_layer.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # set per forward by MedRecModel with drug groups on; kept after it, as gradient
        # checkpointing re-runs the layer during backward
        self.rank_mask: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.rank_mask is None:
            # the expression this layer had before drug groups, kept whole: a run without groups
            # reproduces earlier runs bit for bit (naming the intermediate moved MIMIC-III's warm-up
            # losses by 1e-7 from its fourth step under DeepSpeed, and test Jaccard by 0.0016)
            return self.base_layer(x) + (self.lora_dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling
        h = self.lora_dropout(x) @ self.lora_A.t()
        return self.base_layer(x) + (mask_rank(h, self.rank_mask) @ self.lora_B.t()) * self.scaling


def mask_rank(h: Tensor, rank_mask: Tensor | None) -> Tensor:
    """Low-rank activations h [B, *, r] with row b's columns scaled by rank_mask [B, r]; h itself
    without a mask."""
    if rank_mask is None:
        return h
    return h * rank_mask.view(rank_mask.shape[0], *([1] * (h.dim() - 2)), rank_mask.shape[1]).to(h.dtype)


class Dispatch(Protocol):
    def delta(self, x: Tensor, A: Tensor, B: Tensor) -> Tensor:
        """Σ_j Γ_j B_{I_j} A_{I_j} x per sample; x [batch, *, in], A [E_local, r, in], B [E_local, r, out] (Bᵀ)."""
        ...


class LocalDispatch:
    """Every expert is on this rank (ep_size = 1).

    All E adapters run as one rank-(E·r) adapter, [A_1; …; A_E] and [B_1, …, B_E], with each
    sample's rank-r slice e scaled by its weight Γ_e (0 for experts outside its top-n, so they add
    exactly nothing and get no gradient). Two dense matmuls per layer: with E·r ≪ hidden size this
    beat gathering each sample's top-n adapters (per-sample gathers, their scatter-add backward and
    many tiny bmm calls) by a wide margin on CPU; see docs/model.md.

    With drug groups, `rank_mask` [B, r] (the sample's group block) also scales each expert's
    slice, so it costs nothing beyond the per-sample scale that is there anyway.
    """

    def __init__(self, weights: Tensor, indices: Tensor, num_experts: int, rank_mask: Tensor | None = None):
        self.mix = weights.new_zeros(weights.shape[0], num_experts).scatter(1, indices, weights)  # [B, E]
        self.rank_mask = rank_mask
        self._scale: Tensor | None = None   # mix repeated over each expert's rank, built on first use

    def delta(self, x: Tensor, A: Tensor, B: Tensor) -> Tensor:
        experts, rank, _ = A.shape
        if self._scale is None:
            scale = self.mix.repeat_interleave(rank, dim=1)
            if self.rank_mask is not None:
                scale = scale * self.rank_mask.to(scale.dtype).repeat(1, experts)
            self._scale = scale[:, None, :]
        xs = x.reshape(x.shape[0], -1, x.shape[-1])
        h = (xs @ A.reshape(experts * rank, -1).t()) * self._scale.to(x.dtype)     # [B, T, E·r]
        y = h @ B.reshape(experts * rank, -1)                                      # [B, T, out]
        return y.reshape(*x.shape[:-1], y.shape[-1])


class MoELoRALinear(nn.Module):
    """A frozen base linear plus E LoRA experts mixed per sample by the router's top-n weights."""

    def __init__(self, base_layer: nn.Linear, num_experts: int, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        self.num_experts = num_experts
        self.experts_A = nn.Parameter(torch.empty(num_experts, rank, base_layer.in_features))
        # stored transposed, [E, r, out], so the stacked [B_1, …, B_E]ᵀ is a free reshape
        self.experts_B = nn.Parameter(torch.zeros(num_experts, rank, base_layer.out_features))
        for e in range(num_experts):
            nn.init.kaiming_uniform_(self.experts_A[e], a=math.sqrt(5))
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dispatch: Dispatch | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.dispatch is None:
            raise RuntimeError("MoELoRALinear called before MedRecModel.forward set its routing")
        # experts may be kept in a wider dtype than a bf16 base, as peft does for LoRA
        delta = self.dispatch.delta(self.lora_dropout(x).to(self.experts_A.dtype), self.experts_A, self.experts_B)
        return self.base_layer(x) + (delta * self.scaling).to(x.dtype)

    def load_adapter(self, lora_A: Tensor, lora_B: Tensor) -> None:
        """Make every expert a copy of one LoRA adapter (experts start from f_warm)."""
        with torch.no_grad():
            self.experts_A.copy_(lora_A.to(self.experts_A.dtype).expand_as(self.experts_A))
            self.experts_B.copy_(lora_B.t().to(self.experts_B.dtype).expand_as(self.experts_B))


def adapt_linears(root: nn.Module, targets: list[str], make: Callable[[nn.Linear], nn.Module]) -> list[str]:
    """Replace every nn.Linear whose name ends with one of `targets` by `make(linear)`; return their paths."""
    names = [
        name for name, m in root.named_modules()
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    ]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, make(getattr(parent, child)))
    return names
