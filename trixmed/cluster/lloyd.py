"""The numerics of trixmed's distributed K-means, on plain numpy: what one worker computes on its
blocks of rows and what the driver reduces (trixmed/cluster/distributed.py runs them on Ray).

- PCA from reduced moments: every worker returns (n, mean, centred scatter Σ(x-μ)(x-μ)ᵀ) of its
  rows, combined with Chan's pairwise update (as stable as a two-pass covariance, in one pass);
  `pca_from_moments` takes `numpy.linalg.eigh` of the covariance and keeps the top-k
  eigenvectors, signed like scikit-learn's `svd_flip(u_based_decision=False)` (largest-|value|
  entry positive). The H×H covariance is fine up to H ≈ 8k (LLaMA's 4096: a 128 MiB scatter a
  worker, eigh in seconds; the pass costs N·H² flops); beyond that a randomized sketch would be
  needed, not done here.
- z-score: the per-component sums and sums of squares of the projections follow from the same
  moments (Σp = 0, Σp_j² = v_jᵀ M v_j), so no extra pass; population std like StandardScaler.
  A component whose variance is zero up to round-off (≤ max(n, H)·eps·largest variance: the
  feature set has lower rank than k) keeps std 1, so its round-off noise is not blown up to unit
  variance (`fit_clusters` divides by any std > 0 there).
- The E-step (`nearest`) ranks centroids with a float32 GEMM and redoes in float64 only the rows
  whose best two centroids lie within the float32 error bound, so the labels are the float64
  ones, scikit-learn's; the cluster sums are a sparse one-hot product on the float64 rows. A
  worker's later Lloyd steps update its previous sums by the rows whose cluster changed
  (`moved_sums`) instead of summing every row again: after the first few iterations few rows move,
  so a step costs little more than the float32 screen. Each move adds two float64 roundings to a
  cluster's sum (a fresh sum: one a row), so the two differ by round-off (largest centroid
  difference 1.8e-15 after 20 iterations on 1M × 64 rows); benchmarks/stratify.py times the steps
  against scikit-learn's Lloyd and compares inertia and labels.

Library choice: numpy + BLAS (and one scipy sparse product), no new dependency. faiss-cpu works in
float32 only and would be a new dependency for speed the target does not need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

_EPS = float(np.finfo(np.float64).eps)


def bytes_per_row(width: int) -> int:
    """Memory a worker holding its rows spends on one row of H features: float64 raw rows while
    loading; afterwards z (k ≤ H components, a 1 column) in float64 and float32, ‖z‖², and the
    row's cluster during Lloyd (`label_dtype`: 1 byte up to 256 clusters, 2 up to 65,536)."""
    return 12 * (width + 2) + 2


@dataclass
class LloydResult:
    centroids: np.ndarray              # [K, k]
    inertia: float                     # Σ squared distance to the nearest final centroid
    counts: np.ndarray                 # [K] training rows per cluster at the final assignment
    n_iter: int
    converged: bool                    # stopped by the tolerance rather than by max_iter
    shifts: list[float] = field(default_factory=list)              # Σ squared centroid shift per iteration
    iteration_seconds: list[float] = field(default_factory=list)   # wall time per Lloyd iteration


@dataclass
class Rows:
    """Projected training rows of one block: [z, 1] in float64, a float32 copy for the fast
    assignment screen, and each row's squared norm ‖z‖²."""

    x: np.ndarray      # [n, k+1] float64, last column 1
    x32: np.ndarray    # [n, k+1] float32
    sq: np.ndarray     # [n] float64
    norm: np.ndarray   # [n] ‖z‖, for the float32 error bound of every Lloyd step

    @classmethod
    def of(cls, x: np.ndarray) -> Rows:
        z = x[:, :-1]
        sq = np.einsum("ij,ij->i", z, z)
        return cls(x, x.astype(np.float32), sq, np.sqrt(sq))

    def __len__(self) -> int:
        return len(self.x)

    def z(self, i: int | np.ndarray) -> np.ndarray:
        return self.x[i, :-1].copy()


class Centres:
    """Centroids prepared for `nearest`: [-2c, ‖c‖²] in float64 and float32 (a row [z, 1] times its
    transpose gives ‖z - c‖² - ‖z‖², same argmin), and the float32 error bound's coefficients."""

    def __init__(self, centroids: np.ndarray):
        self.c = np.asarray(centroids, dtype=np.float64)
        self.aug = np.hstack([-2.0 * self.c, (self.c * self.c).sum(1, keepdims=True)])
        self.aug32_t = np.ascontiguousarray(self.aug.T, dtype=np.float32)
        # |float32 value - exact| ≤ (m + 2)·u·Σ|a·b| ≤ (m + 2)·u·(2‖c‖‖z‖ + ‖c‖²) for the m = k+1
        # products (inputs rounded to float32, then a float32 sum); two values, and a factor 2 spare
        cmax = float(np.sqrt((self.c * self.c).sum(1).max())) if len(self.c) else 0.0
        g = 4 * (self.aug.shape[1] + 2) * 2.0**-24
        self.slope, self.offset = 2 * g * cmax, g * cmax * cmax


def nearest(rows: Rows, centres: Centres) -> np.ndarray:
    """Index of the nearest centroid of every row (ties → lowest index), as the float64 product
    [z, 1]·[-2c, ‖c‖²]ᵀ ranks them (scikit-learn's E-step). Computed in float32, about 3× faster;
    rows whose best two centroids are closer than the float32 error bound are redone in float64,
    so the labels are the float64 ones."""
    # rows × centroids, then transposed: OpenBLAS's sgemm is ~3× faster with the long side first,
    # and every step below is a whole-row operation on [K, n] (numpy's argmin along axis 0 of that
    # layout is ~25× slower than its min)
    d = np.ascontiguousarray((rows.x32 @ centres.aug32_t).T)   # [K, n]
    best = d.min(0)
    labels = np.zeros(d.shape[1], dtype=np.intp)
    for j in range(len(d) - 1, 0, -1):   # downwards, so a tie ends on the lowest index
        np.putmask(labels, d[j] == best, j)
    d -= best   # rounded relative to the difference itself: far inside the bound's spare factor 2
    bound = (centres.slope * rows.norm + centres.offset).astype(np.float32)
    unsure = np.flatnonzero(np.add.reduce(d <= bound, axis=0, dtype=np.int32) > 1)   # best, and another
    if unsure.size:
        labels[unsure] = (rows.x[unsure] @ centres.aug.T).argmin(1)
    return labels


def label_dtype(k: int) -> np.dtype:
    """The smallest unsigned integer type that holds cluster indices 0 … k-1."""
    return np.min_scalar_type(max(k - 1, 0))


def _onehot(labels: np.ndarray, k: int) -> Any:
    from scipy.sparse import csc_array

    n = len(labels)
    return csc_array((np.ones(n), labels, np.arange(n + 1)), shape=(k, n))


def cluster_sums(rows: Rows, labels: np.ndarray, k: int) -> np.ndarray:
    """[k, k'+1]: the sum of the rows [z, 1] in each cluster (its count in the last column)."""
    return _onehot(labels, k) @ rows.x


def moved_sums(rows: Rows, labels: np.ndarray, before: np.ndarray, k: int) -> np.ndarray:
    """What the rows whose cluster changed from `before` to `labels` add to `cluster_sums`: each
    such row once into its new cluster and once out of its old one."""
    moved = np.flatnonzero(labels != before)
    x = rows.x[moved]
    return _onehot(labels[moved], k) @ x - _onehot(before[moved], k) @ x


def sq_distances(rows: Rows, centres: np.ndarray) -> np.ndarray:
    """[n, c] squared euclidean distances of the rows to `centres` (float64, ≥ 0)."""
    if len(centres) == 0:
        return np.zeros((len(rows), 0))
    d2 = rows.x @ Centres(centres).aug.T + rows.sq[:, None]
    return np.maximum(d2, 0.0, out=d2)


def nearest_sq(rows: Rows, centres: np.ndarray) -> np.ndarray:
    return sq_distances(rows, centres).min(1) if len(centres) else np.full(len(rows), np.inf)


def combine_moments(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.'s pairwise update of (n, mean, centred scatter)."""
    n, mean, scatter = parts[0]
    for m, bmean, bscatter in parts[1:]:
        if m == 0:
            continue
        delta = bmean - mean
        scatter = scatter + bscatter + np.outer(delta, delta) * (n * m / (n + m))
        mean = mean + delta * (m / (n + m))
        n += m
    return n, mean, scatter


def pca_from_moments(n: int, mean: np.ndarray, scatter: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float] | None:
    """PCA and z-score from (n, mean [H], centred scatter [H, H]): the top-k components [k, H],
    signed like scikit-learn's `svd_flip(u_based_decision=False)`, each component's std (1 for one
    whose variance is round-off: the rows have lower rank than k), and the mean variance of the
    z-scored projections (the tolerance's scale). None when every feature is constant."""
    width = len(mean)
    cov = scatter / n
    var = np.diag(cov)
    # scikit-learn's test for a constant feature: variance at round-off level of its mean
    if (var <= n * _EPS * var + (n * mean * _EPS) ** 2).all():
        return None
    k = min(k, n, width)
    values, vectors = np.linalg.eigh(cov)
    components = vectors[:, ::-1][:, :k].T.copy()
    peak = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(k), peak])[:, None]
    comp_var = np.maximum(((components @ cov) * components).sum(1), 0.0)
    zero = comp_var <= max(n, width) * _EPS * max(values[-1], 0.0)
    scale_std = np.where(zero, 1.0, np.sqrt(comp_var))
    return components, scale_std, float(np.mean(comp_var / scale_std**2))
