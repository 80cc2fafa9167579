"""Distributed PCA → z-score → K-means over Parquet shards (real Ray, 2 CPUs) against scikit-learn."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trixmed.cluster import ClusterTransform, ShardPool, fit_clusters, fit_clusters_distributed
from trixmed.config import StratifyConfig
from trixmed.errors import TrixmedError


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    """One local Ray for the module; shut down only if this fixture started it."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def blobs(n: int, dim: int, k: int, spread: float = 8.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 rows around k centres with per-feature scales (so PCA has distinct eigenvalues)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, spread, size=(k, dim))
    truth = rng.integers(0, k, n)
    x = (centres[truth] + rng.normal(size=(n, dim))) * np.linspace(0.5, 2.0, dim)
    return x.astype(np.float32), truth


def write_shards(directory: Path, x: np.ndarray, bounds: list[int] | None = None,
                 split: np.ndarray | None = None, prefix: str = "part") -> list[Path]:
    """Rows [bounds[i], bounds[i+1]) into `prefix`-i.parquet (sorted names keep the row order)."""
    bounds = bounds or [0, len(x)]
    split = np.full(len(x), "train") if split is None else split
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        paths.append(directory / f"{prefix}-{i:02d}.parquet")
        pq.write_table(pa.table({
            "visit_key": [f"v{r}" for r in range(a, b)],
            "split": split[a:b].tolist(),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(x[a:b].reshape(-1)), x.shape[1]),
        }), paths[-1])
    return paths


def route(transform: ClusterTransform, centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Nearest-centroid labels of `x` through `transform` with other centroids."""
    return replace(transform, centroids=centroids).assign(x)[0]


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


@pytest.mark.parametrize("spread, same_labels", [(8.0, True), (0.6, False)], ids=["separated", "overlapping"])
def test_lloyd_agrees_with_sklearn_from_the_same_init(tmp_path, spread, same_labels):
    from sklearn.cluster import KMeans

    x, _ = blobs(1200, 10, 5, spread=spread)
    paths = write_shards(tmp_path, x, [0, 500, 900, 1200])
    with ShardPool(paths, num_workers=2) as pool:
        transform = pool.fit_projection(6)
        init = pool.init_centroids(5, "k-means++", np.random.default_rng(3))
        result = pool.lloyd(init, max_iter=100, tol=1e-4)
        labels = pool.labels(result.centroids)
    z = transform.project(x)
    ref = KMeans(5, init=init, n_init=1, max_iter=100, tol=1e-4).fit(z)
    assert result.inertia == pytest.approx(ref.inertia_, rel=5e-3)
    assert result.n_iter == ref.n_iter_
    np.testing.assert_array_equal(np.bincount(labels, minlength=5), result.counts)
    if same_labels:
        np.testing.assert_array_equal(labels, ref.labels_)
        np.testing.assert_allclose(result.centroids, ref.cluster_centers_, rtol=1e-9, atol=1e-9)
    # the transform routes the training rows as the workers assigned them
    np.testing.assert_array_equal(route(transform, result.centroids, x), labels)


def test_kmeanspp_recovers_the_blobs_like_sklearn(tmp_path):
    x, truth = blobs(1500, 12, 6)
    split = np.where(np.arange(1500) % 5 == 0, "test", "train")
    paths = write_shards(tmp_path, x, [0, 600, 1500], split=split)
    cfg = StratifyConfig(pca_components=8, num_clusters=6, kmeans_n_init=2)
    transform = fit_clusters_distributed(paths, cfg, seed=7)
    train = split == "train"
    labels = transform.assign(x[train])[0]
    assert adjusted_rand(labels, truth[train]) >= 0.99
    assert adjusted_rand(labels, fit_clusters(x[train], cfg, seed=7).assign(x[train])[0]) >= 0.99
    assert transform.centroids.shape == (6, 8) and np.isfinite(transform.inertia)
    assert adjusted_rand(transform.assign(x[~train])[0], truth[~train]) >= 0.99   # held-out rows route too


def test_pca_and_zscore_equal_sklearn(tmp_path):
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x, _ = blobs(800, 9, 4, spread=3.0)
    x[:, 4] = 2.5   # one constant column: fine, it just carries no variance
    with ShardPool(write_shards(tmp_path, x, [0, 300, 800]), num_workers=2) as pool:
        transform = pool.fit_projection(5)
    pca = PCA(5, svd_solver="full").fit(x.astype(np.float64))
    signs = np.sign((pca.components_ * transform.pca_components).sum(1))
    np.testing.assert_allclose(transform.pca_components, pca.components_ * signs[:, None], atol=1e-9)
    np.testing.assert_allclose(np.abs(transform.pca_components), np.abs(pca.components_), atol=1e-9)
    np.testing.assert_allclose(transform.pca_mean, pca.mean_, rtol=1e-12, atol=1e-12)
    z_ref = StandardScaler().fit_transform(pca.transform(x.astype(np.float64))) * signs
    np.testing.assert_allclose(transform.project(x), z_ref, atol=1e-8)
    # deterministic sign: each component's largest-|value| entry is positive
    peak = np.abs(transform.pca_components).argmax(1)
    assert (transform.pca_components[np.arange(5), peak] > 0).all()


def test_same_result_for_any_number_of_workers_and_any_sharding(tmp_path):
    x, _ = blobs(900, 8, 4, spread=1.5)
    one = write_shards(tmp_path / "one", x)
    five = write_shards(tmp_path / "five", x, [0, 7, 250, 251, 610, 900])
    cfg = StratifyConfig(pca_components=6, num_clusters=4, kmeans_n_init=2, kmeans_tol=1e-6)
    fits = [fit_clusters_distributed(one, cfg, seed=1, num_workers=1),
            fit_clusters_distributed(five, cfg, seed=1, num_workers=2),
            fit_clusters_distributed(five, cfg, seed=1, num_workers=1)]
    for other in fits[1:]:
        for name in ("pca_mean", "pca_components", "scale_std", "centroids"):
            np.testing.assert_allclose(getattr(other, name), getattr(fits[0], name), rtol=1e-9, atol=1e-9, err_msg=name)
        assert other.inertia == pytest.approx(fits[0].inertia, rel=1e-10)
    # a different seed really changes the draw (the comparison above is not vacuous)
    with ShardPool(five, num_workers=2) as pool:
        pool.fit_projection(6)
        a, b = (pool.init_centroids(4, "k-means++", np.random.default_rng([s, 0])) for s in (1, 2))
    assert not np.allclose(a, b)


def test_empty_cluster_takes_the_farthest_row_like_sklearn(tmp_path):
    from sklearn.cluster import KMeans

    x, _ = blobs(600, 4, 2, spread=5.0, seed=2)
    with ShardPool(write_shards(tmp_path, x, [0, 200, 600]), num_workers=2) as pool:
        transform = pool.fit_projection(4)
        z = transform.project(x)
        # two centroids on the data, one far away that no row is nearest to
        init = np.vstack([z[:2], np.full(4, 50.0)])
        assert (np.bincount(route(transform, init, x), minlength=3) == 0).any()
        result = pool.lloyd(init, max_iter=50, tol=1e-4)
    assert (result.counts > 0).all() and result.counts.sum() == 600
    ref = KMeans(3, init=init, n_init=1, max_iter=50, tol=1e-4).fit(z)
    np.testing.assert_allclose(result.centroids, ref.cluster_centers_, rtol=1e-9, atol=1e-9)
    assert result.inertia == pytest.approx(ref.inertia_, rel=1e-9)


def test_streaming_gives_the_in_memory_result(tmp_path):
    x, _ = blobs(1000, 6, 3, spread=2.0)
    paths = write_shards(tmp_path, x, [0, 450, 1000])
    results = {}
    for budget in (None, 1):   # 1 byte: every worker re-reads its files on every pass
        with ShardPool(paths, num_workers=2, memory_budget_bytes=budget, block_rows=128) as pool:
            transform = pool.fit_projection(4)
            init = pool.init_centroids(3, "k-means++", np.random.default_rng(0))
            results[budget] = (pool.streaming, transform, init, pool.lloyd(init, 30, 1e-4), pool.labels(init))
    (mem_flags, t_mem, init_mem, r_mem, l_mem), (stream_flags, t_str, init_str, r_str, l_str) = results.values()
    assert mem_flags == [False, False] and stream_flags == [True, True]
    np.testing.assert_array_equal(t_str.pca_components, t_mem.pca_components)
    np.testing.assert_array_equal(init_str, init_mem)
    np.testing.assert_array_equal(r_str.centroids, r_mem.centroids)
    np.testing.assert_array_equal(l_str, l_mem)
    assert r_str.inertia == r_mem.inertia and r_str.n_iter == r_mem.n_iter


def test_random_init_picks_distinct_training_rows(tmp_path):
    x, _ = blobs(300, 5, 3)
    split = np.where(np.arange(300) < 100, "val", "train")
    with ShardPool(write_shards(tmp_path, x, [0, 150, 300], split=split), num_workers=2) as pool:
        transform = pool.fit_projection(5)
        assert pool.n_train == 200
        init = pool.init_centroids(3, "random", np.random.default_rng(0))
    z = transform.project(x[100:])
    rows = [int(np.flatnonzero((np.abs(z - c) < 1e-12).all(1))[0]) for c in init]
    assert len(set(rows)) == 3


# -- bad input: one line naming the file and row, or the config key, before any K-means --------


def _shard(path: Path, x: np.ndarray) -> Path:
    return write_shards(path.parent, x, prefix=path.name)[0]


@pytest.mark.parametrize("value, shown", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_non_finite_feature_names_file_and_row(tmp_path, value, shown):
    x, _ = blobs(40, 4, 2)
    ok = _shard(tmp_path / "a", x)
    x[17, 2] = value
    bad = _shard(tmp_path / "b", x)
    with pytest.raises(TrixmedError) as e:
        fit_clusters_distributed([ok, bad], StratifyConfig(pca_components=2, num_clusters=2), seed=0)
    assert str(e.value) == f"{bad}: row 17 (visit_key 'v17'): features[2] is {shown}, not a finite number"


def test_inconsistent_width_names_the_file(tmp_path):
    x, _ = blobs(40, 4, 2)
    a = _shard(tmp_path / "a", x)
    b = _shard(tmp_path / "b", np.hstack([x, x[:, :1]]))
    with pytest.raises(TrixmedError) as e:
        fit_clusters_distributed([b, a], StratifyConfig(num_clusters=2), seed=0)
    assert str(e.value) == f"{b}: features have width 5, but {a.name} has 4"


def test_fewer_training_rows_than_clusters(tmp_path):
    x, _ = blobs(30, 4, 2)
    split = np.where(np.arange(30) < 5, "train", "test")
    paths = write_shards(tmp_path, x, [0, 10, 30], split=split)
    with pytest.raises(TrixmedError) as e:
        fit_clusters_distributed(paths, StratifyConfig(num_clusters=8), seed=0)
    assert str(e.value) == "stratify.num_clusters: 8 clusters need at least as many training samples, got 5"


def test_every_feature_constant_is_nothing_to_cluster(tmp_path):
    x = np.tile(np.float32([1.5, -2.0, 0.1]), (20, 1))
    paths = write_shards(tmp_path, x, [0, 12, 20])
    with pytest.raises(TrixmedError) as e:
        fit_clusters_distributed(paths, StratifyConfig(num_clusters=2), seed=0)
    assert str(e.value) == f"{tmp_path}: every feature is constant over the 20 training rows (zero variance): nothing to cluster"


def test_float32_screen_gives_the_float64_labels_even_at_near_ties():
    from trixmed.cluster.lloyd import Centres, Rows, nearest

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, size=(6, 16))
    z = rng.normal(0, 3, size=(4000, 16))
    # rows on the bisector of two centres, nudged by far less than float32 can resolve
    mid = (centres[1] + centres[4]) / 2 + (centres[1] - centres[4]) * 1e-9 * rng.choice([-1, 1], size=(2000, 1))
    z = np.vstack([z, mid, centres])   # … and rows exactly on a centre
    rows = Rows.of(np.hstack([z, np.ones((len(z), 1))]))
    reference = (rows.x @ Centres(centres).aug.T).argmin(1)
    np.testing.assert_array_equal(nearest(rows, Centres(centres)), reference)
    # an exact tie (a centroid twice) goes to the lower index, as argmin has it
    doubled = np.vstack([centres[:3], centres[1:2], centres[3:]])
    labels = nearest(rows, Centres(doubled))
    np.testing.assert_array_equal(labels, (rows.x @ Centres(doubled).aug.T).argmin(1))
    assert (labels == 1).any() and not (labels == 3).any()


@pytest.mark.parametrize("in_memory", [True, False], ids=["in-memory", "streaming"])
def test_a_follow_on_lloyd_step_sums_what_a_fresh_step_sums(tmp_path, in_memory):
    from trixmed.cluster.distributed import ShardWorker

    x, _ = blobs(3000, 5, 4, spread=1.0)
    path = write_shards(tmp_path, x)[0]
    worker = ShardWorker([(0, str(path))], 5, "train", in_memory, block_rows=256)
    worker.load()
    worker.set_projection(np.zeros(5), np.eye(5), np.zeros(5), np.ones(5))
    rng = np.random.default_rng(1)
    first, second = x[rng.choice(len(x), 4)], x[rng.choice(len(x), 4)]
    before = worker.lloyd_partials(first, False)
    follow_on = worker.lloyd_partials(second, True)
    fresh = worker.lloyd_partials(second, False)
    assert (before[:, -1] != fresh[:, -1]).any()   # rows did change clusters
    np.testing.assert_array_equal(follow_on[:, -1], fresh[:, -1])
    np.testing.assert_allclose(follow_on, fresh, rtol=1e-12, atol=1e-9)


def test_variable_size_list_features_work_and_a_short_row_is_named(tmp_path):
    x, _ = blobs(60, 4, 2)
    fixed = write_shards(tmp_path / "fixed", x)
    rows = [list(map(float, r)) for r in x]
    (tmp_path / "lists").mkdir()
    lists = tmp_path / "lists" / "part.parquet"
    pq.write_table(pa.table({"visit_key": [f"v{i}" for i in range(60)], "split": ["train"] * 60,
                             "features": pa.array(rows, pa.list_(pa.float64()))}), lists)
    cfg = StratifyConfig(pca_components=3, num_clusters=2, kmeans_n_init=1)
    a, b = (fit_clusters_distributed(p, cfg, seed=0, num_workers=1) for p in (fixed, [lists]))
    np.testing.assert_allclose(b.centroids, a.centroids, atol=1e-9)
    rows[5] = rows[5][:3]
    pq.write_table(pa.table({"visit_key": [f"v{i}" for i in range(60)], "split": ["train"] * 60,
                             "features": pa.array(rows, pa.list_(pa.float64()))}), lists)
    with pytest.raises(TrixmedError) as e:
        fit_clusters_distributed([lists], cfg, seed=0)
    assert str(e.value) == f"{lists}: row 5 (visit_key 'v5'): features have width 3, expected 4"
