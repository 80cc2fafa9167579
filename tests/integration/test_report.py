"""`trixmed explain` and `trixmed report` on a real tiny run (Ray Train + DeepSpeed, trained once for
the module): the explanation agrees with the model, and the HTML report renders in a real headless
browser (Debian's Chromium) without console errors and not blank."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from browser import check_page, console_errors, render

from trixmed.config import load_config
from trixmed.data.dataset import Dataset
from trixmed.run_dir import RunDir
from trixmed.testing import TINY_OVERRIDES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PATIENT = {"visits": [
    {"diag": ["D01", "D03"], "proc": ["P00"], "med": ["M01", "M03", "M09"]},
    {"diag": ["D00", "D02", "D05"], "proc": ["P00"]},
]}


@pytest.fixture(scope="module")
def run(trained_tiny_run):
    patient = trained_tiny_run.parent / "patient.json"
    patient.write_text(json.dumps(PATIENT))
    return trained_tiny_run, patient


@pytest.fixture(scope="module")
def explanation(run):
    """The CLI's JSON file and text for the bundled patient, with only `--run` (no config)."""
    from trixmed.cli import main

    root, patient = run
    out = root.parent / "explanation.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["explain", "--run", str(root), "--patient", str(patient), "--neighbours", "4", "--json", str(out)]) == 0
    return json.loads(out.read_text()), buf.getvalue()


@pytest.fixture(scope="module")
def report(run):
    from trixmed.cli import main

    from trixmed.io import write_json

    root, _ = run
    write_json(RunDir(root).ablations, [{"name": "w/o MoE", "metrics": {"jaccard": {"mean": 0.25, "std": 0.01}}}])
    assert main(["report", "--run-dir", str(root)]) == 0
    return RunDir(root)


def _warm_features(root: Path, sample):
    from trixmed.models import load_model
    from trixmed.train.inference import collator_for, infer

    cfg = load_config(None, [*TINY_OVERRIDES, f"run_dir={root}"])
    ds = Dataset(RunDir(root).dataset)
    warm = load_model(RunDir(root).model("warmup"), cfg, ds.vocab)
    return infer(warm, collator_for(cfg, ds.vocab), [sample])["pooled"]


def test_explanation_routes_like_the_transform_and_the_model(run, explanation):
    from trixmed.cluster import ClusterTransform
    from trixmed.eval.selection import read_choices
    from trixmed.pipeline.predict import predict_patient, read_patient

    root, patient = run
    e, _ = explanation
    rd = RunDir(root)
    ds = Dataset(rd.dataset)
    sample = read_patient(patient, ds.vocab)
    transform = ClusterTransform.load(rd.clusters)
    label, dist = transform.assign(_warm_features(root, sample))
    assert e["cluster"] == int(label[0])
    assert e["cluster_distance"] == pytest.approx(float(dist[0]), abs=1e-5)
    d = [c["distance"] for c in e["centroid_distances"]]
    assert len(d) == transform.num_clusters == 3 and int(np.argmin(d)) == e["cluster"]
    assert d[e["cluster"]] == pytest.approx(float(dist[0]), abs=1e-5)

    # Γ: the top-n of G, as configured (top_n=2, not renormalised): weights = G at those experts
    r = e["routing"]
    assert r["router"] == "triage" and r["top_n"] == 2 and r["renormalize"] is False and len(r["gates"]) == 4
    assert sum(r["gates"]) == pytest.approx(1, abs=1e-4)
    top = np.argsort(-np.array(r["gates"]), kind="stable")[:2]
    assert [x["expert"] for x in r["experts"]] == top.tolist()
    assert [x["weight"] for x in r["experts"]] == pytest.approx([r["gates"][i] for i in top], abs=1e-6)
    assert r["weight_sum"] == pytest.approx(sum(r["gates"][i] for i in top), abs=1e-5) and r["weight_sum"] < 1

    # the recommendations are predict's, decided by the run's choices
    choices = read_choices(rd.metrics, "test")
    cfg = load_config(None, [*TINY_OVERRIDES, f"run_dir={root}"])
    predicted = predict_patient(cfg, rd, sample, ds, choices)
    assert (e["threshold"], e["ddi_alpha"]) == (choices.threshold, choices.ddi_alpha)
    assert [m["code"] for m in e["recommendations"]] == predicted["predicted"]
    assert all(m["probability"] >= choices.threshold for m in e["recommendations"])
    assert predicted["expert_weights"] == pytest.approx(r["gates"], abs=1e-6)
    # interacting pairs: the tiny DDI matrix marks M00–M01 and M02–M05
    rec = set(predicted["predicted"])
    expected = {frozenset(p) for p in ({"M00", "M01"}, {"M02", "M05"}) if p <= rec}
    assert {frozenset((x["a"], x["b"])) for x in e["interactions"]} == expected
    # history: the earlier visit prescribed M01, M03, M09
    for m in e["recommendations"]:
        assert m["earlier_visits_with"] == int(m["code"] in {"M01", "M03", "M09"})


def test_explanation_neighbours_are_the_nearest_training_visits(run, explanation):
    from trixmed.cluster import ClusterTransform, load_assignments
    from trixmed.cluster.features import iter_feature_shards
    from trixmed.pipeline.predict import read_patient

    root, patient = run
    e, _ = explanation
    rd = RunDir(root)
    ds = Dataset(rd.dataset)
    transform = ClusterTransform.load(rd.clusters)
    z = transform.project(_warm_features(root, read_patient(patient, ds.vocab)))[0]
    train = {s.visit_key: s for s in ds.samples("train")}
    keys, dist = [], []
    for _, cols, x in iter_feature_shards(rd.features):
        for key, split, row in zip(cols["visit_key"], cols["split"], transform.project(x)):
            if split == "train":
                keys.append(key)
                dist.append(float(np.linalg.norm(row - z)))
    order = np.argsort(dist, kind="stable")[:4]
    clusters = load_assignments(rd.assignments)
    nb = e["similar_patients"]
    assert [n["rank"] for n in nb] == [1, 2, 3, 4]
    assert [n["distance"] for n in nb] == pytest.approx([dist[i] for i in order], abs=1e-5)
    for n, i in zip(nb, order):
        s = train[keys[i]]   # a training visit: its codes, cluster and visit count, no identifiers
        assert [d["code"] for d in n["diag"]] == list(s.current.diag) and [m["code"] for m in n["med"]] == list(s.target)
        assert n["cluster"] == clusters[keys[i]] and n["visits"] == len(s.visits)
        assert set(n) == {"rank", "distance", "cluster", "visits", "diag", "med"}
    # the cluster's profile and medication shares come from its training visits
    members = [s for k, s in train.items() if clusters[k] == e["cluster"]]
    assert e["cluster_profile"]["size"] == len(members)
    for m in e["recommendations"]:
        assert m["cluster_share"] == pytest.approx(sum(m["code"] in s.target for s in members) / len(members), abs=1e-4)


def test_explanation_text_names_the_cluster_experts_and_drugs(explanation):
    e, text = explanation
    assert f"Triage: cluster {e['cluster']}," in text
    assert "Experts: the triage router sends" in text and "Most similar training patients" in text
    for m in e["recommendations"]:
        assert f"{m['code']} {m['name']}" in text


def test_report_files_and_coherence_metrics(report, explanation):
    from trixmed.io import read_json

    rd = report
    coherence = read_json(rd.coherence)["coherence"]
    dj = coherence["diagnosis_jaccard"]
    assert 0 <= dj["between"] <= 1 and 0 <= dj["within"] <= 1
    assert dj["ratio"] == pytest.approx(dj["within"] / dj["between"], rel=0.01)
    assert dj["visits"] == dj["visits_sampled"] == len(Dataset(rd.dataset).samples("train"))
    assert -1 <= coherence["silhouette"]["value"] <= 1
    rs = coherence["routing_sharpness"]
    assert rs["top_n"] == 2 and len(rs["per_cluster"]) == 3 and all(0 < v <= 1 for v in rs["per_cluster"])
    # the patient's top-2 weight mass (from the model's forward pass) is its cluster's sharpness
    e, _ = explanation
    assert rs["per_cluster"][e["cluster"]] == pytest.approx(e["routing"]["weight_sum"], abs=1e-4)

    data = read_json(rd.report_data)
    assert data["coherence"] == coherence and data["map"]["method"] == "t-SNE"
    assert sum(data["cluster_sizes"]) == dj["visits"]
    assert sum(c["test_visits"] for c in data["per_cluster_accuracy"]) == len(Dataset(rd.dataset).samples("test"))
    assert all(row is None or sum(row) == pytest.approx(1, abs=1e-3) for row in data["routing"]["matrix"])
    md = rd.report_markdown.read_text()
    for name in re.findall(r"\]\(figures/([\w-]+\.png)\)", md):
        assert (rd.report_figures / name).is_file()
    assert "## Cluster coherence" in md and "## Training" in md
    assert "### Ablations" in md and "| w/o MoE | 0.2500 ± 0.0100 | – |" in md


def test_the_console_check_can_fail(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>undefined_function()</script></body></html>")
    assert console_errors(render(bad, tmp_path / "bad.png"))


def test_report_renders_in_chromium_without_errors_and_not_blank(report, tmp_path):
    assert len(list(report.report_figures.glob("*.png"))) == 7
    check_page(report.report_html, tmp_path / "report.png", figures=7)
