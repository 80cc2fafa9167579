"""`trixmed report --run R`: one trained run as a page a clinician can read (HTML, self-contained,
and Markdown with PNG figures), every number behind it as JSON, and the cluster coherence metrics.

What is computed here (docs/report.md says how to read it):
    coherence       diagnosis-set Jaccard similarity within vs between clusters, on a seeded sample
                    of `similarity_visits` training visits (every pair among them); silhouette on
                    the z-scored PCA features of a seeded sample of `silhouette_visits`; routing
                    sharpness (top-n gate mass) per cluster        → RunDir.coherence
    patient map     t-SNE (scikit-learn, seeded, PCA init) of the z-scored PCA features of a seeded
                    sample of `map_visits` training visits; the first two components below 10 visits
    per cluster     sizes, ICD-chapter mix (clusters/profile.json), expert load and the routing
                    matrix (training visits' gates), test accuracy (eval/predictions_test.jsonl)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from trixmed.config import Config
from trixmed.console import Console
from trixmed.data.dataset import Dataset
from trixmed.errors import TrixmedError
from trixmed.eval.selection import read_choices
from trixmed.io import read_json, write_json
from trixmed.report import coherence as coh
from trixmed.report import figures as figs
from trixmed.report.page import Page, cell
from trixmed.report.run_data import TrainingView, cluster_profiles, trained_config, training_gates, training_view
from trixmed.run_dir import RunDir

# the paper's Appendix A.4 (Figure 6, right): mean diagnosis similarity within vs between clusters
PAPER_COHERENCE = {"within": 0.41, "between": 0.025, "ratio": 16.4}
SAMPLE_VISITS = 3000   # default sample size for the similarity matrix, the silhouette and the map
CHAPTERS_SHOWN = 9     # ICD chapters coloured in the composition chart; the rest are "Other"


def run_coherence(cfg: Config, view: TrainingView, gates: np.ndarray | None, *,
                  similarity_visits: int = SAMPLE_VISITS, silhouette_visits: int = SAMPLE_VISITS) -> dict[str, Any]:
    """The `coherence` block: diagnosis Jaccard within/between clusters, silhouette, routing sharpness."""
    k = view.num_clusters
    pick = coh.sample_indices(len(view.samples), similarity_visits, cfg.seed)
    sim = coh.cluster_similarity([view.samples[i].current.diag for i in pick], view.clusters[pick], k)
    out: dict[str, Any] = {
        "diagnosis_jaccard": {
            "within": _r(sim["within"]), "between": _r(sim["between"]), "ratio": _r(sim["ratio"], 2),
            "within_pairs": _r(sim["within_pairs"]), "between_pairs": _r(sim["between_pairs"]),
            "ratio_pairs": _r(sim["ratio_pairs"], 2),
            "per_cluster_within": [_r(v) for v in np.diag(sim["matrix"])],
            "matrix": [[_r(v) for v in row] for row in sim["matrix"]],
            "visits": len(view.samples), "visits_sampled": len(pick),
            "pairs": {"within": sim["n_within_pairs"], "between": sim["n_between_pairs"]},
            "seed": cfg.seed,
            "paper": PAPER_COHERENCE,
        },
    }
    n_sil = min(silhouette_visits, len(view.samples))
    out["silhouette"] = {"value": _r(coh.silhouette(view.z, view.clusters, sample_size=n_sil, seed=cfg.seed)),
                         "space": f"z-scored PCA ({view.z.shape[1]} components)", "visits_sampled": n_sil}
    if gates is not None:
        top_n = cfg.model.moe.top_n
        per_visit = coh.routing_sharpness(gates, top_n)
        per_cluster = [_r(float(per_visit[view.clusters == c].mean())) if (view.clusters == c).any() else None for c in range(k)]
        out["routing_sharpness"] = {"top_n": top_n, "num_experts": int(gates.shape[1]), "per_cluster": per_cluster,
                                    "mean": _r(float(per_visit.mean()))}
    return out


def build_run_report(cfg: Config, rd: RunDir, *, map_visits: int = SAMPLE_VISITS, similarity_visits: int = SAMPLE_VISITS,
                     silhouette_visits: int = SAMPLE_VISITS, console: Console | None = None) -> dict[str, Any]:
    """Compute everything, write the report files into `rd.report`, return the report's data."""
    console = console or Console()
    t0 = time.perf_counter()
    for path in (rd.metrics, rd.predictions("test")):
        if not path.is_file():
            raise TrixmedError(path, "missing; report needs a trained and evaluated run (`trixmed run`)")
    cfg = trained_config(cfg, rd)
    ds = Dataset(rd.dataset)
    metrics = read_json(rd.metrics)
    choices = read_choices(rd.metrics, "report")
    profiles = cluster_profiles(rd)
    view = training_view(rd, ds)
    k = view.num_clusters
    gates = training_gates(cfg, rd, ds, view)
    timings = {"load_s": time.perf_counter() - t0}

    t = time.perf_counter()
    coherence = run_coherence(cfg, view, gates, similarity_visits=similarity_visits, silhouette_visits=silhouette_visits)
    timings["coherence_s"] = time.perf_counter() - t
    write_json(rd.coherence, {"run_dir": str(rd.root), "coherence": coherence})

    t = time.perf_counter()
    xy, map_labels, method = patient_map(view, map_visits, cfg.seed)
    timings["map_s"] = time.perf_counter() - t

    sizes = [int((view.clusters == c).sum()) for c in range(k)]
    routing = None
    if gates is not None:
        top = np.argsort(-gates, axis=1, kind="stable")[:, : cfg.model.moe.top_n]
        chosen = np.zeros_like(gates, dtype=bool)
        np.put_along_axis(chosen, top, True, axis=1)
        routing = {
            "matrix": [[_r(float(v)) for v in gates[view.clusters == c].mean(0)] if sizes[c] else None for c in range(k)],
            "expert_load_share": [_r(float(v)) for v in chosen.mean(0)],
            "expert_mean_gate": [_r(float(v)) for v in gates.mean(0)],
        }
    per_cluster = per_cluster_accuracy(rd, ds, k)
    histories = {p: read_json(rd.history(p)) for p in rd.PHASES if rd.history(p).is_file()}
    ablations = _ablations(rd)
    from trixmed.models.model import saved_drug_groups

    groups = saved_drug_groups(rd.model("experts"))

    data = {
        "run_dir": str(rd.root),
        "dataset": {key: ds.card[key] for key in ("patients", "visits") if key in ds.card},
        "model": {"backbone": cfg.model.backbone, "router": cfg.model.moe.router, "num_experts": cfg.model.moe.num_experts,
                  "top_n": cfg.model.moe.top_n, "renormalize": cfg.model.moe.renormalize, "num_clusters": k},
        "threshold": choices.threshold,
        "ddi_alpha": choices.ddi_alpha,
        "metrics": metrics["metrics"],
        "bootstrap": metrics["bootstrap"],
        "ablations": ablations,
        "coherence": coherence,
        "cluster_sizes": sizes,
        "routing": routing,
        "per_cluster_accuracy": per_cluster,
        "map": {"method": method, "visits": len(xy)},
        "drug_groups": None if groups is None else drug_group_members(cfg.model.drug_groups.by, ds.vocab.med, groups),
    }
    t = time.perf_counter()
    page = render_page(data, view, (xy, map_labels), histories, profiles)
    page.write(rd.report_html, rd.report_markdown, rd.report_figures)
    timings["render_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    data["timings"] = {key: round(v, 2) for key, v in timings.items()}
    write_json(rd.report_data, data)
    console.line(f"report: {rd.report_html} (+ {rd.report_markdown.name}, {rd.report_data.name}, {rd.coherence.name}) "
                 f"in {timings['total_s']:.1f} s")
    return data


def patient_map(view: TrainingView, max_visits: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """2-D coordinates of a seeded sample of training visits, their clusters, and the method."""
    pick = coh.sample_indices(len(view.samples), max_visits, seed)
    z = view.z[pick]
    if len(z) < 10 or z.shape[1] < 2:
        xy = np.zeros((len(z), 2))
        xy[:, : min(2, z.shape[1])] = z[:, :2]
        return xy, view.clusters[pick], "the first two principal components"
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (len(z) - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z)
    return xy, view.clusters[pick], "t-SNE"



def per_cluster_accuracy(rd: RunDir, ds: Dataset, num_clusters: int) -> list[dict[str, Any]]:
    """Test metrics of the visits of each cluster, from the evaluate stage's predictions file."""
    from trixmed.cluster import load_assignments
    from trixmed.eval.metrics import multilabel_metrics, summarize
    from trixmed.eval.predictions import read_predictions

    samples = ds.samples("test")
    preds = read_predictions(rd.predictions("test"), ds.vocab.med)
    row = {key: i for i, key in enumerate(preds.visit_keys)}
    take = np.array([row[s.visit_key] for s in samples if s.visit_key in row], dtype=np.int64)
    samples = [s for s in samples if s.visit_key in row]
    y_true = ds.multi_hot([s.target for s in samples]).astype(bool)
    y_prob = preds.y_prob[take] if preds.y_prob is not None else None
    per_visit = multilabel_metrics(y_true, preds.y_pred[take], y_prob, ds.ddi)
    lookup = load_assignments(rd.assignments)
    clusters = np.array([lookup[s.visit_key] for s in samples], dtype=np.int64)
    out = []
    for c in range(num_clusters):
        m = clusters == c
        entry: dict[str, Any] = {"cluster": c, "test_visits": int(m.sum())}
        if m.any():
            entry.update({name: _r(v) for name, v in summarize({key: a[m] for key, a in per_visit.items()}).items()})
        out.append(entry)
    return out


# ------------------------------------------------------------------------------------------------


def render_page(data: dict[str, Any], view: TrainingView, points: tuple[np.ndarray, np.ndarray], histories: dict[str, Any],
                profiles: list[dict[str, Any]]) -> Page:
    from trixmed.eval.evaluate import LABELS

    k = view.num_clusters
    model, m, c = data["model"], data["metrics"], data["coherence"]
    dj = c["diagnosis_jaccard"]
    card = data["dataset"]
    page = Page("TRIXMED run report", subtitle=(
        f"Run `{data['run_dir']}` · {model['backbone']} backbone, {model['router']} router, {model['num_experts']} experts, "
        f"top-{model['top_n']}, {k} clusters · {len(view.samples)} training visits"
        + (f" · dataset: {card['patients']} patients, {card['visits']} visits" if len(card) == 2 else "")))
    kpis = [(f"{m[name]['mean']:.3f}", f"{LABELS[name]} (test, bootstrap mean)") for name in ("jaccard", "f1", "prauc", "ddi_rate")
            if name in m]
    kpis.append((f"{cell(dj['ratio'], 1)}×", f"within ÷ between diagnosis similarity (paper {PAPER_COHERENCE['ratio']}×)"))
    kpis.append((cell(c["silhouette"]["value"]), "silhouette, standardised features"))
    page.kpis(kpis)
    _metrics_section(page, data)
    if data.get("drug_groups"):
        _drug_groups_section(page, data["drug_groups"])
    if histories:
        _training_section(page, histories)
    page.section("Patient map")
    page.figure("patient_map", figs.patient_map(*points, k, data["map"]["method"]),
                f"{data['map']['visits']} training visits (a seeded sample when there are more), placed by "
                f"{data['map']['method']} of the features the clusters were fitted on (the warm-up model's pooled states, "
                "projected by PCA and z-scored), coloured by cluster. Nearby points are patients the warm-up model "
                "sees as alike; a cluster's number sits at its median position.")
    _coherence_section(page, data, k)
    _routing_section(page, data, k)
    _clusters_section(page, data, profiles)
    page.note("Computed by `trixmed report` from the run directory; every number on this page is in report/report.json, "
              "the coherence metrics also in report/coherence.json. See docs/report.md for how each one is computed.")
    return page


def _metrics_section(page: Page, data: dict[str, Any]) -> None:
    from trixmed.eval.evaluate import LABELS
    from trixmed.eval.metrics import METRICS

    m = data["metrics"]
    page.section("Test metrics")
    b = data["bootstrap"]
    rows = [[LABELS[name], m[name]["point"], f"{m[name]['mean']:.4f} ± {m[name]['std']:.4f}"] for name in METRICS if name in m]
    page.table(["metric", "whole test split", f"bootstrap mean ± std ({b['rounds']} × {b['fraction']:.0%} of patients)"],
               [[r[0], cell(r[1], 4), r[2]] for r in rows],
               caption=f"Decision threshold {data['threshold']:.2f} and DDI safety weight α {data['ddi_alpha']:g}, "
                       "as the run chose them (on validation, unless its config fixes them). "
                       "DDI rate (ground truth) is the rate of the prescribed medication sets of the same test visits.")
    if data["ablations"]:
        shown = ("jaccard", "f1", "prauc", "ddi_rate", "avg_drugs")
        rows = [["TRIXMED (this run)", *[_pm(m.get(name)) for name in shown]]]
        rows += [[a["name"], *[_pm(a["metrics"].get(name)) for name in shown]] for a in data["ablations"]]
        page.subsection("Ablations")
        page.table(["model", *[LABELS[name] for name in shown]], rows, caption="Bootstrap mean ± std on the same test split.")


def drug_group_members(by: str, codes: list[str], groups: list[int]) -> dict[str, Any]:
    """Which medications each drug-group adapter answers for (model.drug_groups), codes in vocabulary order."""
    members = [[c for c, g in zip(codes, groups) if g == group] for group in range(max(groups) + 1)]
    return {"by": by, "groups": members}


def _drug_groups_section(page: Page, groups: dict[str, Any]) -> None:
    page.section("Drug groups")
    page.table(["group", "drugs", "medications (ATC)"],
               [[g, len(codes), ", ".join(codes)] for g, codes in enumerate(groups["groups"])],
               caption=f"LAMO drug-group adapters, grouped by {groups['by']}: every adapter's LoRA rank is split into "
                       "one block per group, and a drug's probability comes from its own group's block "
                       "(docs/model.md, model.drug_groups).")


def _training_section(page: Page, histories: dict[str, Any]) -> None:
    page.section("Training")
    page.figure("training_curves", figs.training_curves(histories),
                "Both training phases: phase 1 (warm-up model on its share of the training patients) and phase 3 "
                "(cluster-routed experts). Left: loss of every optimizer step; middle: mean training loss per epoch; "
                "right: validation Jaccard per epoch, the star marks the epoch whose weights were kept.")
    page.table(["phase", "epochs", "first → last training loss", "best validation Jaccard (epoch)", "samples/s", "workers"],
               [[p, len(h["epochs"]),
                 f"{h['epochs'][0]['train_loss']:.4f} → {h['epochs'][-1]['train_loss']:.4f}" if h["epochs"] else "–",
                 f"{h['best_val_jaccard']:.4f} ({h['best_epoch']})",
                 cell(float(np.mean([e["samples_per_s"] for e in h["epochs"]])), 1) if h["epochs"] else "–",
                 h.get("world_size", "–")] for p, h in histories.items()])


def _coherence_section(page: Page, data: dict[str, Any], k: int) -> None:
    c = data["coherence"]
    dj = c["diagnosis_jaccard"]
    page.section("Cluster coherence")
    page.paragraph(
        f"Mean Jaccard similarity of the current visit's diagnosis sets, over every pair of {dj['visits_sampled']} "
        f"training visits (of {dj['visits']}; a seeded sample when there are more): within a cluster "
        f"**{cell(dj['within'])}**, between clusters **{cell(dj['between'])}**, ratio **{cell(dj['ratio'], 1)}×** "
        f"(the paper reports {PAPER_COHERENCE['within']} vs {PAPER_COHERENCE['between']}, {PAPER_COHERENCE['ratio']}×). "
        "A ratio above 1 means patients of one cluster share more diagnoses than patients of different clusters.")
    matrix = np.array([[np.nan if v is None else v for v in row] for row in dj["matrix"]], dtype=np.float64)
    page.figure("similarity_matrix", figs.heatmap(
        matrix, title="mean diagnosis-set Jaccard similarity", xlabel="cluster", ylabel="cluster",
        xticks=[str(i) for i in range(k)], yticks=[str(i) for i in range(k)], cmap="magma"),
        "Cell (a, b): mean similarity of a visit in cluster a and a visit in cluster b. The diagonal is each "
        "cluster's internal coherence; within = mean of the diagonal, between = mean of the off-diagonal cells.")
    rows = [["within-cluster similarity (mean of the diagonal)", dj["within"]],
            ["between-cluster similarity (mean off the diagonal)", dj["between"]],
            ["ratio", f"{cell(dj['ratio'], 2)} ×"],
            ["within / between, weighting every pair equally", f"{cell(dj['within_pairs'])} / {cell(dj['between_pairs'])}"],
            ["pairs compared (within / between)", f"{dj['pairs']['within']:,} / {dj['pairs']['between']:,}"],
            [f"silhouette ({c['silhouette']['space']}, {c['silhouette']['visits_sampled']} visits)", c["silhouette"]["value"]]]
    if "routing_sharpness" in c:
        rs = c["routing_sharpness"]
        rows.append([f"routing sharpness: mean top-{rs['top_n']} gate mass of {rs['num_experts']} experts", rs["mean"]])
    page.table(["measure", "value"], rows)


def _routing_section(page: Page, data: dict[str, Any], k: int) -> None:
    model, c, r = data["model"], data["coherence"], data["routing"]
    page.section("Clusters and experts")
    page.figure("sizes_and_load", figs.sizes_and_load(
        data["cluster_sizes"], np.array(r["expert_load_share"]) if r else None, np.array(r["expert_mean_gate"]) if r else None),
        "Left: training visits per cluster. Right: for each expert, the share of training visits whose top-n "
        "experts include it, and its mean gate weight — an expert no visit reaches is never trained beyond its warm-up copy.")
    if r:
        gm = np.array([[np.nan] * model["num_experts"] if row is None else row for row in r["matrix"]], dtype=np.float64)
        top = np.argsort(-np.nan_to_num(gm, nan=-1), axis=1, kind="stable")[:, : model["top_n"]]
        mark = np.zeros_like(gm, dtype=bool)
        np.put_along_axis(mark, top, True, axis=1)
        page.figure("routing_matrix", figs.heatmap(
            gm, title=f"routing matrix: gate weights G ({model['router']} router)", xlabel="expert", ylabel="cluster",
            xticks=[str(i) for i in range(model["num_experts"])], yticks=[str(i) for i in range(k)], cmap="Blues", mark=mark),
            f"Row c: the softmax gate weights over the experts of cluster c's training visits (G = softmax(OneHot(c)·W_e + b_e) "
            f"for the triage router). Outlined: the top-{model['top_n']} experts applied. Their summed weight is the "
            "routing sharpness: 1 would mean a cluster's patients use their experts alone.")
        rs = c["routing_sharpness"]
        page.table(["cluster", "training visits", "top experts (weight)", f"top-{rs['top_n']} gate mass"],
                   [[i, data["cluster_sizes"][i],
                     ", ".join(f"{e} ({gm[i, e]:.2f})" for e in top[i]) if np.isfinite(gm[i]).all() else "–",
                     rs["per_cluster"][i]] for i in range(k)])


def _clusters_section(page: Page, data: dict[str, Any], profiles: list[dict[str, Any]]) -> None:
    from trixmed.eval.evaluate import LABELS

    m = data["metrics"]
    page.section("Disease categories")
    shares, names = chapter_shares(profiles)
    page.figure("chapters", figs.chapter_composition(shares, names),
                "Each cluster's diagnosis codes of its training visits, by ICD chapter (the stratify stage's profile). "
                "Clusters dominated by one colour gather one kind of patient.")

    page.section("Cluster profiles")
    page.paragraph("The codes most frequent among each cluster's training visits. Share: of the cluster's visits; "
                   "lift: that share ÷ the share among all training visits (above 1: typical of the cluster).")
    for p in profiles:
        page.subsection(f"Cluster {p['cluster']}: {p['size']} visits ({100 * p['share']:.1f} %), "
                        f"ground-truth DDI rate {p['gt_ddi_rate']:.3f}"
                        + (f", largest disease category: {p['chapters'][0]['chapter'].lower()} "
                           f"({100 * p['chapters'][0]['share']:.0f} % of its diagnoses)" if p["chapters"] else ""))
        rows = [[label, x["code"], x["title"], f"{100 * x['share']:.0f} %", f"{x['lift']:.2f}"]
                for kind, label in (("diag", "diagnosis"), ("proc", "procedure"), ("med", "medication"))
                for x in p[f"top_{kind}"][:5]]
        page.table(["kind", "code", "title", "share", "lift"], rows)

    page.section("Accuracy per cluster")
    pc = data["per_cluster_accuracy"]
    shown = [name for name in ("jaccard", "f1", "prauc") if name in m]
    page.figure("per_cluster_accuracy", figs.per_cluster_bars(
        {LABELS[name]: [e.get(name, np.nan) for e in pc] for name in shown}, {LABELS[name]: m[name]["point"] for name in shown}),
        "Test visits grouped by the cluster they were routed to, their sets decided as the run decides them.")
    page.table(["cluster", "test visits", *[LABELS[name] for name in (*shown, "ddi_rate", "avg_drugs")]],
               [[e["cluster"], e["test_visits"], *[e.get(name) for name in (*shown, "ddi_rate", "avg_drugs")]] for e in pc])


def chapter_shares(profiles: list[dict[str, Any]], shown: int = CHAPTERS_SHOWN) -> tuple[np.ndarray, list[str]]:
    """[K, chapters] shares of each cluster's diagnoses: the `shown` chapters largest over all
    clusters (weighted by size), the rest summed as "Other"."""
    total: dict[str, float] = {}
    for p in profiles:
        for ch in p["chapters"]:
            total[ch["chapter"]] = total.get(ch["chapter"], 0.0) + ch["share"] * p["size"]
    names = [n for n, _ in sorted(total.items(), key=lambda item: (-item[1], item[0]))]
    kept = names[:shown]
    cols = kept + (["Other"] if len(names) > shown else [])
    out = np.zeros((len(profiles), len(cols)))
    for i, p in enumerate(profiles):
        for ch in p["chapters"]:
            j = cols.index(ch["chapter"]) if ch["chapter"] in kept else len(cols) - 1
            out[i, j] += ch["share"]
    return out, cols


def _ablations(rd: RunDir) -> list[dict[str, Any]]:
    """Rows of `eval/ablations.json` when present: [{"name": ..., "metrics": {metric: {"mean", "std"}}}]
    (or {"rows": [...]})."""
    if not rd.ablations.is_file():
        return []
    raw = read_json(rd.ablations)
    rows = raw.get("rows") if isinstance(raw, dict) else raw
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "name" in r and isinstance(r.get("metrics"), dict) for r in rows):
        raise TrixmedError(rd.ablations, 'expected [{"name": ..., "metrics": {"jaccard": {"mean": ..., "std": ...}, ...}}, ...]')
    return rows


def _pm(m: dict[str, float] | None) -> str:
    return "–" if not m else f"{m['mean']:.4f} ± {m.get('std', 0.0):.4f}"


def _r(value: float | None, digits: int = 4) -> float | None:
    if value is None or value != value:
        return None
    return round(float(value), digits)
