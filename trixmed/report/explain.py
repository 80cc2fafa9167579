"""Why a patient went to which experts, and what those experts learned: one patient's triage
explanation, as JSON (`explain_patient`) and as plain-language text (`format_explanation`).

    routing      the warm-up model's pooled features → z-scored PCA (the stored transform) →
                 distance to every cluster centre; the nearest is the patient's cluster, exactly
                 as `trixmed predict` routes (it is called for the medications and weights)
    experts      G = softmax(OneHot(c)·W_e + b_e) over all experts; the top-n are applied with
                 weights Γ (renormalised to sum 1 only when model.moe.renormalize is set)
    profile      the cluster's training visits, from the stratify stage (clusters/profile.json)
    neighbours   the k training visits nearest to the patient in that same z-scored PCA space,
                 shown by their codes only (no patient or visit identifier)
    medications  each recommended drug (the run's decision rule: threshold and α chosen on validation): its share
                 of the cluster's and of all training visits, the patient's earlier visits that
                 had it, and the interacting pairs of the recommended set (the run's DDI matrix)
    editor       where the run has a trained FLAME editor (the edit stage): its additions and
                 removals to the recommended set, in order, each with the point-wise probability
                 and the drugs of the set it interacts with when it was made
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trixmed.config import Config
from trixmed.data.dataset import Dataset, Sample
from trixmed.eval.selection import Choices
from trixmed.report.run_data import cluster_profiles, med_shares, trained_config, training_view
from trixmed.run_dir import RunDir

PROFILE_CODES = 5     # codes per kind shown from the cluster profile


def explain_patient(cfg: Config, rd: RunDir, ds: Dataset, sample: Sample, choices: Choices, *,
                    neighbours: int = 5) -> dict[str, Any]:
    """The explanation of `sample` (its last visit is the one prescribed for) as plain JSON data."""
    from trixmed.cluster import ClusterTransform
    from trixmed.models import load_model
    from trixmed.pipeline.predict import predict_patient, route_new_patients
    from trixmed.text.titles import CodeTitles
    from trixmed.train.inference import collator_for, infer

    cfg = trained_config(cfg, rd)
    titles = CodeTitles.default()
    routed = route_new_patients(cfg, rd, ds.vocab, [sample])
    predicted = predict_patient(cfg, rd, sample, ds, choices, routed)
    warm = load_model(rd.model("warmup"), cfg, ds.vocab)
    features = infer(warm, collator_for(cfg, ds.vocab), [sample])["pooled"]
    transform = ClusterTransform.load(rd.clusters)
    z = transform.project(features)[0]
    distances = np.sqrt(((transform.centroids - z) ** 2).sum(1))
    cluster = int(predicted["cluster"])

    view = training_view(rd, ds)
    profile = cluster_profiles(rd)[cluster]
    d_train = np.sqrt(((view.z - z) ** 2).sum(1))
    nearest = np.argsort(d_train, kind="stable")[:neighbours]

    def coded(kind: str, codes: tuple[str, ...] | list[str]) -> list[dict[str, str]]:
        return [{"code": c, "title": titles.title(kind, c)} for c in codes]

    members = view.members(cluster)
    in_cluster, in_cohort = med_shares(members), med_shares(view.samples)
    history = sample.history
    med_index = ds.vocab.index("med")
    recommended = predicted["predicted"]
    probability = {m["code"]: m["probability"] for m in predicted["medications"]}
    pairs = interacting_pairs(recommended, ds.ddi, med_index)
    partners: dict[str, list[str]] = {}
    for a, b in pairs:
        partners.setdefault(a, []).append(b)
        partners.setdefault(b, []).append(a)
    moe = cfg.model.moe
    routing: dict[str, Any] = {"router": moe.router, "num_experts": moe.num_experts, "top_n": moe.top_n,
                               "renormalize": moe.renormalize}
    if "experts" in predicted:
        routing.update(gates=predicted["expert_weights"], experts=predicted["experts"],
                       weight_sum=round(sum(e["weight"] for e in predicted["experts"]), 6))
    return {
        "patient": {
            "visits": len(sample.visits),
            "current": {"diag": coded("diag", sample.current.diag), "proc": coded("proc", sample.current.proc)},
            "earlier_visits": [{"diag": coded("diag", v.diag), "proc": coded("proc", v.proc), "med": coded("med", v.med)}
                               for v in history],
        },
        "cluster": cluster,
        "cluster_distance": predicted["cluster_distance"],
        "centroid_distances": [{"cluster": k, "distance": round(float(d), 6)} for k, d in enumerate(distances)],
        "routing": routing,
        "cluster_profile": {
            "size": profile["size"], "share": profile["share"], "gt_ddi_rate": profile["gt_ddi_rate"],
            **{f"top_{kind}": profile[f"top_{kind}"][:PROFILE_CODES] for kind in ("diag", "proc", "med")},
            "chapters": profile["chapters"][:PROFILE_CODES],
        },
        "similar_patients": [{
            "rank": r + 1,
            "distance": round(float(d_train[i]), 6),
            "cluster": int(view.clusters[i]),
            "visits": len(view.samples[i].visits),
            "diag": coded("diag", view.samples[i].current.diag),
            "med": coded("med", view.samples[i].target),
        } for r, i in enumerate(nearest)],
        "threshold": choices.threshold,
        "ddi_alpha": choices.ddi_alpha,
        "recommendations": [{
            "code": code,
            "name": titles.med(code),
            "probability": probability[code],
            "cluster_share": round(in_cluster.get(code, 0.0), 4),
            "cohort_share": round(in_cohort.get(code, 0.0), 4),
            "earlier_visits_with": sum(code in v.med for v in history),
            "interacts_with": sorted(partners.get(code, [])),
        } for code in recommended],
        "interactions": [{"a": a, "a_name": titles.med(a), "b": b, "b_name": titles.med(b)} for a, b in pairs],
        "editor": _editor_edits(rd, ds, routed[0], recommended, titles),
    }


def _editor_edits(rd: RunDir, ds: Dataset, out: dict[str, np.ndarray], recommended: list[str], titles: Any) -> dict[str, Any] | None:
    """The trained editor's edits of the recommended set and the set it leaves; None without an editor."""
    from trixmed.pipeline.edit import edit_patient

    if "edit" not in rd.state()["stages"] or not rd.editor_model.is_dir():
        return None
    start = ds.multi_hot([tuple(recommended)])[0].astype(bool)
    edits = edit_patient(rd, ds, out["pooled"][0], out["probs"][0], start)
    final = list(recommended)
    for e in edits:   # masked edits: an add is never present yet, a remove always is
        final.append(e["code"]) if e["action"] == "add" else final.remove(e["code"])
    return {"edits": [{**e, "name": titles.med(e["code"])} for e in edits], "edited_set": final}


def interacting_pairs(codes: list[str], ddi: np.ndarray, med_index: dict[str, int]) -> list[tuple[str, str]]:
    """Unordered pairs of `codes` (in their order) marked in the DDI matrix, either direction."""
    out = []
    for i, a in enumerate(codes):
        for b in codes[i + 1:]:
            ia, ib = med_index[a], med_index[b]
            if ddi[ia, ib] or ddi[ib, ia]:
                out.append((a, b))
    return out


# ------------------------------------------------------------------------------------------------


def format_explanation(e: dict[str, Any]) -> str:
    """The explanation in plain language, for a clinician at a terminal."""
    p, c, r = e["patient"], e["cluster"], e["routing"]
    cur = p["current"]
    lines = [f"Patient: {_n(p['visits'], 'visit')}; this visit has {_n(len(cur['diag']), 'diagnosis', 'diagnoses')} "
             f"and {_n(len(cur['proc']), 'procedure')}."]
    lines += _codes_line("Diagnoses", cur["diag"]) + _codes_line("Procedures", cur["proc"])
    if p["earlier_visits"]:
        meds = sorted({m["code"] for v in p["earlier_visits"] for m in v["med"]})
        lines.append(f"  Earlier visits: {len(p['earlier_visits'])}, with {_n(len(meds), 'medication')} prescribed.")

    others = sorted((d for d in e["centroid_distances"] if d["cluster"] != c), key=lambda d: d["distance"])
    lines += ["", f"Triage: cluster {c}, the nearest cluster centre (distance {e['cluster_distance']:.2f} in the "
                  "standardised feature space"
              + (f"; next nearest: cluster {others[0]['cluster']} at {others[0]['distance']:.2f})." if others else ").")]
    lines.append("  Distance to every cluster centre: "
                 + ", ".join(f"cluster {d['cluster']} {d['distance']:.2f}" for d in e["centroid_distances"]) + ".")

    if "experts" in r:
        used = " and ".join(f"expert {x['expert']} (weight {x['weight']:.2f})" for x in r["experts"])
        norm = "renormalised to sum 1" if r["renormalize"] else "not renormalised, as in the paper"
        lines += ["", f"Experts: the {r['router']} router sends cluster {c} to {used}; "
                      f"these top-{r['top_n']} weights sum to {r['weight_sum']:.2f} ({norm}).",
                  "  Gate weights over all experts: "
                  + ", ".join(f"expert {i} {w:.2f}" for i, w in enumerate(r["gates"])) + "."]
    else:
        lines += ["", f"Experts: this model has no router ({r['router']}): one adapter serves every patient."]

    prof = e["cluster_profile"]
    lines += ["", f"Cluster {c} in training: {_n(prof['size'], 'visit')} ({100 * prof['share']:.1f} % of training visits), "
                  f"ground-truth DDI rate {prof['gt_ddi_rate']:.3f}."]
    if prof["chapters"]:
        lines.append("  Disease categories (share of its diagnosis codes): " + "; ".join(
            f"{ch['chapter']} {100 * ch['share']:.0f} %" for ch in prof["chapters"][:3]) + ".")
    for kind, label in (("diag", "Typical diagnoses"), ("proc", "Typical procedures"), ("med", "Typical medications")):
        items = prof[f"top_{kind}"]
        if items:
            lines.append(f"  {label} (share of its visits, lift over all training visits): " + "; ".join(
                f"{x['code']} {x['title']} ({100 * x['share']:.0f} %, ×{x['lift']:.1f})" for x in items) + ".")

    lines += ["", "Most similar training patients (nearest warm-up features, standardised; codes of that visit only):"]
    for nb in e["similar_patients"]:
        lines.append(f"  {nb['rank']}. distance {nb['distance']:.2f}, cluster {nb['cluster']}, {_n(nb['visits'], 'visit')}: "
                     "diagnoses " + _short_codes(nb["diag"]) + "; medications " + _short_codes(nb["med"]) + ".")

    n_earlier = len(p["earlier_visits"])
    safety = f"; DDI safety weight α = {e['ddi_alpha']:g}" if e["ddi_alpha"] else ""
    lines += ["", f"Recommended medications (probability ≥ {e['threshold']:.2f}, the threshold chosen on validation{safety}):"]
    if not e["recommendations"]:
        lines.append("  none reaches the threshold.")
    else:
        lines += [f"  prob.: the model's probability; cluster {c} / all: share of the cluster's / of all training visits "
                  "that prescribe it; earlier: this patient's earlier visits with it.",
                  f"  {'prob.':>5}  {'cluster ' + str(c):>10}  {'all':>5}  {'earlier':>7}  medication"]
    for m in e["recommendations"]:
        lines.append(f"  {m['probability']:>5.2f}  {100 * m['cluster_share']:>8.0f} %  {100 * m['cohort_share']:>3.0f} %  "
                     f"{(str(m['earlier_visits_with']) + '/' + str(n_earlier)) if n_earlier else '–':>7}  {m['code']} {m['name']}"
                     + (f"  [interacts with {', '.join(m['interacts_with'])}]" if m["interacts_with"] else ""))
    pairs = ", ".join(f"{x['a']} + {x['b']}" for x in e["interactions"])
    lines += ["", f"Interacting pairs among the recommendations (DDI matrix): {len(e['interactions']) or 'none'}"
              + (f": {pairs}." if pairs else ".")]
    if e.get("editor") is not None:
        lines += ["", _editor_text(e["editor"], e["threshold"])]
    return "\n".join(lines)


def _editor_text(ed: dict[str, Any], threshold: float) -> str:
    """The editor's edits in plain language."""
    if not ed["edits"]:
        return "List-wise editor (FLAME): no edit; it keeps the recommended set as it is."
    lines = [f"List-wise editor (FLAME): {_n(len(ed['edits']), 'edit')} to the recommended set, in order "
             f"(prob.: the point-wise model's probability, threshold {threshold:.2f}):"]
    for x in ed["edits"]:
        sign, verb = ("+", "adds") if x["action"] == "add" else ("−", "removes")
        partners = (f"interacts with {', '.join(x['interacts_with'])} in the set" if x["interacts_with"]
                    else "no interacting drug in the set")
        lines.append(f"  {sign} {verb} {x['code']} {x['name']} (prob. {x['probability']:.2f}; {partners})")
    lines.append(f"  Edited set: {_n(len(ed['edited_set']), 'medication')}: {', '.join(ed['edited_set']) or 'none'}.")
    return "\n".join(lines)


def _n(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _codes_line(label: str, items: list[dict[str, str]]) -> list[str]:
    return [f"  {label}: " + "; ".join(f"{x['code']} {x['title']}" for x in items) + "."] if items else []


def _short_codes(items: list[dict[str, str]], shown: int = 4, width: int = 40) -> str:
    def short(t: str) -> str:
        return t if len(t) <= width else t[: width - 1] + "…"

    text = ", ".join(f"{x['code']} {short(x['title'])}" for x in items[:shown])
    more = len(items) - shown
    return (text + (f" (+{more} more)" if more > 0 else "")) if items else "none"
