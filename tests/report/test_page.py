"""The report page: self-contained HTML (embedded PNGs, no script, nothing external) and Markdown
with figure files; and the pure helpers the run report and the explanation build on."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from trixmed.report.explain import format_explanation, interacting_pairs
from trixmed.report.page import Page, cell
from trixmed.report.run_report import chapter_shares


def _page() -> Page:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    page = Page("A <report>", subtitle="run `x` · **bold**")
    page.kpis([("0.5", "Jaccard")])
    page.section("Numbers")
    page.paragraph("within **0.4** & between 0.02")
    page.table(["metric", "value"], [["a|b", 0.12345], ["nan", float("nan")], ["none", None]], caption="a caption")
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    page.figure("line", fig, "a line")
    page.note("see docs")
    return page


def test_html_is_self_contained_and_escaped():
    html = _page().to_html()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)
    assert "<title>A &lt;report&gt;</title>" in html and "<strong>bold</strong>" in html and "<code>x</code>" in html
    assert "&amp; between" in html and "<td class=\"num\">0.123</td>" in html and "<td>–</td>" in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 1 and base64.b64decode(images[0]).startswith(b"\x89PNG")


def test_markdown_links_figures_written_beside_it(tmp_path):
    page = _page()
    page.write(tmp_path / "r.html", tmp_path / "r.md", tmp_path / "figures")
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("# A <report>") and "![line](figures/line.png)" in md
    assert "| a\\|b | 0.123 |" in md and "|---|---:|" in md and "> see docs" in md and "- **0.5** Jaccard" in md
    assert (tmp_path / "figures" / "line.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "r.html").read_text() == page.to_html()


def test_cell_formats():
    assert cell(0.5) == "0.500" and cell(0.5, 1) == "0.5" and cell(float("nan")) == "–" and cell(None) == "–"
    assert cell(3) == "3" and cell("x") == "x"


def test_interacting_pairs_either_direction_in_given_order():
    ddi = np.zeros((4, 4), dtype=np.uint8)
    ddi[0, 2] = 1          # one direction only
    ddi[3, 1] = ddi[1, 3] = 1
    index = {"A": 0, "B": 1, "C": 2, "D": 3}
    assert interacting_pairs(["C", "A", "B", "D"], ddi, index) == [("C", "A"), ("B", "D")]
    assert interacting_pairs(["A", "B"], ddi, index) == []


def test_chapter_shares_keeps_the_largest_and_sums_the_rest():
    profiles = [
        {"size": 10, "chapters": [{"chapter": "Circ", "share": 0.6}, {"chapter": "Resp", "share": 0.3}, {"chapter": "Neo", "share": 0.1}]},
        {"size": 30, "chapters": [{"chapter": "Neo", "share": 0.5}, {"chapter": "Skin", "share": 0.5}]},
    ]
    shares, names = chapter_shares(profiles, shown=2)
    assert names == ["Neo", "Skin", "Other"]       # Neo 16, Skin 15, Circ 6, Resp 3 (share × size)
    assert np.allclose(shares, [[0.1, 0.0, 0.9], [0.5, 0.5, 0.0]])
    shares, names = chapter_shares(profiles)
    assert "Other" not in names and shares.sum(1) == pytest.approx([1, 1])


def test_format_explanation_reads_plainly():
    code = lambda c, t: {"code": c, "title": t}  # noqa: E731
    e = {
        "patient": {"visits": 2, "current": {"diag": [code("4280", "Heart failure")], "proc": []},
                    "earlier_visits": [{"diag": [], "proc": [], "med": [code("B01A", "Antithrombotics")]}]},
        "cluster": 1, "cluster_distance": 0.5,
        "centroid_distances": [{"cluster": 0, "distance": 2.0}, {"cluster": 1, "distance": 0.5}],
        "routing": {"router": "triage", "num_experts": 3, "top_n": 2, "renormalize": False, "gates": [0.1, 0.6, 0.3],
                    "experts": [{"expert": 1, "weight": 0.6}, {"expert": 2, "weight": 0.3}], "weight_sum": 0.9},
        "cluster_profile": {"size": 4, "share": 0.4, "gt_ddi_rate": 0.1, "chapters": [{"chapter": "Circulatory", "share": 0.7}],
                            "top_diag": [{"code": "4280", "title": "Heart failure", "share": 0.5, "lift": 2.0, "visits": 2}],
                            "top_proc": [], "top_med": []},
        "similar_patients": [{"rank": 1, "distance": 0.1, "cluster": 1, "visits": 1, "diag": [code("4280", "Heart failure")], "med": []}],
        "threshold": 0.3,
        "ddi_alpha": 0.0,
        "recommendations": [{"code": "B01A", "name": "Antithrombotics", "probability": 0.9, "cluster_share": 0.75,
                             "cohort_share": 0.5, "earlier_visits_with": 1, "interacts_with": ["N02B"]},
                            {"code": "N02B", "name": "Analgesics", "probability": 0.4, "cluster_share": 0.25,
                             "cohort_share": 0.3, "earlier_visits_with": 0, "interacts_with": ["B01A"]}],
        "interactions": [{"a": "B01A", "a_name": "Antithrombotics", "b": "N02B", "b_name": "Analgesics"}],
    }
    text = format_explanation(e)
    assert "Triage: cluster 1" in text and "next nearest: cluster 0 at 2.00" in text
    assert "expert 1 (weight 0.60) and expert 2 (weight 0.30)" in text and "sum to 0.90 (not renormalised" in text
    assert "4280 Heart failure (50 %, ×2.0)" in text and "1. distance 0.10, cluster 1" in text
    assert re.search(r"0\.90 +75 % +50 % +1/1  B01A Antithrombotics  \[interacts with N02B\]", text)
    assert "(DDI matrix): 1: B01A + N02B." in text
    assert "the threshold chosen on validation):" in text
    e["ddi_alpha"] = 0.01   # a run decoded with a DDI safety weight says so
    assert "the threshold chosen on validation; DDI safety weight α = 0.01):" in format_explanation(e)
    e["routing"] = {"router": "none", "num_experts": 1, "top_n": 1, "renormalize": False}
    e["recommendations"], e["interactions"] = [], []
    text = format_explanation(e)
    assert "no router (none)" in text and "none reaches the threshold" in text and "(DDI matrix): none." in text


def test_drug_groups_section_lists_each_groups_medications():
    from trixmed.report.run_report import _drug_groups_section, drug_group_members

    groups = drug_group_members("atc", ["N02B", "A02B", "N05A", "C07A"], [0, 1, 0, 1])
    assert groups == {"by": "atc", "groups": [["N02B", "N05A"], ["A02B", "C07A"]]}
    page = Page("report")
    _drug_groups_section(page, groups)
    md = page.to_markdown()
    assert "## Drug groups" in md and "| 0 | 2 | N02B, N05A |" in md and "| 1 | 2 | A02B, C07A |" in md
    assert "grouped by atc" in md
