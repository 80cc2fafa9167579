"""PCA → z-score → K-means, fitted with scikit-learn, kept as plain arrays.

The fitted transform is stored as safetensors (arrays) + JSON (metadata), never as a pickled
estimator, and applied with numpy: a new patient is routed exactly like the training patients,
by the same projection, scaling and nearest centroid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trixmed.config import StratifyConfig
from trixmed.errors import TrixmedError
from trixmed.io import read_json, write_json

_ARRAYS = ("pca_mean", "pca_components", "scale_mean", "scale_std", "centroids")


@dataclass
class ClusterTransform:
    pca_mean: np.ndarray        # [H]
    pca_components: np.ndarray  # [k, H]
    scale_mean: np.ndarray      # [k]
    scale_std: np.ndarray       # [k]; zero-variance components keep std 1, as StandardScaler does
    centroids: np.ndarray       # [K, k] in z-scored PCA space
    inertia: float = float("nan")

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def project(self, features: np.ndarray) -> np.ndarray:
        """Features [N, H] → z-scored principal components [N, k]."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.pca_mean.shape[0]:
            raise ValueError(f"features: expected shape [N, {self.pca_mean.shape[0]}], got {list(features.shape)}")
        z = (features - self.pca_mean) @ self.pca_components.T
        return (z - self.scale_mean) / self.scale_std

    def assign(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid (ties → lowest index) and the distance to it, for each row."""
        z = self.project(features)
        d2 = ((z[:, None, :] - self.centroids[None, :, :]) ** 2).sum(-1)
        labels = d2.argmin(1)
        return labels.astype(np.int64), np.sqrt(d2[np.arange(len(z)), labels])

    def save(self, directory: str | Path) -> None:
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(getattr(self, k), dtype=np.float64) for k in _ARRAYS}, str(directory / "transform.safetensors"))
        write_json(directory / "transform.json", {
            "input_dim": int(self.pca_mean.shape[0]),
            "pca_components": int(self.pca_components.shape[0]),
            "num_clusters": self.num_clusters,
            "inertia": self.inertia,
            "steps": ["pca (centred projection)", "z-score per component", "nearest centroid (euclidean)"],
        })

    @classmethod
    def load(cls, directory: str | Path) -> ClusterTransform:
        from safetensors.numpy import load_file

        directory = Path(directory)
        path = directory / "transform.safetensors"
        if not path.is_file():
            raise TrixmedError(path, "missing; run `trixmed stratify` first")
        arrays = load_file(str(path))
        missing = [k for k in _ARRAYS if k not in arrays]
        if missing:
            raise TrixmedError(path, f"missing tensors {missing}")
        meta = read_json(directory / "transform.json") if (directory / "transform.json").is_file() else {}
        return cls(**{k: arrays[k] for k in _ARRAYS}, inertia=float(meta.get("inertia", float("nan"))))


def load_assignments(path: str | Path) -> dict[str, int]:
    """visit_key → cluster id from an assignments file (`RunDir.assignments`)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise TrixmedError(path, "missing; run `trixmed stratify` first")
    df = pd.read_parquet(path, columns=["visit_key", "cluster"])
    return dict(zip(df["visit_key"].astype(str), df["cluster"].astype(int)))


def fit_clusters(train_features: np.ndarray, cfg: StratifyConfig, seed: int) -> ClusterTransform:
    """Fit PCA (top-k components), z-score and K-means on the training features."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = np.asarray(train_features, dtype=np.float64)
    n, h = x.shape
    if n < cfg.num_clusters:
        raise TrixmedError("stratify.num_clusters", f"{cfg.num_clusters} clusters need at least as many training samples, got {n}")
    k = min(cfg.pca_components, n, h)
    pca = PCA(n_components=k, svd_solver="full", random_state=seed).fit(x)
    z = (x - pca.mean_) @ pca.components_.T
    mean, std = z.mean(0), z.std(0)
    std = np.where(std > 0, std, 1.0)
    z = (z - mean) / std
    km = KMeans(
        n_clusters=cfg.num_clusters, init=cfg.kmeans_init, n_init=cfg.kmeans_n_init,
        max_iter=cfg.kmeans_iters, tol=cfg.kmeans_tol, random_state=seed,
    ).fit(z)
    return ClusterTransform(
        pca_mean=pca.mean_, pca_components=pca.components_, scale_mean=mean, scale_std=std,
        centroids=km.cluster_centers_, inertia=float(km.inertia_),
    )
