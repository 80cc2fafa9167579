import torch
from torch import nn

from trixmed.models.lora import LocalDispatch, LoRALinear, MoELoRALinear


def test_moe_lora_matches_per_sample_loop():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = MoELoRALinear(base, num_experts=4, rank=2, alpha=4.0)
    with torch.no_grad():
        layer.experts_B.normal_()
    x = torch.randn(3, 7, 6)
    weights = torch.tensor([[0.5, 0.2], [0.3, 0.3], [0.9, 0.05]])
    indices = torch.tensor([[1, 3], [0, 1], [2, 0]])
    layer.dispatch = LocalDispatch(weights, indices, 4)
    y = layer(x)
    expected = base(x).clone()
    for b in range(3):
        for j in range(2):
            e = indices[b, j]
            expected[b] += 2.0 * weights[b, j] * (x[b] @ layer.experts_A[e].t() @ layer.experts_B[e])
    torch.testing.assert_close(y, expected)


def test_moe_lora_without_routing_refuses():
    layer = MoELoRALinear(nn.Linear(2, 2), num_experts=2, rank=1, alpha=1.0)
    try:
        layer(torch.randn(1, 2))
    except RuntimeError as exc:
        assert "routing" in str(exc)
    else:
        raise AssertionError("expected RuntimeError")


def test_experts_copied_from_lora_reproduce_it_when_weights_sum_to_one():
    torch.manual_seed(1)
    lora = LoRALinear(nn.Linear(4, 3), rank=2, alpha=2.0)
    with torch.no_grad():
        lora.lora_B.normal_()
    moe = MoELoRALinear(lora.base_layer, num_experts=3, rank=2, alpha=2.0)
    moe.load_adapter(lora.lora_A, lora.lora_B)
    x = torch.randn(2, 5, 4)
    moe.dispatch = LocalDispatch(torch.tensor([[0.7, 0.3], [0.5, 0.5]]), torch.tensor([[0, 2], [1, 0]]), 3)
    torch.testing.assert_close(moe(x), lora(x))
    # without renormalisation Σ Γ < 1 and the adapter's delta is scaled by Σ Γ
    moe.dispatch = LocalDispatch(torch.tensor([[0.4, 0.2], [0.4, 0.2]]), torch.tensor([[0, 2], [1, 0]]), 3)
    base = lora.base_layer(x)
    torch.testing.assert_close(moe(x) - base, 0.6 * (lora(x) - base))
