"""What a rank's DeepSpeed start-up leaves out: Muon's modules, which compile kernels as they load
(torch._inductor's compiler), are stand-ins, and ZeRO still trains with trixmed's AdamW (2 gloo ranks)."""

import os
import sys

import pytest
import torch

from trixmed.config import DistributedConfig, MoEConfig, PhaseConfig
from trixmed.testing import spawn_gloo_ranks

WORLD = 2
PHASE = PhaseConfig(micro_batch_size=2, effective_batch_size=4, grad_clip=1.0, lr=1e-2, warmup_steps=1)


def _train_without_inductor(rank: int, zero_stage: int) -> None:
    from trixmed.train.deepspeed_strategy import MUON_MODULES, DeepSpeedStrategy

    strategy = DeepSpeedStrategy(DistributedConfig(zero_stage=zero_stage), MoEConfig())
    strategy.rank, strategy.world = int(os.environ["RANK"]), WORLD
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    before = [p.detach().clone() for p in model.parameters()]
    engine = strategy.prepare(model, PHASE, "warmup")
    gen = torch.Generator().manual_seed(10 + rank)
    for _ in range(2):
        x, y = torch.randn(2, 6, generator=gen), torch.randn(2, 3, generator=gen)
        engine.backward(torch.nn.functional.mse_loss(engine(x), y))
        strategy.step(engine)
    assert engine.global_steps == 2
    assert all(sys.modules[name].__doc__.startswith("trixmed's stand-in") for name in MUON_MODULES)
    # torch._dynamo, which every torch optimizer loads, brings a few of torch._inductor's modules;
    # compiling Muon's kernels brings its compiler
    assert "torch._inductor.compile_fx" not in sys.modules, "DeepSpeed loaded Muon's kernels"
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_zero_trains_without_loading_muons_kernels(zero_stage):
    spawn_gloo_ranks(_train_without_inductor, WORLD, zero_stage)
