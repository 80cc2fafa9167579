import math

import pytest
import torch
import torch.nn.functional as F

from trixmed.models.router import LearnedRouter, TriageRouter, route


def test_route_hand_computed():
    logits = torch.log(torch.tensor([[1.0, 2, 3, 4], [4, 3, 2, 1]]))   # G rows 0.1..0.4 and 0.4..0.1
    r = route(logits, top_n=2)
    torch.testing.assert_close(r.gates, torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]))
    assert r.indices.tolist() == [[3, 2], [0, 1]]
    torch.testing.assert_close(r.weights, torch.tensor([[0.4, 0.3], [0.4, 0.3]]))
    # f = (0.5, 0.5, 0.5, 0.5), r = (0.25, ...): L_aux = 4 · Σ 0.5 · 0.25 = 2
    assert r.aux_loss.item() == pytest.approx(2.0)
    assert r.counts.tolist() == [1, 1, 1, 1]


def test_route_aux_loss_unbalanced_and_renormalize():
    logits = torch.log(torch.tensor([[1.0, 2, 3, 4], [1, 2, 3, 4]]))
    r = route(logits, top_n=2, renormalize=True)
    # f = (0, 0, 1, 1), r = (0.1, 0.2, 0.3, 0.4): L_aux = 4 · (0.3 + 0.4) = 2.8
    assert r.aux_loss.item() == pytest.approx(2.8)
    assert r.counts.tolist() == [0, 0, 2, 2]
    torch.testing.assert_close(r.weights, torch.tensor([[4 / 7, 3 / 7], [4 / 7, 3 / 7]]))


def test_triage_router_is_onehot_times_W_plus_b():
    router = TriageRouter(num_clusters=3, num_experts=5)   # E may differ from K
    with torch.no_grad():
        router.b_e.normal_()
    c = torch.tensor([2, 0, 2, 1])
    expected = F.one_hot(c, 3).float() @ router.W_e + router.b_e
    torch.testing.assert_close(router(c), expected)


def test_gradients_reach_W_e_and_b_e():
    router = TriageRouter(num_clusters=3, num_experts=4)
    r = route(router(torch.tensor([0, 1, 2, 1])), top_n=2)
    (r.weights.sum() * 0 + (r.weights ** 2).sum() + r.aux_loss).backward()
    assert router.W_e.grad is not None and router.W_e.grad.abs().sum() > 0
    assert router.b_e.grad is not None and router.b_e.grad.abs().sum() > 0


def test_learned_router_shape():
    router = LearnedRouter(hidden=6, num_experts=3)
    r = route(router(torch.randn(5, 6)), top_n=1)
    assert r.indices.shape == (5, 1) and r.gates.shape == (5, 3)
    assert math.isclose(r.gates.sum().item(), 5.0, rel_tol=1e-5)
