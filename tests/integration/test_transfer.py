"""`trixmed transfer` end to end: a trained tiny run scored zero-shot on another dataset, given in
the processed-benchmark format with its vocabularies in another order and codes the run never saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trixmed.data.dataset import Dataset
from trixmed.eval.predictions import read_predictions
from trixmed.run_dir import RunDir
from trixmed.testing import TINY_OVERRIDES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _benchmark_folder(source: Dataset, folder: Path) -> dict[str, list[str]]:
    """The source's visits as a benchmark folder: vocabularies reversed, one unseen diagnosis and
    procedure added to every visit and one unseen medication (which only the target knows) to every
    other visit."""
    vocab = {k: list(reversed(getattr(source.vocab, k))) for k in ("diag", "proc", "med")}
    vocab["diag"].append("DNEW")
    vocab["proc"].append("PNEW")     # benchmark visits need a procedure; the tiny data has visits without
    vocab["med"].insert(0, "MNEW")
    index = {k: {c: i for i, c in enumerate(v)} for k, v in vocab.items()}
    v = source.visits   # file order: the same patients land in the same splits
    patients = {p: i for i, p in enumerate(pd.unique(v["patient_id"]))}
    rows = []
    for n, r in enumerate(v.itertuples()):
        rows.append({"patient_idx": patients[r.patient_id], "visit_idx": r.visit_order,
                     "diag": [index["diag"][c] for c in [*r.diag, "DNEW"]], "proc": [index["proc"][c] for c in [*r.proc, "PNEW"]],
                     "med": [index["med"][c] for c in [*r.med, *(["MNEW"] if n % 2 else [])]]})
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "records.parquet", index=False)
    for kind, col in (("diag", "icd9_code"), ("proc", "icd9_code"), ("med", "atc3")):
        pd.DataFrame({"idx": range(len(vocab[kind])), col: vocab[kind]}).to_csv(folder / f"vocab_{kind}.csv", index=False)
    np.savez(folder / "graphs.npz", ddi_A=np.zeros((len(vocab["med"]),) * 2, dtype=np.uint8))
    return vocab


def test_transfer_maps_codes_by_string_and_reports_what_it_could_not_see(trained_tiny_run, tmp_path, capsys):
    from trixmed.cli import main

    source = RunDir(trained_tiny_run)
    vocab = _benchmark_folder(Dataset(source.dataset), tmp_path / "bench")
    target = tmp_path / "target"
    assert main(["transfer", "--from", str(source.root), *TINY_OVERRIDES, f"run_dir={target}",
                 "data.source=benchmark", f"data.path={tmp_path / 'bench'}"]) == 0
    out = RunDir(target).transfer(source.root.name)
    metrics = json.loads((out / "metrics.json").read_text())
    src_metrics = json.loads(source.metrics.read_text())
    assert metrics["threshold"] == src_metrics["threshold"] and metrics["threshold_chosen_on"] == "source val"
    ds = Dataset(RunDir(target).dataset)
    test = ds.samples("test")
    cov = metrics["coverage"]
    # every visit of every test sample (its history included) carried one unseen diagnosis and procedure
    assert cov["diag"]["unseen"] == sum(len(s.visits) for s in test) and cov["diag"]["top_unseen"][0][0] == "DNEW"
    assert cov["target_medications_not_predictable"] == ["MNEW"] and cov["source_medications_dropped"] == []
    assert cov["proc"]["unseen"] == cov["diag"]["unseen"] and cov["proc"]["top_unseen"] == [["PNEW", cov["proc"]["unseen"]]]
    preds = read_predictions(out / "predictions_test.jsonl", ds.vocab.med)
    assert preds.visit_keys == [s.visit_key for s in test]
    new = vocab["med"].index("MNEW")
    assert not preds.y_pred[:, new].any() and not preds.y_prob[:, new].any()
    # the same patients in the same file order: once the unseen codes are left out, the model sees
    # exactly what it saw on its own test split, whatever the target's vocabulary order
    src_vocab = Dataset(source.dataset).vocab.med
    own = read_predictions(source.predictions("test"), src_vocab)
    assert own.visit_keys == preds.visit_keys
    cols = [ds.vocab.med.index(c) for c in src_vocab]
    np.testing.assert_allclose(preds.y_prob[:, cols], own.y_prob, atol=1e-5)
    printed = capsys.readouterr().out
    assert "unseen diag:" in printed and "DNEW" in printed and "target medications the source cannot predict: 1" in printed
