from __future__ import annotations

import pandas as pd
import pytest

from trixmed.config import SplitConfig
from trixmed.data.dataset import Dataset
from trixmed.data.splits import assign_split


def _visits(n_patients: int, per_patient: int = 2) -> pd.DataFrame:
    pids = [f"p{i}" for i in range(n_patients) for _ in range(per_patient)]
    return pd.DataFrame({"patient_id": pids, "visit_order": [j for _ in range(n_patients) for j in range(per_patient)]})


def test_safedrug_split_counts_and_order():
    v = _visits(6350, 1)
    s = assign_split(v, SplitConfig(kind="safedrug"))
    assert (s[:4233] == "train").all() and (s[4233:5291] == "test").all() and (s[5291:] == "val").all()


def test_random_split_by_patient_is_seeded_and_disjoint():
    v = _visits(1000, 3)
    cfg = SplitConfig(kind="random", ratios=[0.7, 0.0, 0.3], seed=7)
    s = assign_split(v, cfg)
    per_patient = pd.Series(s).groupby(v.patient_id).nunique()
    assert (per_patient == 1).all()
    assert (pd.Series(s).value_counts() == pd.Series({"train": 2100, "test": 900})).all()
    assert (assign_split(v, cfg) == s).all()
    assert not (assign_split(v, SplitConfig(kind="random", ratios=[0.7, 0.0, 0.3], seed=8)) == s).all()


def test_visit_random_is_leaky_and_flagged(prepare_cli, tmp_path):
    v = _visits(200, 5)
    s = assign_split(v, SplitConfig(kind="visit-random", ratios=[0.6, 0.2, 0.2], seed=0))
    assert (pd.Series(s).value_counts().sort_index() == pd.Series({"test": 200, "train": 600, "val": 200})).all()
    assert (pd.Series(s).groupby(v.patient_id).nunique() > 1).any()
    rc, _, err = prepare_cli("--run-dir", tmp_path, "--split", "visit-random")
    assert rc == 0, err
    assert Dataset(tmp_path / "dataset").card["split"] == {"kind": "visit-random", "leaky": True}
    assert "Leaky split" in (tmp_path / "dataset" / "card.md").read_text()


@pytest.mark.parametrize("ratios", [[0.7, 0.3], [0.8, 0.3, 0.1], [1.2, -0.1, -0.1]])
def test_bad_ratios_are_config_errors(prepare_cli, tmp_path, ratios):
    rc, _, err = prepare_cli("--run-dir", tmp_path, "data.split.kind=random", f"data.split.ratios={ratios}")
    assert rc == 2 and "data.split.ratios" in err
