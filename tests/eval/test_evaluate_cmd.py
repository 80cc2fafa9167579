from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trixmed.testing import make_dataset_dir

from trixmed.cli import main as cli
from trixmed.config import EvalConfig
from trixmed.data.dataset import Dataset
from trixmed.eval.evaluate import evaluate_predictions
from trixmed.eval.predictions import Predictions

VOCAB = {"diag": ["4019", "42731", "E119"], "proc": ["3601", "9604"], "med": ["A01A", "B01A", "C07A", "N02B"]}


def visit(pid, order, split, med, diag=("4019",), proc=()):
    return {"patient_id": pid, "visit_order": order, "split": split, "diag": list(diag), "proc": list(proc), "med": list(med)}


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    ddi = np.zeros((4, 4), dtype=np.uint8)
    ddi[0, 2] = ddi[2, 0] = 1  # A01A–C07A, the only interacting pair
    visits = [
        visit("p1", 0, "train", ["A01A"]), visit("p1", 1, "train", ["N02B"]),
        visit("p2", 0, "test", ["B01A", "C07A"]), visit("p2", 1, "test", ["A01A", "C07A"]),
        visit("p3", 0, "test", ["N02B"]),
        visit("p4", 0, "val", ["B01A"]),
    ]
    return make_dataset_dir(tmp_path / "dataset", visits, VOCAB, ddi)


GOOD = [
    {"visit_key": "p2:0", "predicted": ["B01A"], "probabilities": {"B01A": 0.9, "C07A": 0.4}},
    # listed out of vocabulary order: the interacting pair must still be found
    {"visit_key": "p2:1", "predicted": ["C07A", "A01A"], "probabilities": {"C07A": 0.8, "A01A": 0.7}},
    {"visit_key": "p3:0", "predicted": ["N02B"], "probabilities": {"N02B": 0.6, "A01A": 0.7}},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli(["evaluate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_scores_a_jsonl_file_and_writes_json(tmp_path, dataset_dir, capsys):
    preds = write_jsonl(tmp_path / "preds.jsonl", GOOD)
    out = tmp_path / "m.json"
    code, stdout, _ = run(capsys, "--dataset", str(dataset_dir), "--predictions", str(preds), "--out", str(out))
    assert code == 0
    result = json.loads(out.read_text())
    m = {k: v["point"] for k, v in result["metrics"].items()}
    assert m["jaccard"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["ddi_rate"] == pytest.approx(1.0)        # the one predicted pair is A01A–C07A
    assert m["gt_ddi_rate"] == pytest.approx(0.5)     # true pairs: B01A–C07A, A01A–C07A
    assert m["avg_drugs"] == pytest.approx(4 / 3)
    # p2:0 and p2:1 rank both true drugs first (AP 1); p3:0 ranks A01A above N02B (AP 1/2)
    assert m["prauc"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert result["n_visits"] == 3 and result["n_patients"] == 2
    assert result["bootstrap"]["rounds"] == 10
    assert "Jaccard" in stdout and "±" in stdout


def test_parquet_with_map_or_struct_probabilities_equals_jsonl(tmp_path, dataset_dir):
    ds = Dataset(dataset_dir)
    ref = evaluate_predictions(ds, write_jsonl(tmp_path / "p.jsonl", GOOD), "test")
    keys = [r["visit_key"] for r in GOOD]
    predicted = [r["predicted"] for r in GOOD]
    as_map = pa.array([list(r["probabilities"].items()) for r in GOOD], pa.map_(pa.string(), pa.float64()))
    as_struct = pa.array([[{"code": c, "prob": p} for c, p in r["probabilities"].items()] for r in GOOD])
    for name, probs in (("map", as_map), ("struct", as_struct)):
        path = tmp_path / f"p_{name}.parquet"
        pq.write_table(pa.table({"visit_key": keys, "predicted": predicted, "probabilities": probs}), path)
        assert evaluate_predictions(ds, path, "test")["metrics"] == ref["metrics"], name


def test_python_api_accepts_arrays_and_frames(tmp_path, dataset_dir):
    import pandas as pd

    ds = Dataset(dataset_dir)
    y_pred = ds.multi_hot([r["predicted"] for r in GOOD]).astype(bool)
    arrays = evaluate_predictions(ds, Predictions([r["visit_key"] for r in GOOD], y_pred), "test", EvalConfig(seed=3))
    frame = evaluate_predictions(ds, pd.DataFrame(GOOD).drop(columns="probabilities"), "test", EvalConfig(seed=3))
    assert arrays["metrics"] == frame["metrics"]
    assert "prauc" not in arrays["metrics"]


def test_rows_of_other_splits_are_ignored_and_missing_can_score_empty(tmp_path, dataset_dir, capsys):
    rows = [GOOD[0], GOOD[1], {"visit_key": "p4:0", "predicted": ["B01A"]}]
    rows = [{k: v for k, v in r.items() if k != "probabilities"} for r in rows]
    preds = write_jsonl(tmp_path / "p.jsonl", rows)
    result = evaluate_predictions(Dataset(dataset_dir), preds, "test", missing_as_empty=True)
    assert result["n_rows_other_splits"] == 1 and result["n_missing_scored_empty"] == 1
    assert result["metrics"]["jaccard"]["point"] == pytest.approx((0.5 + 1 + 0) / 3)


# ---------------------------------------------------------------------------------------------
# bad input: one line naming file / line or row / field, exit 2, nothing written


def expect_error(capsys, tmp_path, dataset_dir, preds: Path, *needles: str) -> None:
    out = tmp_path / "never.json"
    code, stdout, stderr = run(capsys, "--dataset", str(dataset_dir), "--predictions", str(preds), "--out", str(out))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trixmed evaluate: error: "), stderr
    for needle in (str(preds), *needles):
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".never.json")]


def test_unknown_visit_key(capsys, tmp_path, dataset_dir):
    rows = GOOD[:2] + [dict(GOOD[2], visit_key="p9:0")]
    expect_error(capsys, tmp_path, dataset_dir, write_jsonl(tmp_path / "p.jsonl", rows), "line 3", "'visit_key'", "'p9:0'")


def test_unknown_atc_code(capsys, tmp_path, dataset_dir):
    rows = [GOOD[0], dict(GOOD[1], predicted=["C07A", "Z99Z"]), GOOD[2]]
    expect_error(capsys, tmp_path, dataset_dir, write_jsonl(tmp_path / "p.jsonl", rows), "line 2", "'predicted'", "'Z99Z'")


def test_unknown_atc_code_in_probabilities(capsys, tmp_path, dataset_dir):
    rows = [GOOD[0], GOOD[1], dict(GOOD[2], probabilities={"N02X": 0.5})]
    expect_error(capsys, tmp_path, dataset_dir, write_jsonl(tmp_path / "p.jsonl", rows), "line 3", "'probabilities'", "'N02X'")


def test_non_utf8_bytes(capsys, tmp_path, dataset_dir):
    path = write_jsonl(tmp_path / "p.jsonl", GOOD)
    path.write_bytes(path.read_bytes().replace(b'"p3:0"', b'"p3:\xff0"'))
    expect_error(capsys, tmp_path, dataset_dir, path, "line 3", "UTF-8")


def test_nan_probability(capsys, tmp_path, dataset_dir):
    path = tmp_path / "p.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in GOOD).replace('"N02B": 0.6', '"N02B": NaN')
    path.write_text(text, encoding="utf-8")
    expect_error(capsys, tmp_path, dataset_dir, path, "line 3", "'probabilities'", "NaN")


def test_probability_out_of_range(capsys, tmp_path, dataset_dir):
    rows = [GOOD[0], dict(GOOD[1], probabilities={"C07A": 1.5}), GOOD[2]]
    expect_error(capsys, tmp_path, dataset_dir, write_jsonl(tmp_path / "p.jsonl", rows), "line 2", "'probabilities'", "1.5")


def test_bad_json_line(capsys, tmp_path, dataset_dir):
    path = write_jsonl(tmp_path / "p.jsonl", GOOD)
    path.write_text(path.read_text().replace('"p2:1"', "p2:1"), encoding="utf-8")
    expect_error(capsys, tmp_path, dataset_dir, path, "line 2", "not valid JSON")


def test_predicted_not_a_list(capsys, tmp_path, dataset_dir):
    rows = [GOOD[0], dict(GOOD[1], predicted="C07A"), GOOD[2]]
    expect_error(capsys, tmp_path, dataset_dir, write_jsonl(tmp_path / "p.jsonl", rows), "line 2", "'predicted'", "list")


def test_missing_visit(capsys, tmp_path, dataset_dir):
    expect_error(capsys, tmp_path, dataset_dir, write_jsonl(tmp_path / "p.jsonl", GOOD[:2]), "1 of 3 test visits", "'p3:0'")


def test_duplicate_visit_key(capsys, tmp_path, dataset_dir):
    expect_error(capsys, tmp_path, dataset_dir, write_jsonl(tmp_path / "p.jsonl", GOOD + [GOOD[0]]), "line 4", "'visit_key'", "line 1")


def test_probabilities_on_some_rows_only(capsys, tmp_path, dataset_dir):
    rows = [GOOD[0], {"visit_key": "p2:1", "predicted": ["C07A"]}, GOOD[2]]
    expect_error(capsys, tmp_path, dataset_dir, write_jsonl(tmp_path / "p.jsonl", rows), "line 2", "'probabilities'")


def test_unknown_field(capsys, tmp_path, dataset_dir):
    rows = [GOOD[0], dict(GOOD[1], probabilites={}), GOOD[2]]
    expect_error(capsys, tmp_path, dataset_dir, write_jsonl(tmp_path / "p.jsonl", rows), "line 2", "'probabilites'")


def test_parquet_nan_probability(capsys, tmp_path, dataset_dir):
    path = tmp_path / "p.parquet"
    probs = pa.array([[("B01A", 0.9)], [("C07A", float("nan"))], [("N02B", 0.6)]], pa.map_(pa.string(), pa.float64()))
    pq.write_table(pa.table({"visit_key": ["p2:0", "p2:1", "p3:0"], "predicted": [["B01A"], ["C07A"], ["N02B"]], "probabilities": probs}), path)
    expect_error(capsys, tmp_path, dataset_dir, path, "row 1", "'probabilities'", "NaN")


def test_parquet_non_utf8_string(capsys, tmp_path, dataset_dir):
    path = tmp_path / "p.parquet"
    raw = pa.array([b"p2:0", b"p2:\xff1", b"p3:0"], pa.binary())
    keys = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # bytes relabelled as string, unchecked
    pq.write_table(pa.table({"visit_key": keys, "predicted": [["B01A"], ["C07A"], ["N02B"]]}), path)
    expect_error(capsys, tmp_path, dataset_dir, path, "row 1", "'visit_key'", "UTF-8")


def test_parquet_null_predicted(capsys, tmp_path, dataset_dir):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"visit_key": ["p2:0", "p2:1", "p3:0"], "predicted": [["B01A"], None, ["N02B"]]}), path)
    expect_error(capsys, tmp_path, dataset_dir, path, "row 1", "'predicted'")


def test_not_a_parquet_file(capsys, tmp_path, dataset_dir):
    path = tmp_path / "p.parquet"
    path.write_bytes(b"PAR1 but not really")
    expect_error(capsys, tmp_path, dataset_dir, path, "Parquet")


def test_config_overrides_reach_the_harness(tmp_path, dataset_dir, capsys):
    preds = write_jsonl(tmp_path / "preds.jsonl", GOOD)
    code, _, _ = run(capsys, "--dataset", str(dataset_dir), "--predictions", str(preds), "eval.average=patient", "eval.bootstrap_rounds=3")
    assert code == 0
    result = json.loads((tmp_path / "preds.jsonl.metrics.json").read_text())
    # SafeDrug's per-patient mean: p2 (0.5 + 1) / 2, p3 1
    assert result["metrics"]["jaccard"]["point"] == pytest.approx((0.75 + 1) / 2)
    assert result["bootstrap"]["rounds"] == 3 and result["average"] == "patient"


@pytest.mark.parametrize("override", ["eval.average=bogus", "eval.bootstrap_fraction=0", "eval.bootstrap_rounds=0", "eval.threshold=1.5"])
def test_bad_eval_config(capsys, tmp_path, dataset_dir, override):
    preds = write_jsonl(tmp_path / "preds.jsonl", GOOD)
    code, _, stderr = run(capsys, "--dataset", str(dataset_dir), "--predictions", str(preds), override)
    assert code == 2 and override.split("=")[0] in stderr
    assert not (tmp_path / "preds.jsonl.metrics.json").exists()
