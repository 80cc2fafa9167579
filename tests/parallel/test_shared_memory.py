"""The shared-memory step (gradients averaged, the optimizer sharded) against DeepSpeed's gloo
all-reduce and a whole optimizer on every rank, on 2 gloo ranks (torch.multiprocessing): the same
weights bit for bit, each rank's optimizer state only its share, a checkpoint that resumes to the
same weights, nothing left in /dev/shm, and DeepSpeed's all-reduce kept on every rank when one rank
cannot map the file."""

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


def _engine(shared: bool):
    """A strategy and its engine for a fresh `_Net` (the same initial weights on every rank), the
    gradients averaged by shared memory or by the engine."""
    from trixmed.train.deepspeed_strategy import DeepSpeedStrategy

    torch.manual_seed(0)
    strategy = DeepSpeedStrategy(DistributedConfig(zero_stage=0), MoEConfig())
    strategy.rank, strategy.world = int(os.environ["RANK"]), WORLD
    assert strategy.averages_itself()
    if not shared:
        strategy.averages_itself = lambda: False
    return strategy, strategy.prepare(_Net(), PHASE, "experts")


def _steps(strategy, engine, steps: int, seed: int) -> None:
    """`steps` optimizer steps, two micro-batches a step on each rank, each rank its own data."""
    gen = torch.Generator().manual_seed(seed + strategy.rank)
    for _ in range(steps * 2):
        x, y = torch.randn(2, 6, generator=gen), torch.randn(2, 3, generator=gen)
        engine.backward(torch.nn.functional.mse_loss(engine(x), y))
        strategy.step(engine)


def _weights(engine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.module.parameters()]


def _train(shared: bool) -> tuple[list[torch.Tensor], bool]:
    """Three optimizer steps; the weights after them, and whether the engine's all-reduce was off."""
    strategy, engine = _engine(shared)
    _steps(strategy, engine, 3, seed=10)
    return _weights(engine), not engine.enable_backward_allreduce


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


def _sharded(rank: int, out: str) -> None:
    strategy, engine = _engine(shared=True)
    _steps(strategy, engine, 3, seed=10)
    reference_strategy, reference = _engine(shared=False)
    _steps(reference_strategy, reference, 3, seed=10)
    # each rank keeps the AdamW state of its share of the parameters only, and that state is the
    # whole optimizer's
    params, reference_params = strategy.shared_grads.params, list(reference.module.parameters())
    owned = [i for i in range(len(params)) if strategy.shared_grads.owns(i)]
    assert set(strategy.optimizer.state) == {params[i] for i in owned}
    for i in owned:
        mine, whole = strategy.optimizer.state[params[i]], reference_strategy.optimizer.state[reference_params[i]]
        assert all(torch.equal(mine[k], whole[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    Path(out, f"rank{rank}").write_text(" ".join(map(str, owned)))


def test_each_rank_updates_and_keeps_optimizer_state_for_its_share_only(tmp_path):
    spawn_gloo_ranks(_sharded, WORLD, str(tmp_path))
    shares = [set(map(int, (tmp_path / f"rank{r}").read_text().split())) for r in range(WORLD)]
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(range(5))   # unused, and a's and b's weights and biases


def _resumed(rank: int, out: str) -> None:
    import torch.distributed as dist

    strategy, engine = _engine(shared=True)
    _steps(strategy, engine, 2, seed=10)
    strategy.save_checkpoint(engine, out)
    assert set(strategy.optimizer.state) == {p for i, p in enumerate(strategy.shared_grads.params)
                                             if strategy.shared_grads.owns(i)}   # dropped again
    _steps(strategy, engine, 2, seed=20)
    dist.barrier()   # every rank's checkpoint written before any reads it
    # the same checkpoint resumed sharded, and by a whole optimizer on every rank (its state whole)
    for shared in (True, False):
        resumed_strategy, resumed = _engine(shared)
        resumed_strategy.load_checkpoint(resumed, out)
        _steps(resumed_strategy, resumed, 2, seed=20)
        for a, b in zip(_weights(engine), _weights(resumed), strict=True):
            assert torch.equal(a, b), shared


def test_a_sharded_checkpoint_resumes_to_the_same_weights(tmp_path):
    spawn_gloo_ranks(_resumed, WORLD, str(tmp_path))


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


def test_owners_balance_the_ranks_shares_by_size_and_agree_on_every_rank():
    from trixmed.parallel.shared_memory import owners

    # configs/mimic3_codes.yaml's five largest tensors, and 33 of 32,768 elements or fewer
    sizes = [345856, 256498, 250752, 187330, 183168, *[32768] * 8, *[4096] * 25]
    owner = owners(sizes, 2)
    shares = [sum(n for n, r in zip(sizes, owner) if r == rank) for rank in range(2)]
    assert abs(shares[0] - shares[1]) <= max(sizes[5:])   # within the largest of the small tensors
    assert owners(sizes, 2) == owner and owners([5, 5, 5], 3) == [0, 1, 2] and owners([1, 9], 2) == [1, 0]
