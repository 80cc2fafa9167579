"""FLAME's list-wise editor: masking, rollouts, SFT targets from errors, GRPO advantages, saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trixmed.config import EditorConfig, load_config
from trixmed.errors import TrixmedError
from trixmed.models.editor import NO_ACTION, EditorPolicy, action_mask, apply_actions, load_editor, rollout, save_editor
from trixmed.train.editor_fit import EditorData, fit_editor, grpo_advantages, phi, sft_states, sft_target

M = 5


def _sets(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def test_the_mask_allows_adding_only_absent_drugs_and_removing_only_present_ones():
    current = _sets([1, 0, 1, 0, 0], [0, 0, 0, 0, 0])
    mask = action_mask(current)
    assert mask[0].tolist() == [False, True, False, True, True] + [True, False, True, False, False] + [True]
    assert mask[1].tolist() == [True] * M + [False] * M + [True]
    policy = EditorPolicy(3, M, 8)
    logits = policy(torch.randn(2, 3), torch.rand(2, M), current)
    assert torch.isinf(logits[~mask]).all() and torch.isfinite(logits[mask]).all()


def test_apply_actions_adds_removes_and_stops():
    current = _sets([1, 0, 1, 0, 0], [1, 0, 1, 0, 0], [1, 0, 1, 0, 0], [1, 0, 1, 0, 0])
    out = apply_actions(current, torch.tensor([3, M + 2, 2 * M, NO_ACTION]))
    assert out.int().tolist() == [[1, 0, 1, 1, 0], [1, 0, 0, 0, 0], [1, 0, 1, 0, 0], [1, 0, 1, 0, 0]]
    assert current.int().tolist()[0] == [1, 0, 1, 0, 0]   # the input is left as it was


def test_sampled_edits_never_add_a_present_drug_or_remove_an_absent_one():
    torch.manual_seed(0)
    policy = EditorPolicy(4, M, 16)
    with torch.no_grad():   # a policy that would love the forbidden actions if they were allowed
        policy.add.bias.fill_(5.0)
        policy.remove.bias.fill_(5.0)
        policy.stop.bias.fill_(-20.0)
    start = torch.rand(64, M) > 0.5
    r = rollout(policy, torch.randn(64, 4), torch.rand(64, M), start, 6, generator=torch.Generator().manual_seed(1))
    for step in range(6):
        before, a = r.states[step], r.actions[step]
        rows = torch.arange(64)
        add, remove = a < M, (a >= M) & (a < 2 * M)
        assert not before[rows[add], a[add]].any(), "added a drug already in the set"
        assert before[rows[remove], a[remove] - M].all(), "removed a drug not in the set"
    # each step toggles exactly one drug until stop
    changed = (r.states[1:] ^ r.states[:-1]).sum(-1)
    assert ((changed == 1) | ~r.taken | (r.actions == 2 * M)).all()


def test_a_stopped_visit_takes_no_more_actions():
    policy = EditorPolicy(2, M, 8)
    with torch.no_grad():
        policy.stop.bias.fill_(50.0)
    r = rollout(policy, torch.zeros(3, 2), torch.full((3, M), 0.5), torch.zeros(3, M, dtype=torch.bool), 4, greedy=True)
    assert r.actions[0].tolist() == [2 * M] * 3
    assert (r.actions[1:] == NO_ACTION).all() and (r.logp[1:] == 0).all()
    assert torch.equal(r.final, torch.zeros(3, M, dtype=torch.bool))


def test_sft_targets_are_the_point_wise_errors():
    current = _sets([1, 1, 0, 0, 0], [0, 1, 1, 0, 0])
    truth = _sets([1, 0, 1, 0, 0], [0, 1, 1, 0, 0])
    target = sft_target(current, truth)
    # visit 0: add the missed drug 2, remove the false positive 1, each half; visit 1: right, stop
    assert target[0].tolist() == [0, 0, 0.5, 0, 0] + [0, 0.5, 0, 0, 0] + [0]
    assert target[1].tolist() == [0] * M + [0] * M + [1]


def test_sft_states_fix_the_error_nearest_the_threshold_first():
    start = _sets([1, 1, 0, 0, 0])
    truth = _sets([1, 0, 1, 1, 0])
    probs = torch.tensor([[0.9, 0.35, 0.28, 0.05, 0.01]])   # threshold 0.3: drug 2 is nearest, then 1, then 3
    data = EditorData(torch.zeros(1, 2), probs, start, truth)
    visits, sets, targets = sft_states(data, 0.3, max_edits=4)
    assert visits.tolist() == [0, 0, 0, 0]
    assert sets.int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 1, 0, 0], [1, 0, 1, 1, 0]]
    assert targets[-1, -1] == 1 and (targets[:-1, -1] == 0).all()
    # a budget too small to fix everything: no stop target at the sets it cannot finish
    visits, sets, targets = sft_states(data, 0.3, max_edits=2)
    assert len(visits) == 2 and (targets[:, -1] == 0).all()


def test_phi_is_jaccard_minus_alpha_ddi_minus_beta_refusal():
    ddi = torch.zeros(M, M)
    ddi[0, 1] = ddi[1, 0] = 1
    truth = _sets([1, 1, 0, 0, 0], [1, 0, 0, 0, 0])
    sets = _sets([1, 1, 1, 0, 0], [0, 0, 0, 0, 0])
    # visit 0: Jaccard 2/3, one interacting pair of three; visit 1: empty set, Jaccard 0, refusal
    assert phi(sets, truth, ddi, 0.3, 0.2).tolist() == pytest.approx([2 / 3 - 0.3 / 3, -0.2])


def test_grpo_advantage_on_a_hand_computed_group():
    # one visit, a group of two trajectories of two steps; φ at S0, S1, S2
    phis = torch.tensor([[0.5, 0.5], [0.7, 0.4], [0.9, 0.4]])
    taken = torch.tensor([[True, True], [True, False]])   # trajectory 1 stopped at its first step
    adv = grpo_advantages(phis, taken, group_size=2, step_weight=0.5)
    # final rewards 0.9 and 0.4: mean 0.65, population std 0.25 → normalised +1 and −1
    z = 0.25 / (0.25 + 1e-6)
    assert adv[:, 0].tolist() == pytest.approx([z + 0.5 * 0.2, z + 0.5 * 0.2])
    assert adv[:, 1].tolist() == pytest.approx([-z + 0.5 * -0.1, 0.0])


def test_grpo_advantage_of_an_equal_group_is_the_step_term_alone():
    phis = torch.tensor([[0.2, 0.2], [0.3, 0.1], [0.3, 0.3]])
    adv = grpo_advantages(phis, torch.ones(2, 2, dtype=torch.bool), 2, 1.0)
    assert adv.flatten().tolist() == pytest.approx([0.1, -0.1, 0.0, 0.2])


def _toy(n: int, seed: int) -> EditorData:
    """Visits whose point-wise set misses drug 0 whenever the patient vector's first entry is positive."""
    g = torch.Generator().manual_seed(seed)
    patient = torch.randn(n, 3, generator=g)
    truth = torch.zeros(n, M, dtype=torch.bool)
    truth[:, 1] = True
    truth[:, 0] = patient[:, 0] > 0
    start = torch.zeros(n, M, dtype=torch.bool)
    start[:, 1] = True
    probs = torch.full((n, M), 0.1)
    probs[:, 1] = 0.9
    probs[:, 0] = 0.25
    return EditorData(patient, probs, start, truth)


def test_the_editor_learns_to_add_the_missed_drug_and_is_deterministic():
    cfg = EditorConfig(enabled=True, max_edits=2, hidden=16, lr=1e-2, batch_size=64, sft_epochs=4, grpo_epochs=2, group_size=4)
    train, val = _toy(256, 0), _toy(128, 1)

    def score(sets: np.ndarray) -> float:
        t = val.truth.numpy()
        return float(((sets & t).sum(1) / (sets | t).sum(1)).mean())

    runs = [fit_editor(train, val, np.zeros((M, M)), cfg, alpha=0.0, threshold=0.3, seed=7, score=score) for _ in range(2)]
    (policy, history, kept), (_, history2, _) = runs
    assert history == history2   # the seed fixes everything
    assert [h["phase"] for h in history] == ["sft"] * 4 + ["grpo"] * 2
    assert kept["val_jaccard"] == max(h["val_jaccard"] for h in history)
    assert kept["val_jaccard"] > score(val.start.numpy()) + 0.2   # the point-wise sets score 0.75


def test_a_saved_editor_loads_back_the_same(tmp_path):
    policy = EditorPolicy(3, M, 8)
    save_editor(policy, tmp_path / "model")
    again = load_editor(tmp_path / "model")
    x = (torch.randn(2, 3), torch.rand(2, M), torch.rand(2, M) > 0.5)
    assert torch.equal(policy(*x), again(*x))
    (tmp_path / "model" / "editor.safetensors").unlink()
    with pytest.raises(TrixmedError) as err:
        load_editor(tmp_path / "model")
    assert str(err.value) == (f"{tmp_path / 'model' / 'editor.safetensors'}: missing; not a trained editor "
                              "(run the edit stage with editor.enabled=true)")


@pytest.mark.parametrize(("override", "message"), [
    ("editor.max_edits=0", "editor.max_edits: must be >= 1, got 0"),
    ("editor.group_size=1", "editor.group_size: must be >= 2 for GRPO (advantages are normalised within the group), got 1"),
    ("editor.clip=0", "editor.clip: must be > 0, got 0.0"),
    ("editor.ddi_alpha=-1", "editor.ddi_alpha: must be >= 0 or null, got -1.0"),
    ("editor.refusal_weight=-0.1", "editor.refusal_weight: must be >= 0, got -0.1"),
    ("editor.grpo_epochs=0", None),
])
def test_config_errors_name_the_dotted_key(override, message):
    if message is None:
        assert load_config(None, [override, "editor.group_size=1"]).editor.grpo_epochs == 0   # SFT only needs no group
        return
    with pytest.raises(TrixmedError) as err:
        load_config(None, [override])
    assert str(err.value) == f"<defaults>: {message}"


def test_nothing_to_train_is_a_config_error():
    with pytest.raises(TrixmedError) as err:
        load_config(None, ["editor.sft_epochs=0", "editor.grpo_epochs=0"])
    assert str(err.value) == "<defaults>: editor.sft_epochs: sft_epochs + grpo_epochs must be >= 1 (nothing would train)"
