"""What explanations and reports read from a trained run directory, read once per call.

    trained_config      the config with the model section the experts model was saved with, so
                        `trixmed explain --run R` needs no --config to route like training did
    training_view       the training visits in `Dataset.samples("train")` order: samples,
                        clusters (from the stratify stage), warm-up features projected into the
                        z-scored PCA space the clusters live in
    training_gates      each training visit's gate weights G over the experts
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from trixmed.config import Config, ModelConfig, from_dict
from trixmed.data.dataset import Dataset, Sample
from trixmed.errors import TrixmedError
from trixmed.io import read_json
from trixmed.run_dir import RunDir


def trained_config(cfg: Config, rd: RunDir) -> Config:
    """`cfg` with the experts model's own model section (model.json), as `load_model` rebuilds it;
    an hf checkpoint source set in `cfg` still wins (weights may live elsewhere on this machine)."""
    from trixmed.models.model import META_FILE

    path = rd.model("experts") / META_FILE
    if not path.is_file():
        raise TrixmedError(path, "missing; the run has no trained experts model (`trixmed run`)")
    model = from_dict(ModelConfig, read_json(path)["model"], str(path), "model")
    model = dataclasses.replace(model, hf=model.hf.with_source_of(cfg.model.hf))
    return dataclasses.replace(cfg, model=model)


@dataclass
class TrainingView:
    samples: list[Sample]   # Dataset.samples("train") order
    clusters: np.ndarray    # [N] cluster id of each (clusters/assignments.parquet)
    z: np.ndarray           # [N, k] z-scored PCA projection of the warm-up features
    num_clusters: int

    def members(self, cluster: int) -> list[Sample]:
        return [s for s, c in zip(self.samples, self.clusters) if c == cluster]


def training_view(rd: RunDir, ds: Dataset) -> TrainingView:
    from trixmed.cluster import ClusterTransform, load_assignments
    from trixmed.cluster.features import iter_feature_shards

    transform = ClusterTransform.load(rd.clusters)
    samples = ds.samples("train")
    lookup = load_assignments(rd.assignments)
    row = {s.visit_key: i for i, s in enumerate(samples)}
    z = np.full((len(samples), transform.centroids.shape[1]), np.nan)
    for _, keys, x in iter_feature_shards(rd.features):
        take = [(i, row[k]) for i, (k, sp) in enumerate(zip(keys["visit_key"], keys["split"])) if sp == "train" and k in row]
        if take:
            src, dst = (np.array(t) for t in zip(*take))
            z[dst] = transform.project(x[src])
    missing = np.isnan(z).any(1)
    if missing.any():
        raise TrixmedError(rd.features, f"{int(missing.sum())} training visits have no features, first "
                                        f"{samples[int(np.argmax(missing))].visit_key!r}: re-run `trixmed extract --force`")
    try:
        clusters = np.array([lookup[s.visit_key] for s in samples], dtype=np.int64)
    except KeyError as exc:
        raise TrixmedError(rd.assignments, f"training visit {exc.args[0]!r} has no cluster") from None
    return TrainingView(samples, clusters, z, transform.num_clusters)


def training_gates(cfg: Config, rd: RunDir, ds: Dataset, view: TrainingView) -> np.ndarray | None:
    """G [N, E] of every training visit; None for an un-routed model (router `none`). The triage
    router's G depends only on the cluster, G[c] = softmax(W_e[c] + b_e), read from the weights;
    a learned router's G comes from running the experts model over the training visits."""
    router = cfg.model.moe.router
    if router == "none":
        return None
    if router == "triage":
        return cluster_gates(rd)[view.clusters]
    from trixmed.pipeline.predict import model_predictions

    return model_predictions(cfg, rd, ds, "train").gates


def cluster_gates(rd: RunDir) -> np.ndarray:
    """The triage router's G [K, E], one row per cluster, from the saved experts weights."""
    from safetensors.numpy import load_file

    from trixmed.models.model import WEIGHTS_FILE

    path = rd.model("experts") / WEIGHTS_FILE
    state = load_file(str(path))
    if "router.W_e" not in state:
        raise TrixmedError(path, "has no triage router (router.W_e)")
    logits = state["router.W_e"].astype(np.float64) + state["router.b_e"].astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def cluster_profiles(rd: RunDir) -> list[dict]:
    """The stratify stage's profile of every cluster (clusters/profile.json, trixmed/cluster/profile.py)."""
    path = rd.cluster_profile
    raw = read_json(path) if path.is_file() else None
    if raw is None:
        raise TrixmedError(path, "missing; run `trixmed stratify` first")
    if not isinstance(raw, dict) or not isinstance(raw.get("clusters"), list):
        raise TrixmedError(path, "holds no cluster profiles (an older trixmed wrote it): re-run `trixmed stratify --force`")
    return raw["clusters"]


def med_shares(samples: list[Sample]) -> dict[str, float]:
    """Share of the samples' current visits that prescribe each medication."""
    from collections import Counter

    counts = Counter(c for s in samples for c in set(s.target))
    return {c: n / len(samples) for c, n in counts.items()} if samples else {}
