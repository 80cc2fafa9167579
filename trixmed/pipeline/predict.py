"""The trained TRIXMED model applied to dataset visits or to a new patient.

Routing uses exactly the training-time path: frozen warm-up model → pooled features → the
stored PCA/z-score transform → nearest centroid → the experts model with that cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trixmed.config import Config
from trixmed.data.dataset import Dataset, Sample, Visit, Vocab
from trixmed.errors import TrixmedError
from trixmed.run_dir import RunDir

if TYPE_CHECKING:
    from trixmed.eval.selection import Choices


@dataclass
class ModelPredictions:
    """What the trained model says about a split (scored files are `trixmed.eval.predictions`)."""

    samples: list[Sample]
    probs: np.ndarray             # [N, n_med]
    clusters: np.ndarray          # [N]
    gates: np.ndarray | None      # [N, E] expert weights (None for an un-routed model)
    pooled: np.ndarray            # [N, H] the patient vectors the medication head read


def model_predictions(cfg: Config, rd: RunDir, ds: Dataset, split: str) -> ModelPredictions:
    """Probabilities of the trained experts model on a dataset split, routed by the stored clusters."""
    from trixmed.cluster import load_assignments
    from trixmed.models import load_model
    from trixmed.train.inference import collator_for, infer

    samples = ds.samples(split)
    lookup = load_assignments(rd.assignments)
    clusters = [lookup[s.visit_key] for s in samples]
    model = load_model(rd.model("experts"), cfg, ds.vocab)
    out = infer(model, collator_for(cfg, ds.vocab), samples, clusters, progress=f"predict {split}")
    return ModelPredictions(samples, out["probs"], np.asarray(clusters), out.get("gates"), out["pooled"])


# --------------------------------------------------------------------------------------------
# A new patient


def read_patient(path: str | Path, vocab: Vocab) -> Sample:
    """`{"visits": [{"diag": [...], "proc": [...], "med": [...]}, ...]}`; the last visit is the one
    to prescribe for (its "med" is ignored). Unknown codes are errors naming the field."""
    path = Path(path)
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise TrixmedError(path, "file not found") from None
    except UnicodeDecodeError as exc:
        raise TrixmedError(path, f"not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise TrixmedError(path, f"not valid JSON: line {exc.lineno}: {exc.msg}") from None
    visits = raw.get("visits") if isinstance(raw, dict) else None
    if not isinstance(visits, list) or not visits:
        raise TrixmedError(path, 'expected {"visits": [ {"diag": [...], "proc": [...], "med": [...]}, ... ]} with at least one visit')
    out = []
    for i, v in enumerate(visits):
        if not isinstance(v, dict):
            raise TrixmedError(path, f"visits[{i}]: expected an object")
        unknown = set(v) - {"diag", "proc", "med"}
        if unknown:
            raise TrixmedError(path, f"visits[{i}]: unknown field {sorted(unknown)[0]!r} (known: diag, proc, med)")
        codes = {}
        for kind in ("diag", "proc", "med"):
            items = v.get(kind, [])
            if not isinstance(items, list) or not all(isinstance(c, str) for c in items):
                raise TrixmedError(path, f"visits[{i}].{kind}: expected a list of code strings")
            known = vocab.index(kind)
            for j, c in enumerate(items):
                if c not in known:
                    raise TrixmedError(path, f"visits[{i}].{kind}[{j}]: code {c!r} is not in the model's {kind} vocabulary")
            codes[kind] = tuple(items) if not (kind == "med" and i == len(visits) - 1) else ()
        out.append(Visit(codes["diag"], codes["proc"], codes["med"]))
    return Sample(visit_key=f"input:{len(out) - 1}", patient_id="input", split="test", visits=tuple(out))


def route_new_patients(cfg: Config, rd: RunDir, vocab: Vocab, samples: list[Sample],
                       progress: str | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Patients the run has never seen, through the training-time path: frozen warm-up model →
    pooled features → the stored PCA/z-score/centroids → the experts with that cluster.
    Returns the experts' `infer` output, the clusters and the distances to their centroids."""
    from trixmed.cluster import ClusterTransform
    from trixmed.models import load_model
    from trixmed.train.inference import collator_for, infer

    collate = collator_for(cfg, vocab)
    warm = load_model(rd.model("warmup"), cfg, vocab)
    features = infer(warm, collate, samples, progress=progress and f"{progress}: features")["pooled"]
    cluster, distance = ClusterTransform.load(rd.clusters).assign(features)
    experts = load_model(rd.model("experts"), cfg, vocab)
    out = infer(experts, collate, samples, cluster.tolist(), progress=progress and f"{progress}: experts")
    return out, cluster, distance


def predict_patient(cfg: Config, rd: RunDir, sample: Sample, ds: Dataset, choices: Choices,
                    routed: tuple[dict[str, np.ndarray], np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Ranked medications with probabilities, the patient's cluster and the expert weights; the
    predicted set is decided by the run's choices (threshold, DDI safety weight α), as the evaluate
    stage decided its test sets. `routed`: `route_new_patients`' result for [sample], where the
    caller has it already."""
    from trixmed.text.titles import CodeTitles

    out, cluster, distance = routed or route_new_patients(cfg, rd, ds.vocab, [sample])
    probs = out["probs"][0]
    chosen = choices.decide(probs[None], ds.ddi)[0]
    order = np.argsort(-probs, kind="stable")
    titles = CodeTitles.default()
    meds = ds.vocab.med
    result: dict[str, Any] = {
        "threshold": choices.threshold,
        "ddi_alpha": choices.ddi_alpha,
        "predicted": [meds[j] for j in order if chosen[j]],
        "medications": [{"code": meds[j], "name": titles.med(meds[j]), "probability": round(float(probs[j]), 6)} for j in order],
        "cluster": int(cluster[0]),
        "cluster_distance": round(float(distance[0]), 6),
    }
    if "gates" in out:
        # G = softmax over all experts; the top-n of G are the experts applied, with weights Γ
        g = out["gates"][0]
        top = np.argsort(-g, kind="stable")[: cfg.model.moe.top_n]
        result["expert_weights"] = [round(float(w), 6) for w in g]
        gamma = g[top] / g[top].sum() if cfg.model.moe.renormalize else g[top]
        result["experts"] = [{"expert": int(e), "weight": round(float(w), 6)} for e, w in zip(top, gamma)]
    return result
