"""FLAME's list-wise editor (NeurIPS 2025): a point-wise model decides a medication set, then a
policy that sees the whole set adds and removes drugs one at a time.

The editor only reads what the experts model outputs, so it is the same for either backbone. Per
visit it sees the pooled patient vector (detached: the editor never trains the experts model), the
per-drug probabilities p and the current set s (multi-hot over the M drugs), and scores 2M + 1
actions:

    h         = MLP([patient ; p ; s])
    add_j     = (W_a h)_j + a · logit(p_j)        allowed only where s_j = 0       (actions 0 .. M-1)
    remove_j  = (W_r h)_j + r · logit(p_j)        allowed only where s_j = 1       (actions M .. 2M-1)
    stop      = w_s · h + b_s                     always allowed                    (action 2M)

A disallowed action's logit is −inf, so no edit can add a drug already in the set or remove one
that is not. `rollout` applies edits in sequence until the policy stops or `max_edits` is spent;
the probability terms start the policy at "add the likeliest missing drug, remove the least likely
present one" before training says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from trixmed.errors import TrixmedError
from trixmed.io import atomic_dir, read_json, write_json

WEIGHTS_FILE = "editor.safetensors"
META_FILE = "editor_model.json"
NO_ACTION = -1   # a rollout's step after the visit stopped


class EditorPolicy(nn.Module):
    def __init__(self, patient_dim: int, n_med: int, hidden: int):
        super().__init__()
        self.patient_dim, self.n_med, self.hidden = patient_dim, n_med, hidden
        self.body = nn.Sequential(nn.Linear(patient_dim + 2 * n_med, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.add = nn.Linear(hidden, n_med)
        self.remove = nn.Linear(hidden, n_med)
        self.stop = nn.Linear(hidden, 1)
        # signs that make the untrained policy's first choice the sensible one (see the module doc)
        self.add_prob = nn.Parameter(torch.tensor(1.0))
        self.remove_prob = nn.Parameter(torch.tensor(-1.0))

    @property
    def n_actions(self) -> int:
        return 2 * self.n_med + 1

    def forward(self, patient: Tensor, probs: Tensor, current: Tensor) -> Tensor:
        """Masked action logits [B, 2M + 1] for patients [B, H], probabilities and sets [B, M]."""
        s = current.float()
        h = self.body(torch.cat([patient.float(), probs.float(), s], dim=1))
        lp = torch.logit(probs.float().clamp(1e-6, 1 - 1e-6))
        logits = torch.cat([self.add(h) + self.add_prob * lp, self.remove(h) + self.remove_prob * lp, self.stop(h)], dim=1)
        return logits.masked_fill(~action_mask(current.bool()), float("-inf"))


def action_mask(current: Tensor) -> Tensor:
    """[B, 2M + 1] bool: add only absent drugs, remove only present ones, stop always."""
    stop = torch.ones(len(current), 1, dtype=torch.bool, device=current.device)
    return torch.cat([~current, current, stop], dim=1)


def apply_actions(current: Tensor, actions: Tensor) -> Tensor:
    """The sets [B, M] after one action each: add j sets bit j, remove j clears it; stop and
    `NO_ACTION` leave the set as it is."""
    n_med = current.shape[1]
    out = current.clone()
    rows = torch.arange(len(current), device=current.device)
    add = (actions >= 0) & (actions < n_med)
    remove = (actions >= n_med) & (actions < 2 * n_med)
    out[rows[add], actions[add]] = True
    out[rows[remove], actions[remove] - n_med] = False
    return out


@dataclass
class Rollout:
    """A batch of edit trajectories of `steps` = max_edits steps."""

    states: Tensor     # [steps + 1, B, M] bool: the set before each step, then the final set
    actions: Tensor    # [steps, B] long: the action of each step, NO_ACTION once the visit stopped
    logp: Tensor       # [steps, B]: log-probability of each action (0 where NO_ACTION)

    @property
    def final(self) -> Tensor:
        return self.states[-1]

    @property
    def taken(self) -> Tensor:
        """[steps, B] bool: the steps where an action (stop included) was taken."""
        return self.actions != NO_ACTION


@torch.no_grad()
def rollout(policy: EditorPolicy, patient: Tensor, probs: Tensor, start: Tensor, max_edits: int, *,
            generator: torch.Generator | None = None, greedy: bool = False) -> Rollout:
    """Edit each start set [B, M] until the policy stops or `max_edits` edits are made; actions are
    sampled with `generator`, or the most probable with `greedy`."""
    current = start.bool().clone()
    alive = torch.ones(len(current), dtype=torch.bool, device=current.device)
    states, actions, logps = [current], [], []
    stop = policy.n_actions - 1
    for _ in range(max_edits):
        logp = torch.log_softmax(policy(patient, probs, current), dim=1)
        if greedy:
            a = logp.argmax(dim=1)
        else:
            a = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        a = torch.where(alive, a, torch.full_like(a, NO_ACTION))
        logps.append(torch.where(alive, logp.gather(1, a.clamp(min=0)[:, None]).squeeze(1), logp.new_zeros(len(a))))
        actions.append(a)
        current = apply_actions(current, a)
        states.append(current)
        alive = alive & (a != stop)
    if not actions:   # max_edits 0: nothing to do
        return Rollout(torch.stack(states), torch.empty(0, len(current), dtype=torch.long), torch.empty(0, len(current)))
    return Rollout(torch.stack(states), torch.stack(actions), torch.stack(logps))


def save_editor(policy: EditorPolicy, directory: Path) -> None:
    """The policy's weights (safetensors) and shape (JSON) into `directory`, replaced as a whole."""
    from safetensors.torch import save_file

    with atomic_dir(directory) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        write_json(tmp / META_FILE, {"patient_dim": policy.patient_dim, "n_med": policy.n_med, "hidden": policy.hidden})


def load_editor(directory: Path) -> EditorPolicy:
    """A policy saved by `save_editor` into `directory`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (META_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise TrixmedError(directory / name, "missing; not a trained editor (run the edit stage with editor.enabled=true)")
    meta = read_json(directory / META_FILE)
    policy = EditorPolicy(meta["patient_dim"], meta["n_med"], meta["hidden"])
    policy.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return policy.eval()
