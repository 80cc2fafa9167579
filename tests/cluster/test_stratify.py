"""PCA → z-score → K-means: fitted on train, saved without pickle, routes new rows identically."""

from __future__ import annotations

import numpy as np
import pytest

from trixmed.cluster import ClusterTransform, fit_clusters
from trixmed.config import StratifyConfig
from trixmed.errors import TrixmedError


def blobs(n_per: int = 40, dim: int = 16, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, size=(k, dim))
    x = np.concatenate([c + rng.normal(0, 0.5, size=(n_per, dim)) for c in centres])
    return x, np.repeat(np.arange(k), n_per)


def test_recovers_separated_groups_and_matches_sklearn_pipeline():
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x, truth = blobs()
    cfg = StratifyConfig(pca_components=4, num_clusters=3)
    t = fit_clusters(x, cfg, seed=0)
    labels, dist = t.assign(x)
    # one cluster per blob
    assert {len(set(labels[truth == g])) for g in range(3)} == {1} and len(set(labels)) == 3
    assert (dist >= 0).all()
    # the numpy transform equals scikit-learn's own PCA → StandardScaler → KMeans
    z = StandardScaler().fit_transform(PCA(4, svd_solver="full").fit_transform(x))
    np.testing.assert_allclose(np.abs(t.project(x)), np.abs(z), atol=1e-8)   # PCA signs are arbitrary
    ref = KMeans(3, n_init=4, random_state=0).fit(z)
    assert len(set(zip(labels, ref.labels_))) == 3


def test_save_load_round_trip_routes_new_rows_the_same(tmp_path):
    x, _ = blobs()
    t = fit_clusters(x, StratifyConfig(pca_components=5, num_clusters=3), seed=1)
    t.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transform.json", "transform.safetensors"]
    loaded = ClusterTransform.load(tmp_path)
    new = x[::7] + 0.1
    np.testing.assert_array_equal(loaded.assign(new)[0], t.assign(new)[0])
    np.testing.assert_allclose(loaded.assign(new)[1], t.assign(new)[1])
    assert loaded.inertia == pytest.approx(t.inertia)


def test_constant_component_keeps_unit_scale():
    x, _ = blobs(dim=4)
    x[:, 3] = 5.0
    t = fit_clusters(x, StratifyConfig(pca_components=4, num_clusters=2), seed=0)
    assert np.isfinite(t.project(x)).all()


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(TrixmedError, match="num_clusters"):
        fit_clusters(np.zeros((3, 4)), StratifyConfig(num_clusters=5), seed=0)
    with pytest.raises(TrixmedError, match="missing"):
        ClusterTransform.load(tmp_path)
    t = fit_clusters(blobs()[0], StratifyConfig(pca_components=2, num_clusters=2), seed=0)
    # features of another width are a broken invariant (a model and a transform of different runs),
    # not a user error: a plain ValueError with its traceback
    with pytest.raises(ValueError, match=r"expected shape \[N, 16\]"):
        t.assign(np.zeros((2, 3)))
