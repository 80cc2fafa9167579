"""The run's choices (trixmed/eval/selection.py): `choose` decides the threshold then α on validation
as the evaluate stage does, the metrics file carries them, `read_choices` alone reads them back, and
a missing file or choice is a one-line error naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trixmed.config import EvalConfig
from trixmed.data.dataset import Dataset
from trixmed.errors import TrixmedError
from trixmed.eval.decode import decode_sets
from trixmed.eval.selection import Choices, choices_record, read_choices, select_and_score
from trixmed.testing import make_dataset_dir

VOCAB = {"diag": ["D0"], "proc": ["P0"], "med": ["M0", "M1", "M2", "M3"]}


def _dataset(root: Path) -> Dataset:
    ddi = np.zeros((4, 4), dtype=np.uint8)
    ddi[0, 1] = ddi[1, 0] = 1
    rng = np.random.default_rng(0)
    visits = [{"patient_id": f"{split}{i}", "visit_order": 0, "split": split, "diag": ["D0"], "proc": [],
               "med": [m for m in VOCAB["med"] if rng.random() < 0.5]}
              for split in ("train", "val", "test") for i in range(30)]
    return Dataset(make_dataset_dir(root, visits, VOCAB, ddi))


def test_select_and_score_records_the_choices_read_choices_returns(tmp_path):
    ds = _dataset(tmp_path / "dataset")
    rng = np.random.default_rng(1)
    scores = {split: (ds.samples(split), rng.random((30, 4))) for split in ("val", "test")}
    cfg = EvalConfig(bootstrap_rounds=2, ddi_alpha=None, ddi_target=0.05)
    result = select_and_score(ds, cfg, scores, tmp_path, {"val": "val.jsonl", "test": "test.jsonl"}, "metrics.json",
                              "metrics.md", best_epoch=3)
    choices = read_choices(tmp_path / "metrics.json", "predict")
    assert choices == Choices(result["threshold"], "val", result["ddi_alpha"], "val", 0.05, 3)
    assert choices_record(choices) == {k: result[k] for k in choices_record(choices)}
    # the test sets written are the ones the recorded choices decide
    test = [json.loads(line)["predicted"] for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    decided = choices.decide(scores["test"][1], ds.ddi)
    assert test == [[VOCAB["med"][j] for j in np.flatnonzero(row)] for row in decided]
    np.testing.assert_array_equal(decided, decode_sets(scores["test"][1], choices.threshold, ds.ddi, choices.ddi_alpha))


def test_choices_fixed_by_the_config_say_so(tmp_path):
    ds = _dataset(tmp_path / "dataset")
    scores = {split: (ds.samples(split), np.full((30, 4), 0.5)) for split in ("val", "test")}
    select_and_score(ds, EvalConfig(bootstrap_rounds=2, threshold=0.4, ddi_alpha=0.1), scores, tmp_path,
                     {"val": "val.jsonl", "test": "test.jsonl"}, "metrics.json", "metrics.md")
    assert read_choices(tmp_path / "metrics.json", "predict") == Choices(0.4, "config", 0.1, "config", None, None)


def test_an_evaluation_without_the_best_epoch_still_reads(tmp_path):
    path = tmp_path / "metrics.json"
    record = choices_record(Choices(0.3, "val", 0.0, "config", None, 2))
    del record["best_epoch"]   # written before the epoch was recorded with the choices
    path.write_text(json.dumps({"split": "test", **record}))
    assert read_choices(path, "predict") == Choices(0.3, "val", 0.0, "config", None, None)


def test_a_missing_file_or_choice_is_a_one_line_error(tmp_path):
    path = tmp_path / "eval" / "metrics.json"
    with pytest.raises(TrixmedError) as exc:
        read_choices(path, "explain")
    assert str(exc.value) == f"{path}: missing; explain needs a trained and evaluated run (`trixmed run`)"
    path.parent.mkdir()
    record = choices_record(Choices(0.3, "val", 0.0, "config", None, 2))
    del record["ddi_alpha"]
    path.write_text(json.dumps(record))
    with pytest.raises(TrixmedError) as exc:
        read_choices(path, "explain")
    assert str(exc.value) == (f"{path}: ddi_alpha: missing (an evaluation of an older trixmed; "
                              "`trixmed evaluate --force` on the run writes it again)")

