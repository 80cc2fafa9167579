"""Cluster coherence as numbers: how alike the patients of one cluster are, and how sharply each
cluster is routed. Pure functions over arrays; `trixmed.report.run_report` feeds them a run.

    Jaccard similarity matrix   S[a, b] = mean Jaccard similarity |A ∩ B| / |A ∪ B| of the
                                diagnosis sets of every pair (visit in cluster a, visit in
                                cluster b), a visit never paired with itself
    within / between            mean of the diagonal of S / mean of its off-diagonal entries (the
                                paper's Figure 6 reading: 0.41 vs 0.025, 16.4×), and the same
                                means weighted by pairs (every within-cluster pair counts once)
    silhouette                  scikit-learn's silhouette score on the z-scored PCA features
    routing sharpness           per cluster, the mass of the top-n gate weights: Σ top-n of G[c]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def multi_hot_sets(sets: Sequence[Sequence[str]]) -> tuple[Any, list[str]]:
    """Code sets → a sparse 0/1 CSR matrix [N, codes] and the column codes (sorted)."""
    from scipy.sparse import csr_matrix

    codes = sorted({c for s in sets for c in s})
    index = {c: i for i, c in enumerate(codes)}
    rows, cols = [], []
    for r, s in enumerate(sets):
        for c in set(s):
            rows.append(r)
            cols.append(index[c])
    data = np.ones(len(rows), dtype=np.float64)
    return csr_matrix((data, (rows, cols)), shape=(len(sets), len(codes))), codes


def jaccard_matrix(sets: Sequence[Sequence[str]]) -> np.ndarray:
    """Pairwise Jaccard similarity [N, N] of code sets; two empty sets score 0 (SafeDrug's rule)."""
    x, _ = multi_hot_sets(sets)
    inter = np.asarray((x @ x.T).todense(), dtype=np.float64)
    size = np.asarray(x.sum(1), dtype=np.float64).ravel()
    union = size[:, None] + size[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def cluster_similarity(sets: Sequence[Sequence[str]], labels: Sequence[int], num_clusters: int) -> dict[str, Any]:
    """Mean pairwise Jaccard similarity within and between clusters (see the module docstring).

    Returns `matrix` [K, K] (NaN where a cluster has no pair, e.g. one member on the diagonal),
    `within`, `between`, `ratio` (cluster means), `within_pairs`, `between_pairs`, `ratio_pairs`
    (pair-weighted means) and the pair counts."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(sets):
        raise ValueError(f"{len(sets)} sets but {len(labels)} labels")
    sim = jaccard_matrix(sets)
    onehot = np.zeros((len(labels), num_clusters))
    onehot[np.arange(len(labels)), labels] = 1.0
    sums = onehot.T @ sim @ onehot
    sums[np.diag_indices(num_clusters)] -= np.bincount(labels, weights=np.diag(sim), minlength=num_clusters)
    sizes = onehot.sum(0)
    pairs = np.outer(sizes, sizes)
    pairs[np.diag_indices(num_clusters)] = sizes * (sizes - 1)   # ordered pairs, self excluded
    matrix = np.divide(sums, pairs, out=np.full_like(sums, np.nan), where=pairs > 0)
    diag = np.diag(matrix)
    off = matrix[~np.eye(num_clusters, dtype=bool)]
    within, between = _nanmean(diag), _nanmean(off)
    n_within, n_between = float(np.trace(pairs)), float(pairs.sum() - np.trace(pairs))
    within_pairs = float(np.trace(sums) / n_within) if n_within else float("nan")
    between_pairs = float((sums.sum() - np.trace(sums)) / n_between) if n_between else float("nan")
    return {
        "matrix": matrix,
        "within": within,
        "between": between,
        "ratio": _ratio(within, between),
        "within_pairs": within_pairs,
        "between_pairs": between_pairs,
        "ratio_pairs": _ratio(within_pairs, between_pairs),
        "n_within_pairs": int(n_within // 2),
        "n_between_pairs": int(n_between // 2),
    }


def silhouette(features: np.ndarray, labels: Sequence[int], *, sample_size: int | None = None, seed: int = 0) -> float:
    """scikit-learn's silhouette score (euclidean), on a seeded sample of `sample_size` rows when
    given; NaN when it is undefined (fewer than 2 clusters, or as many clusters as rows)."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    n_labels = len(np.unique(labels))
    if not 2 <= n_labels <= len(labels) - 1:
        return float("nan")
    size = sample_size if sample_size is not None and sample_size < len(labels) else None
    return float(silhouette_score(np.asarray(features, dtype=np.float64), labels, sample_size=size, random_state=seed))


def routing_sharpness(gates: np.ndarray, top_n: int) -> np.ndarray:
    """Per row of gate weights G [K, E] (each a softmax over the experts): the mass of its top-n."""
    g = np.asarray(gates, dtype=np.float64)
    if g.ndim != 2 or not 1 <= top_n <= g.shape[1]:
        raise ValueError(f"gates must be [clusters, experts] with top_n in 1..experts, got {g.shape} and {top_n}")
    return -np.sort(-g, axis=1)[:, :top_n].sum(1)


def sample_indices(n: int, size: int, seed: int) -> np.ndarray:
    """A seeded sample of `size` of range(n), in increasing order (everything when n ≤ size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not np.isnan(a) else float("nan")
