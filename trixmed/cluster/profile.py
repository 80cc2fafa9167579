"""Cluster profiles: who is in each cluster, in codes a clinician reads.

For every cluster, over the training visits routed to it (each sample's current visit and its
prescribed medications): size and share of the cohort; the most frequent diagnoses, procedures
and medications with their titles and lift (share of the cluster's visits with the code ÷ share
of all training visits with it); the ICD chapter mix of its diagnoses; and the pooled
ground-truth DDI rate of its medication sets. Saved as `clusters/profile.json`; interpretation
and reports build on it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from trixmed.data.dataset import Dataset, Sample
from trixmed.data.ddi import ddi_rate
from trixmed.text.chapters import diagnosis_chapter
from trixmed.text.titles import CodeTitles

_KINDS = ("diag", "proc", "med")


def _codes(sample: Sample, kind: str) -> set[str]:
    visit = sample.current
    return set(visit.med if kind == "med" else getattr(visit, kind))


def cluster_profiles(dataset: Dataset, clusters: dict[str, int], num_clusters: int, *, top: int = 10,
                     titles: CodeTitles | None = None, split: str = "train",
                     samples: list[Sample] | None = None) -> dict[str, Any]:
    """Profiles of clusters 0..num_clusters-1 over the `split` samples, or over `samples` (a subset
    of them: lift is then against that subset) (`clusters`: visit_key → id)."""
    titles = titles or CodeTitles.default()
    samples = dataset.samples(split) if samples is None else samples
    labels = np.array([clusters[s.visit_key] for s in samples], dtype=np.int64)
    cohort = {kind: Counter(c for s in samples for c in _codes(s, kind)) for kind in _KINDS}
    med_index = dataset.vocab.index("med")
    total = len(samples)
    out = []
    for k in range(num_clusters):
        members = [s for s, label in zip(samples, labels) if label == k]
        n = len(members)
        entry: dict[str, Any] = {"cluster": k, "size": n, "share": round(n / total, 4) if total else 0.0}
        for kind in _KINDS:
            counts = Counter(c for s in members for c in _codes(s, kind))
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
            entry[f"top_{kind}"] = [{
                "code": code, "title": titles.title(kind, code), "visits": count,
                "share": round(count / n, 4),
                "lift": round((count / n) / (cohort[kind][code] / total), 3),
            } for code, count in ranked]
        chapters = Counter(diagnosis_chapter(c) for s in members for c in s.current.diag)
        all_dx = sum(chapters.values())
        entry["chapters"] = [{"chapter": name, "share": round(count / all_dx, 4)}
                             for name, count in sorted(chapters.items(), key=lambda item: (-item[1], item[0]))]
        entry["gt_ddi_rate"] = round(ddi_rate([[med_index[c] for c in s.target] for s in members], dataset.ddi), 4)
        out.append(entry)
    return {"split": split, "visits": total, "clusters": out}


def format_profiles(profiles: dict[str, Any], codes_per_kind: int = 3) -> str:
    """A few lines per cluster for the console."""
    lines = []
    for c in profiles["clusters"]:
        lines.append(f"  cluster {c['cluster']}: {c['size']} visits ({100 * c['share']:.1f} %), "
                     f"ground-truth DDI rate {c['gt_ddi_rate']:.3f}"
                     + (f", mostly {c['chapters'][0]['chapter'].lower()} ({100 * c['chapters'][0]['share']:.0f} % of diagnoses)"
                        if c["chapters"] else ""))
        for kind, label in (("diag", "dx"), ("med", "rx")):
            items = [f"{e['code']} {_short(e['title'])} (×{e['lift']:.1f})" for e in c[f"top_{kind}"][:codes_per_kind]]
            if items:
                lines.append(f"    {label}: " + "; ".join(items))
    return "\n".join(lines)


def _short(title: str, width: int = 32) -> str:
    return title if len(title) <= width else title[: width - 1] + "…"
