"""Which samples a phase trains on, and how each epoch is cut into per-rank micro-batches.

Everything is a pure function of (seed, epoch, world size): the global batch of optimizer step s
is the same set of samples whatever the number of workers, so 1- and 2-worker runs, and a run
restored after a crash, see identical data.
"""

from __future__ import annotations

import numpy as np

from trixmed.data.dataset import Sample
from trixmed.errors import TrixmedError


def patient_fraction(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """A seeded share of the patients (all their visits), in the original sample order."""
    if fraction >= 1.0:
        return list(samples)
    patients = sorted({s.patient_id for s in samples})
    rng = np.random.default_rng(seed)
    n = max(1, round(fraction * len(patients)))
    chosen = set(rng.choice(np.array(patients, dtype=object), size=n, replace=False).tolist())
    return [s for s in samples if s.patient_id in chosen]


def steps_per_epoch(n_samples: int, effective_batch_size: int, where: str = "phase") -> int:
    steps = n_samples // effective_batch_size
    if steps < 1:
        raise TrixmedError(f"{where}.effective_batch_size", f"{effective_batch_size} exceeds the {n_samples} training samples")
    return steps


def epoch_micro_batches(
    n_samples: int, *, epoch: int, seed: int, micro: int, world: int, accum: int, rank: int,
) -> list[list[np.ndarray]]:
    """For each optimizer step, this rank's `accum` micro-batches of sample indices.

    Global batch s = perm[s*E:(s+1)*E] with E = micro × world × accum; micro-batch a of rank r is
    the slice starting at (a*world + r)*micro, so the union over ranks and micro-steps is the
    same global batch for any split of E. The incomplete last global batch is dropped (it
    changes with the shuffle, so every sample is still seen across epochs).
    """
    effective = micro * world * accum
    perm = np.random.default_rng([seed, epoch]).permutation(n_samples)
    out: list[list[np.ndarray]] = []
    for s in range(steps_per_epoch(n_samples, effective)):
        batch = perm[s * effective:(s + 1) * effective]
        out.append([batch[(a * world + rank) * micro:(a * world + rank + 1) * micro] for a in range(accum)])
    return out


def shard_for_eval(n_samples: int, rank: int, world: int) -> np.ndarray:
    """Rank r's indices r, r+world, ...; padded by repeating the last one so every rank runs the
    same number of forward passes (ZeRO-3 gathers parameters collectively)."""
    idx = np.arange(rank, n_samples, world)
    per_rank = -(-n_samples // world)
    if len(idx) < per_rank:
        idx = np.concatenate([idx, np.full(per_rank - len(idx), n_samples - 1)])
    return idx
