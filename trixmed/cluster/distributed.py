"""PCA → z-score → K-means over Parquet feature shards, fitted by long-lived Ray actors.

Each `ShardWorker` actor owns a fixed subset of the shard files (round-robin over the sorted
paths) and keeps its training rows in memory as float64 blocks, or, over `memory_budget_bytes`,
re-reads its files batch by batch on every pass (`ParquetFile.iter_batches`), so a feature set
larger than memory works: a worker's peak memory is then bounded by the batch size and the Parquet
row-group size, not by the number of rows. The driver (`ShardPool`) only reduces small partial
results; the numerics of both sides are in trixmed/cluster/lloyd.py, the shards' checks in
trixmed/cluster/shards.py.

K-means on the z-scored projections follows scikit-learn's Lloyd algorithm step for step: greedy
k-means++ (2 + ln K candidates a round, each sampled ∝ D², the one with the lowest potential kept)
or K uniform rows; Lloyd iterations from per-worker per-cluster sums and counts; an empty cluster
takes the row farthest from its centroid (workers send their top-m candidates, the driver takes the
global top-m, m = number of empty clusters); stop once the summed squared centroid shift is ≤ tol ×
the mean variance of the z-scored data, or after `max_iter`; a last assignment pass gives labels
and the exact inertia; `kmeans_n_init` restarts, lowest inertia kept.

Independence of workers and sharding. Rows have one canonical order: shards sorted by path, rows
in file order. Random choices are made by the driver on that order with numpy Generators seeded
from (seed, restart): a uniform row is a global row number; a k-means++ row is a target value
drawn on [0, Σ D²) and located by cumulative per-shard D² totals, then by the cumulative D²
inside that shard. So with the same rows in the same canonical order, any number of workers and
any split into files pick the same rows and give the same centroids and inertia, up to float
round-off (float64 sums reduced in a different grouping; a k-means++ draw could only differ when
it lands within round-off of a row boundary). In-memory and streaming workers process identical
blocks, so they agree bit for bit.

Input checks come before any K-means: the shards' schemas and every row (trixmed/cluster/shards.py),
then ≥ num_clusters training rows, then not every feature constant; each a one-line `TrixmedError`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trixmed.cluster.lloyd import (Centres, LloydResult, Rows, bytes_per_row, cluster_sums, combine_moments,
                                   label_dtype, moved_sums, nearest, nearest_sq, pca_from_moments, sq_distances)
from trixmed.cluster.shards import COLUMNS, check_schemas, features_block
from trixmed.cluster.stratify import ClusterTransform
from trixmed.config import StratifyConfig
from trixmed.errors import TrixmedError

DEFAULT_BLOCK_ROWS = 16384


class _InputProblem(Exception):
    """A `TrixmedError` on its way back from a worker (plain args, so it pickles)."""


class ShardWorker:
    """The rows of some shards (`Ray` actor body; plain methods, so it also runs in-process).

    Blocks are the training rows of one `iter_batches` batch: the same blocks whether the worker
    caches them (in memory) or re-reads and re-projects them on every pass (streaming)."""

    def __init__(self, shards: list[tuple[int, str]], width: int, split: str, in_memory: bool,
                 block_rows: int = DEFAULT_BLOCK_ROWS, threads: int = 1):
        import importlib

        from threadpoolctl import threadpool_limits

        importlib.import_module("scipy.sparse")   # now, not inside the first (timed) Lloyd step

        self._limits = threadpool_limits(limits=threads)   # BLAS/OpenMP threads = the CPUs Ray gave us
        self.shards, self.width, self.split = shards, width, split
        self.in_memory, self.block_rows = in_memory, block_rows
        self._cache: dict[int, list[Any]] | None = None   # shard position → raw blocks, then Rows
        self._projection: tuple[np.ndarray, ...] | None = None
        # the last Lloyd step's cluster of every row, block by block, and its per-cluster sums
        self._labels: list[np.ndarray] | None = None
        self._sums = np.zeros(0)

    # -- passes over the data ------------------------------------------------------------------

    def _read(self, path: str, check: bool) -> Iterator[np.ndarray]:
        """Raw float64 training rows of one shard, batch by batch."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        columns = list(COLUMNS) if check else ["split", "features"]
        row0 = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=self.block_rows, columns=columns):
            x = features_block(batch, path, row0, self.width, check)
            row0 += batch.num_rows
            train = np.asarray(pc.fill_null(pc.equal(batch.column("split"), self.split), False))
            if train.any():
                yield x if train.all() else x[train]

    def _project(self, x: np.ndarray) -> Rows:
        """Raw rows → Rows, z computed exactly as `ClusterTransform.project` does."""
        pca_mean, components, scale_mean, scale_std = self._projection
        out = np.empty((len(x), components.shape[0] + 1))
        out[:, :-1] = ((x - pca_mean) @ components.T - scale_mean) / scale_std
        out[:, -1] = 1.0
        return Rows.of(out)

    def _shard_blocks(self, pos: int, path: str) -> Iterable[Rows]:
        """The projected blocks of one shard, in file order."""
        if self._projection is None:
            raise RuntimeError("ShardWorker.set_projection must come first")
        return self._cache[pos] if self._cache is not None else map(self._project, self._read(path, check=False))

    def _blocks(self) -> Iterator[tuple[int, Rows]]:
        """(shard position, projected rows) of every block."""
        for pos, path in self.shards:
            yield from ((pos, rows) for rows in self._shard_blocks(pos, path))

    def _assigned(self, centroids: np.ndarray) -> Iterator[tuple[int, Rows, np.ndarray, np.ndarray]]:
        """(shard position, rows, nearest centroid as a Lloyd step finds it, exact squared distance)."""
        centres = Centres(centroids)
        for pos, rows in self._blocks():
            labels = nearest(rows, centres)
            diff = rows.x[:, :-1] - centres.c[labels]
            yield pos, rows, labels, np.einsum("ij,ij->i", diff, diff)

    # -- the steps the driver asks for ---------------------------------------------------------

    def load(self) -> tuple[dict[int, int], int, np.ndarray, np.ndarray]:
        """First pass: validate every row, count training rows per shard, and return the moments
        (n, mean [H], centred scatter [H, H]) of this worker's training rows."""
        n, mean, scatter = 0, np.zeros(self.width), np.zeros((self.width, self.width))
        counts: dict[int, int] = {}
        cache: dict[int, list[Any]] = {}
        try:
            for pos, path in self.shards:
                counts[pos], cache[pos] = 0, []
                for x in self._read(path, check=True):
                    m = len(x)
                    bmean = x.mean(0)
                    centred = x - bmean
                    delta = bmean - mean
                    scatter += centred.T @ centred + np.outer(delta, delta) * (n * m / (n + m))
                    mean += delta * (m / (n + m))
                    n += m
                    counts[pos] += m
                    if self.in_memory:
                        cache[pos].append(x)
        except TrixmedError as e:
            raise _InputProblem(e.where, e.problem) from None
        if self.in_memory:
            self._cache = cache
        return counts, n, mean, scatter

    def set_projection(self, pca_mean: np.ndarray, components: np.ndarray, scale_mean: np.ndarray,
                       scale_std: np.ndarray) -> None:
        """From now on blocks are z-scored projections; cached raw rows are replaced by them."""
        self._projection = (pca_mean, components, scale_mean, scale_std)
        self._labels = None
        if self._cache is not None:
            for blocks in self._cache.values():
                blocks[:] = [self._project(b) for b in blocks]

    def rows_at_indices(self, requests: list[tuple[int, int]]) -> list[np.ndarray]:
        """z of the requested (shard position, training row in that shard); a shard is read only
        as far as its last requested row."""
        out: list[Any] = [None] * len(requests)
        for pos, path in self.shards:
            todo = {r: i for r, (p, i) in enumerate(requests) if p == pos}
            start = 0
            for rows in self._shard_blocks(pos, path) if todo else ():
                for r in [r for r, i in todo.items() if i < start + len(rows)]:
                    out[r] = rows.z(todo.pop(r) - start)
                if not todo:
                    break
                start += len(rows)
        return out

    def potentials(self, chosen: np.ndarray, candidates: np.ndarray) -> dict[int, np.ndarray]:
        """Per shard: Σ over rows of min(D², d²(row, candidate)) for each candidate [L], where D² is
        the squared distance to the nearest chosen centre (∞ when none is chosen yet)."""
        out = {pos: np.zeros(len(candidates)) for pos, _ in self.shards}
        for pos, rows in self._blocks():
            out[pos] += np.minimum(nearest_sq(rows, chosen)[:, None], sq_distances(rows, candidates)).sum(0)
        return out

    def rows_at_potentials(self, chosen: np.ndarray, requests: list[tuple[int, float]]) -> list[np.ndarray]:
        """z of the row of each (shard position, target) where the cumulative D² of the shard's
        rows first reaches the target (scikit-learn's searchsorted rule; the last row if never);
        a shard is read only as far as the last such row."""
        out: list[Any] = [None] * len(requests)
        for pos, path in self.shards:
            todo = {r: t for r, (p, t) in enumerate(requests) if p == pos}
            carry, last = 0.0, None
            for rows in self._shard_blocks(pos, path) if todo else ():
                cum = carry + np.cumsum(nearest_sq(rows, chosen))
                for r in [r for r, t in todo.items() if t <= cum[-1]]:
                    out[r] = rows.z(int(np.searchsorted(cum, todo.pop(r))))
                if not todo:
                    break
                carry, last = cum[-1], rows.z(-1)
            for r in todo:
                out[r] = last
        return out

    def lloyd_partials(self, centroids: np.ndarray, follow_on: bool) -> np.ndarray:
        """[K, k+1]: per-cluster sums of the rows nearest each centroid, their count in the last
        column. A follow-on step (the next iteration of the same Lloyd run) updates this worker's
        previous sums by the rows whose cluster changed (lloyd.py says why)."""
        centres = Centres(centroids)
        k = len(centroids)
        fresh = not follow_on or self._labels is None
        if fresh:
            self._sums, self._labels = np.zeros(centres.aug.shape), []
        dtype = label_dtype(k)
        for b, (_, rows) in enumerate(self._blocks()):
            labels = nearest(rows, centres).astype(dtype)
            if fresh:
                self._sums += cluster_sums(rows, labels, k)
                self._labels.append(labels)
            else:
                self._sums += moved_sums(rows, labels, self._labels[b], k)
                self._labels[b] = labels
        return self._sums.copy()

    def farthest(self, centroids: np.ndarray, m: int) -> list[tuple[float, int, int, int, np.ndarray]]:
        """This worker's m rows farthest from their nearest centroid:
        (squared distance, shard position, training row in the shard, cluster, z)."""
        best: list[tuple[float, int, int, int, np.ndarray]] = []
        starts: dict[int, int] = {}
        for pos, rows, labels, d2 in self._assigned(centroids):
            start = starts.get(pos, 0)
            starts[pos] = start + len(rows)
            top = np.argpartition(-d2, min(m, len(rows)) - 1)[:m]
            best += [(float(d2[i]), pos, start + int(i), int(labels[i]), rows.z(i)) for i in top]
            best = sorted(best, key=lambda c: (-c[0], c[1], c[2]))[:m]
        return best

    def final_pass(self, centroids: np.ndarray) -> tuple[float, np.ndarray]:
        """(Σ squared distance to the nearest centroid, rows per cluster)."""
        inertia, counts = 0.0, np.zeros(len(centroids), dtype=np.int64)
        for _, _, labels, d2 in self._assigned(centroids):
            inertia += float(d2.sum())
            counts += np.bincount(labels, minlength=len(centroids))
        return inertia, counts

    def labels(self, centroids: np.ndarray) -> dict[int, np.ndarray]:
        """Per shard: the nearest centroid of each training row, in file order."""
        out: dict[int, list[np.ndarray]] = {pos: [np.zeros(0, dtype=np.int64)] for pos, _ in self.shards}
        for pos, _, labels, _ in self._assigned(centroids):
            out[pos].append(labels)
        return {pos: np.concatenate(parts) for pos, parts in out.items()}


# ------------------------------------------------------------------------------------------------
# the driver


class ShardPool:
    """Long-lived `ShardWorker` actors over the shards, and the driver side of every step.

    `ShardPool(shards)` validates the shards, starts the actors and reads every row once (PCA
    moments); then `fit_projection` → `init_centroids` → `lloyd`. Use as a context manager (the
    actors are killed on exit). A worker holds its training rows in memory when all rows of its
    files × `bytes_per_row(H)` fit `memory_budget_bytes` (None: always), otherwise it streams them
    on every pass."""

    def __init__(self, shards: Sequence[str | Path], *, num_workers: int = 2, cpus_per_worker: float = 0.5,
                 memory_budget_bytes: int | None = None, split: str = "train",
                 block_rows: int = DEFAULT_BLOCK_ROWS):
        import pyarrow.parquet as pq
        import ray

        self.paths = sorted((Path(s) for s in shards), key=str)   # the canonical order
        self.width = check_schemas(self.paths)
        self.num_workers = max(1, min(num_workers, len(self.paths)))
        have = ray.cluster_resources().get("CPU", 0)
        if self.num_workers * cpus_per_worker > have:
            raise TrixmedError("stratify", f"{self.num_workers} workers × {cpus_per_worker} CPUs need more CPUs "
                                           f"than the Ray cluster has ({have:g})")
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from trixmed.ray_resources import wait_for_resources

        wait_for_resources([{"CPU": cpus_per_worker}] * self.num_workers, "stratify.num_workers")
        # placement_group=None: inside a Tune trial the workers would otherwise be captured into the
        # trial's own placement group, which holds only the trial process's small CPU share
        remote = ray.remote(num_cpus=cpus_per_worker)(ShardWorker).options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
        self.workers, self.streaming = [], []
        for w in range(self.num_workers):
            owned = list(range(w, len(self.paths), self.num_workers))
            rows = sum(pq.ParquetFile(self.paths[p]).metadata.num_rows for p in owned)
            in_memory = memory_budget_bytes is None or rows * bytes_per_row(self.width) <= memory_budget_bytes
            self.streaming.append(not in_memory)
            self.workers.append(remote.remote([(p, str(self.paths[p])) for p in owned], self.width, split,
                                              in_memory, block_rows, max(1, int(cpus_per_worker))))
        self._transform: ClusterTransform | None = None
        self.mean_variance = float("nan")   # mean per-component variance of the z-scored rows
        try:
            loaded = self._all("load")
        except BaseException:
            self.close()
            raise
        self.shard_rows = np.zeros(len(self.paths), dtype=np.int64)   # training rows per shard
        for counts, *_ in loaded:
            for pos, c in counts.items():
                self.shard_rows[pos] = c
        self._moments = combine_moments([m[1:] for m in loaded])

    @property
    def n_train(self) -> int:
        return int(self.shard_rows.sum())

    def __enter__(self) -> ShardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []

    # -- calling the workers -------------------------------------------------------------------

    def _all(self, method: str, *args: Any) -> list[Any]:
        return _gather([getattr(w, method).remote(*args) for w in self.workers])

    def _by_owner(self, method: str, requests: list[tuple[int, Any]], *leading: Any) -> list[Any]:
        """Send each (shard position, value) request to the worker owning that shard, one call per
        worker (`method(*leading, its requests)`); answers in request order."""
        groups: dict[int, list[int]] = {}
        for r, (pos, _) in enumerate(requests):
            groups.setdefault(pos % self.num_workers, []).append(r)
        refs = [getattr(self.workers[w], method).remote(*leading, [requests[r] for r in rs]) for w, rs in groups.items()]
        out: list[Any] = [None] * len(requests)
        for rs, answers in zip(groups.values(), _gather(refs)):
            for r, a in zip(rs, answers):
                out[r] = a
        return out

    # -- PCA and z-score -----------------------------------------------------------------------

    def fit_projection(self, pca_components: int) -> ClusterTransform:
        """PCA (top-k eigenvectors of the covariance) and z-score from the reduced moments; the
        workers project their rows from now on. Returns the transform without centroids."""
        n, mean, scatter = self._moments
        fitted = pca_from_moments(n, mean, scatter, pca_components)
        if fitted is None:
            where = os.path.commonpath([str(p) for p in self.paths])
            raise TrixmedError(where, f"every feature is constant over the {n} training rows "
                                      "(zero variance): nothing to cluster")
        components, scale_std, self.mean_variance = fitted
        scale_mean = np.zeros(len(components))
        self._transform = ClusterTransform(pca_mean=mean, pca_components=components, scale_mean=scale_mean,
                                           scale_std=scale_std, centroids=np.zeros((0, len(components))))
        self._all("set_projection", mean, components, scale_mean, scale_std)
        return self._transform

    # -- K-means -------------------------------------------------------------------------------

    def _locate(self, index: int) -> tuple[int, int]:
        """Global training-row number (canonical order) → (shard position, row in the shard)."""
        ends = np.cumsum(self.shard_rows)
        pos = int(np.searchsorted(ends, index, side="right"))
        return pos, int(index - (ends[pos] - self.shard_rows[pos]))

    def _shard_at(self, ends: np.ndarray, target: float) -> int:
        """The first shard whose cumulative D² reaches `target` (a shard with training rows)."""
        pos = min(int(np.searchsorted(ends, target)), len(ends) - 1)
        nonempty = np.flatnonzero(self.shard_rows)
        later = nonempty[nonempty >= pos]
        return int(later[0] if later.size else nonempty[-1])

    def _potentials(self, chosen: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """[S, L] per-shard potentials in canonical shard order."""
        out = np.zeros((len(self.paths), len(candidates)))
        for part in self._all("potentials", chosen, candidates):
            for pos, v in part.items():
                out[pos] = v
        return out

    def init_centroids(self, num_clusters: int, method: str, rng: np.random.Generator,
                       local_trials: int | None = None) -> np.ndarray:
        """Initial centroids [K, k]: greedy k-means++ as scikit-learn does it (`local_trials`
        candidates a round, default 2 + ln K; 1 = plain k-means++), or K distinct uniform rows."""
        self._require_projection()
        n = self.n_train
        if method == "random":
            picks = rng.choice(n, size=num_clusters, replace=False)
            return np.stack(self._by_owner("rows_at_indices", [self._locate(int(i)) for i in picks]))
        if method != "k-means++":
            raise TrixmedError("stratify.kmeans_init", f"must be k-means++ or random, got {method!r}")
        trials = local_trials or 2 + int(np.log(num_clusters))
        centres = np.stack(self._by_owner("rows_at_indices", [self._locate(int(rng.integers(n)))]))
        totals = self._potentials(np.zeros((0, centres.shape[1])), centres)[:, 0]
        for _ in range(1, num_clusters):
            ends = np.cumsum(totals)
            requests = []
            for target in rng.uniform(size=trials) * ends[-1]:
                pos = self._shard_at(ends, target)
                requests.append((pos, float(target - (ends[pos] - totals[pos]))))
            candidates = np.stack(self._by_owner("rows_at_potentials", requests, centres))
            per_shard = self._potentials(centres, candidates)
            best = int(np.argmin(per_shard.sum(0)))
            centres = np.vstack([centres, candidates[best]])
            totals = per_shard[:, best]
        return centres

    def lloyd(self, init: np.ndarray, max_iter: int, tol: float) -> LloydResult:
        """Lloyd iterations from `init` [K, k] on the z-scored rows, as scikit-learn's `KMeans`
        (`init=init, n_init=1, max_iter, tol`) runs them: `tol` is relative to the mean variance of
        the z-scored rows; empty clusters take the farthest rows."""
        self._require_projection()
        centroids = np.array(init, dtype=np.float64)
        tol_abs = tol * self.mean_variance
        shifts, seconds, converged = [], [], False
        for i in range(max_iter):
            t0 = time.perf_counter()
            parts = np.sum(self._all("lloyd_partials", centroids, i > 0), axis=0)
            sums, counts = parts[:, :-1], parts[:, -1]
            empty = np.flatnonzero(counts == 0)
            if empty.size:
                self._relocate(centroids, sums, counts, empty)
            new = np.where(counts[:, None] > 0, sums * (1.0 / np.maximum(counts, 1.0))[:, None], sums)
            shifts.append(float(((new - centroids) ** 2).sum()))
            centroids = new
            seconds.append(time.perf_counter() - t0)
            if shifts[-1] <= tol_abs:
                converged = True
                break
        inertia, counts = self.final_pass(centroids)
        return LloydResult(centroids=centroids, inertia=inertia, counts=counts, n_iter=len(shifts),
                           converged=converged, shifts=shifts, iteration_seconds=seconds)

    def _relocate(self, centroids: np.ndarray, sums: np.ndarray, counts: np.ndarray, empty: np.ndarray) -> None:
        """Each empty cluster takes one of the rows farthest from their centroid (globally, farthest
        first, ties in canonical order), which leaves its old cluster (scikit-learn's rule)."""
        m = len(empty)
        candidates = [c for part in self._all("farthest", centroids, m) for c in part]
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
        for new_id, (_, _, _, old_id, z) in zip(empty, candidates[:m]):
            sums[old_id] -= z
            sums[new_id] = z
            counts[old_id] -= 1
            counts[new_id] = 1

    def final_pass(self, centroids: np.ndarray) -> tuple[float, np.ndarray]:
        """(inertia, rows per cluster) of the assignment to `centroids`."""
        results = self._all("final_pass", centroids)
        return float(sum(r[0] for r in results)), np.sum([r[1] for r in results], axis=0)

    def labels(self, centroids: np.ndarray) -> np.ndarray:
        """The cluster of every training row, in canonical order (shards by path, rows in file order)."""
        per_shard: dict[int, np.ndarray] = {}
        for part in self._all("labels", centroids):
            per_shard.update(part)
        return np.concatenate([per_shard[p] for p in range(len(self.paths))])

    def _require_projection(self) -> None:
        if self._transform is None:
            raise RuntimeError("ShardPool.fit_projection must run before K-means")


def _gather(refs: list[Any]) -> list[Any]:
    """`ray.get`, re-raising a worker's input problem as the one-line `TrixmedError`."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as e:
        if isinstance(e.cause, _InputProblem):
            raise TrixmedError(*e.cause.args) from None
        raise


def fit_clusters_distributed(shards: list[Path], cfg: StratifyConfig, seed: int, *, num_workers: int = 2,
                             cpus_per_worker: float = 0.5, memory_budget_bytes: int | None = None,
                             split: str = "train") -> ClusterTransform:
    """`fit_clusters` over Parquet feature shards (`visit_key`, `split`, `features`) with Ray actors:
    the same `ClusterTransform` (PCA, z-score, centroids, inertia), fitted on the `split` rows, so
    `transform.assign` routes any row afterwards. Restart r seeds its initialisation with numpy's
    Generator from (seed, r). Needs a connected Ray (`ray.init`, or `ensure_ray` in the pipeline);
    `num_workers` is capped at the number of shards. Bad input raises a one-line `TrixmedError`
    before any K-means (see the module docstring)."""
    cfg.validate("stratify")
    with ShardPool(shards, num_workers=num_workers, cpus_per_worker=cpus_per_worker,
                   memory_budget_bytes=memory_budget_bytes, split=split) as pool:
        if pool.n_train < cfg.num_clusters:
            raise TrixmedError("stratify.num_clusters", f"{cfg.num_clusters} clusters need at least as many "
                                                        f"training samples, got {pool.n_train}")
        transform = pool.fit_projection(cfg.pca_components)
        best: LloydResult | None = None
        for restart in range(cfg.kmeans_n_init):
            rng = np.random.default_rng([seed, restart])
            init = pool.init_centroids(cfg.num_clusters, cfg.kmeans_init, rng)
            result = pool.lloyd(init, cfg.kmeans_iters, cfg.kmeans_tol)
            if best is None or result.inertia < best.inertia:
                best = result
    return replace(transform, centroids=best.centroids, inertia=best.inertia)
