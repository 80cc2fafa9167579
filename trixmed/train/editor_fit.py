"""Training FLAME's list-wise editor (trixmed/models/editor.py): supervised fine-tuning on edits
built from the point-wise model's errors, then step-wise GRPO. Plain PyTorch in one process: the
policy is a small MLP over precomputed inputs.

    SFT   from each training visit's point-wise set, the demonstrator fixes one error at a time,
          the one nearest the decision threshold first; at every set it visits the target is
          uniform over every correct edit (add a missed drug, remove a false positive), or stop
          once none is left.
    GRPO  per visit, `group_size` trajectories sampled from the policy before the update. Each
          step n gets the advantage
              A_n = (R − mean_group R) / (std_group R + ε) + λ · (φ(S_n) − φ(S_{n−1})),
              R   = φ(S_final),   φ(S) = Jaccard(S) − α · DDI(S) − β · [S = ∅]
          and the loss is PPO's clipped ratio against that sampling policy.

DDI(S) is the share of interacting pairs among the set's pairs (0 below two drugs). "Refusal": in
a masked action space the editor cannot emit an invalid edit, so the one way it can decline to
prescribe is to edit the set down to nothing; β charges that. The epoch kept is the one whose
greedy edits score the best validation Jaccard.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trixmed.config import EditorConfig
from trixmed.models.editor import EditorPolicy, rollout

GROUP_EPS = 1e-6


@dataclass
class EditorData:
    """One split's inputs: the experts model's outputs, its decided sets and the true sets."""

    patient: Tensor   # [N, H] pooled patient vectors
    probs: Tensor     # [N, M]
    start: Tensor     # [N, M] bool: the point-wise decided sets
    truth: Tensor     # [N, M] bool

    @classmethod
    def of(cls, patient: np.ndarray, probs: np.ndarray, start: np.ndarray, truth: np.ndarray) -> EditorData:
        return cls(torch.as_tensor(patient, dtype=torch.float32), torch.as_tensor(probs, dtype=torch.float32),
                   torch.as_tensor(start, dtype=torch.bool), torch.as_tensor(truth, dtype=torch.bool))

    def __len__(self) -> int:
        return len(self.start)


def phi(sets: Tensor, truth: Tensor, ddi: Tensor, alpha: float, beta: float) -> Tensor:
    """φ = Jaccard − α·DDI − β·[empty] of sets [..., M] against truth [..., M]; `ddi` [M, M] 0/1."""
    s, t = sets.float(), truth.float()
    inter = (s * t).sum(-1)
    union = ((s + t) > 0).float().sum(-1)
    jaccard = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    k = s.sum(-1)
    pairs = k * (k - 1) / 2
    interacting = ((s @ ddi) * s).sum(-1) / 2
    rate = torch.where(pairs > 0, interacting / pairs.clamp(min=1), torch.zeros_like(pairs))
    return jaccard - alpha * rate - beta * (k == 0).float()


def sft_target(current: Tensor, truth: Tensor) -> Tensor:
    """[B, 2M + 1]: uniform over the correct edits of each set (add a missed drug, remove a false
    positive), or all on stop where the set is already right."""
    add = truth & ~current
    remove = current & ~truth
    done = ~(add.any(1) | remove.any(1))
    target = torch.cat([add, remove, done[:, None]], dim=1).float()
    return target / target.sum(1, keepdim=True)


def sft_states(data: EditorData, threshold: float, max_edits: int) -> tuple[Tensor, Tensor, Tensor]:
    """The sets the demonstrator visits: (visit index [K], set [K, M], target [K, 2M + 1]).
    From the start set it fixes the error nearest the threshold at each step; a visit contributes
    its sets before each of its first `max_edits` fixes, and its fixed set (target stop) when it
    has no more errors than that."""
    current, truth = data.start.clone(), data.truth
    margin = (data.probs - threshold).abs()
    alive = torch.ones(len(current), dtype=torch.bool)
    rows = torch.arange(len(current))
    visits, sets, targets = [], [], []
    for step in range(max_edits + 1):
        errors = current ^ truth
        wrong = errors.any(1)
        keep = alive & (~wrong if step == max_edits else torch.ones_like(wrong))
        visits.append(rows[keep])
        sets.append(current[keep])
        targets.append(sft_target(current[keep], truth[keep]))
        if step == max_edits:
            break
        fix = alive & wrong
        j = torch.where(errors, margin, torch.full_like(margin, float("inf"))).argmin(1)
        current = current.clone()
        current[rows[fix], j[fix]] = ~current[rows[fix], j[fix]]
        alive = fix
    return torch.cat(visits), torch.cat(sets), torch.cat(targets)


def grpo_advantages(phis: Tensor, taken: Tensor, group_size: int, step_weight: float) -> Tensor:
    """Per-step advantages [steps, N] from φ of every rollout state [steps + 1, N] (N = visits ×
    `group_size`, each visit's trajectories adjacent). The list reward φ(final) is normalised
    within each visit's group (population std); steps not `taken` get 0."""
    final = phis[-1].view(-1, group_size)
    normalised = (final - final.mean(1, keepdim=True)) / (final.std(1, unbiased=False, keepdim=True) + GROUP_EPS)
    advantage = normalised.reshape(1, -1) + step_weight * (phis[1:] - phis[:-1])
    return torch.where(taken, advantage, torch.zeros_like(advantage))


def edit_greedy(policy: EditorPolicy, data: EditorData, max_edits: int, batch_size: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
    """The editor's sets [N, M] and each visit's adds and removes [N]."""
    policy.eval()
    finals, adds, removes = [], [], []
    for lo in range(0, len(data), batch_size):
        sl = slice(lo, lo + batch_size)
        r = rollout(policy, data.patient[sl], data.probs[sl], data.start[sl], max_edits, greedy=True)
        finals.append(r.final)
        n_med = policy.n_med
        adds.append(((r.actions >= 0) & (r.actions < n_med)).sum(0))
        removes.append(((r.actions >= n_med) & (r.actions < 2 * n_med)).sum(0))
    return torch.cat(finals), torch.cat(adds), torch.cat(removes)


def fit_editor(train: EditorData, val: EditorData, ddi: np.ndarray, cfg: EditorConfig, *, alpha: float, threshold: float,
               seed: int, score: Callable[[np.ndarray], float],
               progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> tuple[EditorPolicy, list[dict[str, Any]], dict[str, Any]]:
    """Train the editor (SFT epochs, then GRPO epochs); `score` maps validation sets [N, M] to the
    validation Jaccard. Returns the policy of the best-scoring epoch, every epoch's record and
    the kept one's."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    policy = EditorPolicy(train.patient.shape[1], train.probs.shape[1], cfg.hidden)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    adj = torch.as_tensor((np.asarray(ddi) != 0) | (np.asarray(ddi) != 0).T, dtype=torch.float32).fill_diagonal_(0)

    sft_visit, sft_set, sft_goal = sft_states(train, threshold, cfg.max_edits)
    sft_batches = -(-len(sft_visit) // cfg.batch_size)
    grpo_batches = -(-len(train) // cfg.batch_size) * cfg.ppo_epochs
    total, position = cfg.sft_epochs * sft_batches + cfg.grpo_epochs * grpo_batches, 0
    history: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Tensor] | None, dict[str, Any]] = (float("-inf"), None, {})

    def update(loss: Tensor, losses: list[float], postfix: dict[str, Any]) -> None:
        nonlocal position
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        position += 1
        if progress:
            progress(position, total, postfix)

    def record(phase: str, epoch: int, loss: float) -> None:
        nonlocal best
        sets, adds, removes = edit_greedy(policy, val, cfg.max_edits)
        row = {"phase": phase, "epoch": epoch, "loss": round(loss, 6), "val_jaccard": score(sets.numpy()),
               "val_edits_per_visit": float((adds + removes).float().mean())}
        history.append(row)
        if row["val_jaccard"] > best[0]:   # ties keep the earlier epoch
            best = (row["val_jaccard"], copy.deepcopy(policy.state_dict()), row)

    for epoch in range(1, cfg.sft_epochs + 1):
        policy.train()
        losses = []
        for idx in torch.randperm(len(sft_visit), generator=gen).split(cfg.batch_size):
            v = sft_visit[idx]
            logp = torch.log_softmax(policy(train.patient[v], train.probs[v], sft_set[idx]), dim=1)
            goal = sft_goal[idx]
            # masked actions have log-probability −inf and target 0: leave them out, not 0·(−inf)
            loss = -torch.where(goal > 0, goal * logp, torch.zeros_like(logp)).sum(1).mean()
            update(loss, losses, {"phase": "sft", "loss": round(loss.item(), 4)})
        record("sft", epoch, float(np.mean(losses)) if losses else 0.0)

    group = cfg.group_size
    for epoch in range(1, cfg.grpo_epochs + 1):
        losses = []
        for idx in torch.randperm(len(train), generator=gen).split(cfg.batch_size):
            v = idx.repeat_interleave(group)
            patient, probs, truth = train.patient[v], train.probs[v], train.truth[v]
            policy.eval()
            r = rollout(policy, patient, probs, train.start[v], cfg.max_edits, generator=gen)
            phis = phi(r.states, truth, adj, alpha, cfg.refusal_weight)
            taken = r.taken
            advantage = grpo_advantages(phis, taken, group, cfg.step_weight)[taken]
            steps, rows = taken.nonzero(as_tuple=True)
            old_logp, actions = r.logp[taken], r.actions[taken]
            policy.train()
            for _ in range(cfg.ppo_epochs):
                logp = torch.log_softmax(policy(patient[rows], probs[rows], r.states[steps, rows]), dim=1)
                ratio = (logp.gather(1, actions[:, None]).squeeze(1) - old_logp).exp()
                clipped = ratio.clamp(1 - cfg.clip, 1 + cfg.clip)
                loss = -torch.minimum(ratio * advantage, clipped * advantage).mean()
                update(loss, losses, {"phase": "grpo", "reward": round(float(phis[-1].mean()), 4)})
        record("grpo", epoch, float(np.mean(losses)) if losses else 0.0)

    policy.load_state_dict(best[1])
    return policy.eval(), history, best[2]
