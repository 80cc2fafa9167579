"""Patient stratification: feature shards → PCA → z-score → K-means (distributed on Ray), the saved
transform that routes any patient by nearest centroid, and cluster profiles."""

from trixmed.cluster.distributed import ShardPool, fit_clusters_distributed
from trixmed.cluster.lloyd import LloydResult
from trixmed.cluster.profile import cluster_profiles, format_profiles
from trixmed.cluster.stratify import ClusterTransform, fit_clusters, load_assignments

__all__ = ["ClusterTransform", "LloydResult", "ShardPool", "cluster_profiles", "fit_clusters", "fit_clusters_distributed",
           "format_profiles", "load_assignments"]
