"""PhaseConfig + DistributedConfig → DeepSpeed config, and the per-rank batch schedule."""

from __future__ import annotations

import numpy as np
import pytest

from trixmed.config import DistributedConfig, PhaseConfig
from trixmed.errors import TrixmedError
from trixmed.train.deepspeed_config import build_deepspeed_config, grad_accumulation_steps, linear_warmup
from trixmed.train.sampling import epoch_micro_batches, patient_fraction, shard_for_eval


def test_effective_batch_is_fixed_and_split_by_accumulation():
    phase = PhaseConfig(micro_batch_size=4, effective_batch_size=16, grad_clip=0.3, lr=1e-4, warmup_steps=100)
    for world, accum in ((1, 4), (2, 2), (4, 1)):
        cfg = build_deepspeed_config(phase, DistributedConfig(zero_stage=2), world)
        assert cfg["gradient_accumulation_steps"] == accum == grad_accumulation_steps(phase, world)
        assert cfg["train_batch_size"] == 16 and cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_clipping"] == 0.3
    factor = linear_warmup(100)
    assert [factor(s) for s in (0, 49, 99, 100, 5000)] == [0.01, 0.5, 1.0, 1.0, 1.0]
    assert cfg["zero_optimization"] == {"stage": 2} and "bf16" not in cfg


def test_indivisible_batch_is_a_config_error():
    with pytest.raises(TrixmedError, match=r"experts.effective_batch_size.*micro_batch_size × workers = 4 × 3"):
        grad_accumulation_steps(PhaseConfig(micro_batch_size=4, effective_batch_size=16), 3, "experts")


def test_zero3_and_precision_blocks():
    dist = DistributedConfig(zero_stage=3, precision="bf16", stage3_param_persistence_threshold=0)
    cfg = build_deepspeed_config(PhaseConfig(micro_batch_size=2, effective_batch_size=4), dist, 2)
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert cfg["bf16"] == {"enabled": True}


def test_global_batches_do_not_depend_on_the_world_size():
    def global_batches(world, accum):
        per_rank = [epoch_micro_batches(50, epoch=3, seed=7, micro=4, world=world, accum=accum, rank=r) for r in range(world)]
        return [sorted(np.concatenate([mb for r in range(world) for mb in per_rank[r][s]]).tolist())
                for s in range(len(per_rank[0]))]

    one, two = global_batches(1, 2), global_batches(2, 1)
    assert one == two and len(one) == 50 // 8
    assert all(len(b) == 8 and len(set(b)) == 8 for b in one)
    # a new epoch reshuffles; the same epoch replays exactly (what a restore relies on)
    assert global_batches(2, 1) == two
    first = epoch_micro_batches(50, epoch=4, seed=7, micro=4, world=2, accum=1, rank=0)[0][0]
    assert first.tolist() != epoch_micro_batches(50, epoch=3, seed=7, micro=4, world=2, accum=1, rank=0)[0][0].tolist()


def test_batch_larger_than_the_data_is_an_error():
    with pytest.raises(TrixmedError, match="exceeds the 5 training samples"):
        epoch_micro_batches(5, epoch=0, seed=0, micro=4, world=2, accum=1, rank=0)


def test_eval_shards_cover_every_sample_with_equal_lengths():
    for n, world in ((10, 2), (7, 2), (5, 3), (1, 2)):
        shards = [shard_for_eval(n, r, world) for r in range(world)]
        assert len({len(s) for s in shards}) == 1
        # interleaving rank shards back recovers 0..n-1 (what the engine's all_gather relies on)
        merged = np.stack(shards, 1).reshape(-1)[:n]
        assert merged.tolist() == list(range(n))


def test_warmup_share_is_a_seeded_set_of_whole_patients():
    from trixmed.data.dataset import Sample

    samples = [Sample(f"p{p}:{v}", f"p{p}", "train", ()) for p in range(20) for v in range(3)]
    a, b = patient_fraction(samples, 0.3, 1), patient_fraction(samples, 0.3, 1)
    assert a == b and len({s.patient_id for s in a}) == 6 and len(a) == 18
    assert {s.patient_id for s in patient_fraction(samples, 0.3, 2)} != {s.patient_id for s in a}
    assert patient_fraction(samples, 1.0, 0) == samples
