"""Gradient averaging through shared memory against DeepSpeed's gloo all-reduce, on 2 gloo ranks
(torch.multiprocessing): the same weights bit for bit, nothing left in /dev/shm, and DeepSpeed's
all-reduce kept on every rank when one rank cannot map the file."""

import os
from pathlib import Path

import pytest
import torch

from trixmed.config import DistributedConfig, MoEConfig, PhaseConfig
from trixmed.testing import spawn_gloo_ranks

WORLD = 2
PHASE = PhaseConfig(micro_batch_size=2, effective_batch_size=8, grad_clip=0.05, lr=1e-2, warmup_steps=1)

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm on this machine")


class _Net(torch.nn.Module):
    """Trained layers, a frozen one, and one that no micro-batch reaches (its gradient stays None)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(6, 32), torch.nn.Linear(32, 3)
        self.frozen = torch.nn.Linear(6, 6).requires_grad_(False)
        self.unused = torch.nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.b(torch.tanh(self.a(self.frozen(x))))


def _train(shared: bool) -> tuple[list[torch.Tensor], bool]:
    """Three optimizer steps (two micro-batches a step on each rank, each rank its own data), the
    gradients averaged by shared memory or by the engine; the weights after them, and whether the
    engine's all-reduce was off."""
    from trixmed.train.deepspeed_strategy import DeepSpeedStrategy

    torch.manual_seed(0)
    model = _Net()
    strategy = DeepSpeedStrategy(DistributedConfig(zero_stage=0), MoEConfig())
    strategy.rank, strategy.world = int(os.environ["RANK"]), WORLD
    assert strategy.averages_itself()
    if not shared:
        strategy.averages_itself = lambda: False
    engine = strategy.prepare(model, PHASE, "experts")
    gen = torch.Generator().manual_seed(10 + strategy.rank)
    for _ in range(3 * 2):
        x, y = torch.randn(2, 6, generator=gen), torch.randn(2, 3, generator=gen)
        engine.backward(torch.nn.functional.mse_loss(engine(x), y))
        strategy.step(engine)
    return [p.detach().clone() for p in model.parameters()], not engine.enable_backward_allreduce


def _same_weights(rank: int, out: str) -> None:
    import torch.distributed as dist

    before = set(Path("/dev/shm").glob("trixmed-grads-*"))
    shared, used = _train(shared=True)
    assert used
    reference, used = _train(shared=False)
    assert not used
    for a, b in zip(shared, reference, strict=True):
        assert torch.equal(a, b)
    dist.barrier()
    left = set(Path("/dev/shm").glob("trixmed-grads-*")) - before
    Path(out, f"rank{rank}").write_text(" ".join(sorted(p.name for p in left)))


def test_shared_memory_averaging_trains_the_same_weights_as_deepspeeds_all_reduce(tmp_path):
    spawn_gloo_ranks(_same_weights, WORLD, str(tmp_path))
    assert [(tmp_path / f"rank{r}").read_text() for r in range(WORLD)] == ["", ""]   # the file unlinked


def _apart(rank: int, root: str) -> None:
    from trixmed.parallel import shared_memory

    # each rank its own "/dev/shm", as containers on one host may have: rank 1 cannot see rank 0's file
    shared_memory.SHM = Path(root) / f"shm{rank}"
    shared_memory.SHM.mkdir()
    _, used = _train(shared=True)
    assert not used
    assert list(shared_memory.SHM.iterdir()) == []


def test_ranks_that_cannot_share_the_file_all_keep_deepspeeds_all_reduce(tmp_path):
    spawn_gloo_ranks(_apart, WORLD, str(tmp_path))


@pytest.mark.parametrize("dist, averages", [
    (DistributedConfig(zero_stage=0), True),
    (DistributedConfig(zero_stage=2), False),               # ZeRO's optimizer reduces its partitions
    (DistributedConfig(zero_stage=0, precision="bf16"), False),
    (DistributedConfig(zero_stage=0, use_gpu=True), False),  # NCCL
])
def test_the_strategy_averages_only_on_the_zero0_float32_cpu_path(dist, averages):
    from trixmed.train.deepspeed_strategy import DeepSpeedStrategy

    strategy = DeepSpeedStrategy(dist, MoEConfig())
    strategy.world = 2
    assert strategy.averages_itself() is averages
    assert DeepSpeedStrategy(dist, MoEConfig(ep_size=2)).averages_itself() is False
    strategy.world = 1
    assert strategy.averages_itself() is False
