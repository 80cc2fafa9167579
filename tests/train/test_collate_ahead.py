"""The trainer collates the next micro-batch on a helper thread while the current one trains, and
hands the batches over unchanged and in order."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from trixmed.train.trainer import Trainer


class _Strategy:
    def to_device(self, batch):
        return {**batch, "moved": True}


def _trainer(collate) -> Trainer:
    t = Trainer.__new__(Trainer)   # only what `_collated_ahead` reads
    t._collator = ThreadPoolExecutor(1)
    t.train_samples = [f"s{i}" for i in range(10)]
    t.clusters = None
    t.collate = collate
    t.strategy = _Strategy()
    return t


def test_every_micro_batch_comes_collated_and_moved_in_order():
    t = _trainer(lambda chosen, clusters: {"samples": list(chosen)})
    idx = [np.array([0, 1]), np.array([7]), np.array([3, 4, 5])]
    got = list(t._collated_ahead(idx))
    assert got == [{"samples": ["s0", "s1"], "moved": True}, {"samples": ["s7"], "moved": True},
                   {"samples": ["s3", "s4", "s5"], "moved": True}]
    assert list(t._collated_ahead([])) == []


def test_the_next_micro_batch_is_collated_while_the_current_one_is_in_use():
    started = [threading.Event() for _ in range(3)]
    threads = []

    def collate(chosen, clusters):
        threads.append(threading.get_ident())
        started[int(chosen[0][1:])].set()
        return {"first": chosen[0]}

    t = _trainer(collate)
    batches = t._collated_ahead([np.array([0]), np.array([1]), np.array([2])])
    for i in range(3):
        assert next(batches)["first"] == f"s{i}"
        if i < 2:   # batch i is being trained: batch i + 1 is collated meanwhile, not on next()
            assert started[i + 1].wait(timeout=10)
    assert threading.get_ident() not in threads
