"""The strategy's gradient clipping on DeepSpeed's ZeRO-0 float32 path against the engine's own, on
2 gloo ranks (torch.multiprocessing): the same bits, without the engine's all-reduce of the norm."""

import os

import pytest
import torch

from trixmed.config import DistributedConfig, MoEConfig, PhaseConfig
from trixmed.testing import spawn_gloo_ranks

WORLD = 2
PHASE = PhaseConfig(micro_batch_size=2, effective_batch_size=8, grad_clip=0.05, lr=1e-2, warmup_steps=1)


def _grads(seed: int) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((7, 5), (5,), (300, 16), (1,))]
    for p in params:
        p.grad = torch.randn(p.shape) * 3
    return params


def _train(engine_clips: bool) -> list[torch.Tensor]:
    """Three optimizer steps of a small net (two micro-batches a step on each rank), clipped by the
    engine or by `DeepSpeedStrategy.step`; the weights after them."""
    import deepspeed

    from trixmed.train.deepspeed_config import build_deepspeed_config
    from trixmed.train.deepspeed_strategy import DeepSpeedStrategy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    strategy = DeepSpeedStrategy(DistributedConfig(zero_stage=0), MoEConfig())
    strategy.rank, strategy.world = int(os.environ["RANK"]), WORLD
    assert strategy.clips_itself(PHASE)
    strategy.clip_norm = None if engine_clips else PHASE.grad_clip
    config = build_deepspeed_config(PHASE, strategy.dist_cfg, WORLD, engine_clips=engine_clips)
    assert config["gradient_clipping"] == (PHASE.grad_clip if engine_clips else 0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PHASE.lr)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    gen = torch.Generator().manual_seed(10 + strategy.rank)
    for _ in range(3 * 2):
        x, y = torch.randn(2, 6, generator=gen), torch.randn(2, 3, generator=gen)
        engine.backward(torch.nn.functional.mse_loss(engine(x), y))
        strategy.step(engine)
    return [p.detach().clone() for p in model.parameters()]


def _compare(rank: int) -> None:
    from deepspeed.runtime.utils import clip_grad_norm_

    from trixmed.train.deepspeed_strategy import clip_grad_norm

    # every rank holds the same (reduced) gradients; a max norm that clips, and one that does not
    for max_norm in (1.0, 1e6):
        ours, theirs = _grads(3), _grads(3)
        norm = clip_grad_norm(ours, max_norm)
        assert torch.equal(norm, clip_grad_norm_(theirs, max_norm, mpu=None))
        for a, b in zip(ours, theirs):
            assert torch.equal(a.grad, b.grad)
        assert (norm > max_norm) == (max_norm == 1.0)
    for a, b in zip(_train(engine_clips=True), _train(engine_clips=False), strict=True):
        assert torch.equal(a, b)


def test_strategy_clipping_is_the_engines_bit_for_bit():
    spawn_gloo_ranks(_compare, WORLD)


@pytest.mark.parametrize("dist, moe, clips", [
    (DistributedConfig(zero_stage=0), MoEConfig(), True),
    (DistributedConfig(zero_stage=2), MoEConfig(), False),              # ZeRO's optimizer clips
    (DistributedConfig(zero_stage=0, precision="bf16"), MoEConfig(), False),
    (DistributedConfig(zero_stage=0), MoEConfig(ep_size=2), False),     # ranks hold different experts' gradients
])
def test_the_strategy_clips_only_where_every_rank_holds_the_same_gradients(dist, moe, clips):
    from trixmed.train.deepspeed_strategy import DeepSpeedStrategy

    strategy = DeepSpeedStrategy(dist, moe)
    assert strategy.clips_itself(PHASE) is clips
    assert strategy.clips_itself(PhaseConfig(grad_clip=0.0)) is False
