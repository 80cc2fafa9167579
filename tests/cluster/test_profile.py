"""Cluster profiles on a hand-made cohort whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from trixmed.cluster.profile import cluster_profiles, format_profiles
from trixmed.data.dataset import Dataset
from trixmed.testing import FakeTitles, make_dataset_dir

VOCAB = {"diag": ["4019", "25000", "V5861"], "proc": ["3961"], "med": ["B01A", "C07A", "N02B"]}


def _visit(p, diag, med, proc=(), split="train"):
    return {"patient_id": p, "visit_order": 0, "split": split, "diag": list(diag), "proc": list(proc), "med": list(med)}


@pytest.fixture
def dataset(tmp_path):
    visits = [
        _visit("a", ["4019"], ["B01A", "C07A"], ["3961"]),
        _visit("b", ["4019", "V5861"], ["B01A", "C07A"]),
        _visit("c", ["4019"], ["B01A"]),
        _visit("d", ["25000"], ["N02B"]),
        _visit("e", ["25000", "V5861"], ["N02B", "C07A"]),
        _visit("f", ["4019"], ["N02B"], split="test"),   # not train: not profiled
    ]
    ddi = np.zeros((3, 3), np.uint8)
    ddi[0, 1] = ddi[1, 0] = 1   # B01A–C07A interact
    return Dataset(make_dataset_dir(tmp_path / "dataset", visits, VOCAB, ddi))


def test_sizes_lift_chapters_and_ddi(dataset):
    clusters = {"a:0": 0, "b:0": 0, "c:0": 0, "d:0": 1, "e:0": 1, "f:0": 1}
    p = cluster_profiles(dataset, clusters, 2, top=5, titles=FakeTitles())
    assert p["visits"] == 5
    c0, c1 = p["clusters"]
    assert (c0["size"], c0["share"], c1["size"], c1["share"]) == (3, 0.6, 2, 0.4)
    # 4019: all 3 visits of cluster 0, 3 of the 5 training visits → lift (3/3)/(3/5) = 1.667
    assert c0["top_diag"][0] == {"code": "4019", "title": FakeTitles().title("diag", "4019"), "visits": 3,
                                 "share": 1.0, "lift": pytest.approx(1.667)}
    assert [e["code"] for e in c0["top_med"]] == ["B01A", "C07A"] and c0["top_med"][0]["lift"] == pytest.approx(5 / 3, abs=1e-3)
    assert c1["top_med"][0] == {"code": "N02B", "title": FakeTitles().title("med", "N02B"), "visits": 2, "share": 1.0,
                                "lift": pytest.approx(2.5)}
    assert c0["top_proc"][0]["code"] == "3961" and c1["top_proc"] == []
    # cluster 0: 4 diagnoses, 3 circulatory + 1 V code
    assert c0["chapters"] == [{"chapter": "Diseases of the circulatory system", "share": 0.75},
                              {"chapter": "Supplementary classification: factors influencing health status (V codes)", "share": 0.25}]
    # cluster 0: pairs (B01A,C07A) interacting in a and b, none possible in c → 2 / 2
    assert c0["gt_ddi_rate"] == 1.0 and c1["gt_ddi_rate"] == 0.0
    text = format_profiles(p)
    assert "cluster 0: 3 visits (60.0 %)" in text and "4019" in text


def test_an_empty_cluster_has_a_profile_too(dataset):
    p = cluster_profiles(dataset, {k: 0 for k in ("a:0", "b:0", "c:0", "d:0", "e:0", "f:0")}, 2, titles=FakeTitles())
    empty = p["clusters"][1]
    assert empty["size"] == 0 and empty["top_diag"] == [] and empty["chapters"] == [] and empty["gt_ddi_rate"] == 0.0
