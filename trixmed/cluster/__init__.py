"""Patient stratification: PCA → z-score → K-means on warm-up features, and routing by nearest centroid."""

from trixmed.cluster.stratify import ClusterTransform, fit_clusters, load_assignments

__all__ = ["ClusterTransform", "fit_clusters", "load_assignments"]
