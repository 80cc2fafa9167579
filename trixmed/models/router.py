"""Routers: which experts a patient uses and with what weights.

    triage   Z = OneHot(c)·W_e + b_e on the patient's cluster id c (the paper's router)
    learned  Z = W_g·x̄ + b_g on the mean input embedding x̄ of the sample ("Std. MoE" ablation)

Both give G = softmax(Z), the top-n weights Γ and indices I, and the load-balancing loss
L_aux = E · Σ_e f_e · r_e with f_e the share of patients whose top-n contains e and r_e the mean
of G[:, e]. Routing is per patient, so it is computed once per forward, before the backbone runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Routing:
    weights: Tensor   # Γ [B, n]
    indices: Tensor   # I [B, n] long, global expert ids
    gates: Tensor     # G [B, E]
    aux_loss: Tensor  # 0-dim
    counts: Tensor    # [E] long: samples that selected each expert
    # [rows, r] drug-group rank mask of each row the adapters see (model.drug_groups), else None
    rank_mask: Tensor | None = None


def route(logits: Tensor, top_n: int, renormalize: bool = False) -> Routing:
    """Softmax, top-n and the Switch-style auxiliary loss of router logits Z [B, E]."""
    num_experts = logits.shape[-1]
    gates = logits.float().softmax(dim=-1)
    weights, indices = gates.topk(top_n, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    selected = F.one_hot(indices, num_experts).sum(dim=1)  # [B, E], 0/1 since top-k indices are distinct
    f = selected.float().mean(dim=0)
    r = gates.mean(dim=0)
    aux = num_experts * (f * r).sum()
    return Routing(weights.to(logits.dtype), indices, gates, aux, selected.sum(dim=0))


class TriageRouter(nn.Module):
    """Cluster id → expert affinities. The number of experts may differ from the number of clusters."""

    def __init__(self, num_clusters: int, num_experts: int):
        super().__init__()
        # W_e[c] is OneHot(c)·W_e. Random (not zero) init so that clusters start on different experts
        # instead of all tying on experts 0..n-1.
        self.W_e = nn.Parameter(torch.randn(num_clusters, num_experts))
        self.b_e = nn.Parameter(torch.zeros(num_experts))

    def forward(self, cluster: Tensor) -> Tensor:
        return self.W_e[cluster] + self.b_e


class LearnedRouter(nn.Module):
    """A standard gate on the sample's pooled input embeddings (no clusters)."""

    def __init__(self, hidden: int, num_experts: int):
        super().__init__()
        self.gate = nn.Linear(hidden, num_experts)

    def forward(self, features: Tensor) -> Tensor:
        # the gate may be half precision (DeepSpeed bf16/fp16); the routing softmax stays fp32
        return self.gate(features.to(self.gate.weight.dtype)).float()
