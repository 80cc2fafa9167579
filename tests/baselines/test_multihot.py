"""The multi-hot baselines: exact features, and `trixmed baseline` on the bundled demo choosing its
epoch, threshold and α on validation only, through the same harness as TRIXMED."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trixmed.baselines.multihot import MultiHotFeatures
from trixmed.data.dataset import Dataset, Sample, Visit
from trixmed.eval.metrics import choose_threshold
from trixmed.eval.predictions import read_predictions
from trixmed.testing import make_vocab

REPO = Path(__file__).resolve().parents[2]


def test_features_are_the_current_codes_and_the_history_unions() -> None:
    vocab = make_vocab()
    nd, np_, nm = len(vocab.diag), len(vocab.proc), len(vocab.med)
    first = Visit((vocab.diag[1],), (vocab.proc[0],), (vocab.med[2],))
    second = Visit((vocab.diag[1], vocab.diag[2]), (), (vocab.med[0], vocab.med[2]))
    current = Visit((vocab.diag[0],), (vocab.proc[1],), (vocab.med[1],))   # its meds are the target: never a feature
    feats = MultiHotFeatures.build([Sample("a:2", "a", "train", (first, second, current)),
                                    Sample("b:0", "b", "train", (current,))], vocab)
    assert feats.width == 2 * nd + 2 * np_ + nm
    med0, diag0, proc0 = nd + np_, nd + np_ + nm, 2 * nd + np_ + nm
    assert feats.columns[0].tolist() == [0, nd + 1, med0 + 0, med0 + 2, diag0 + 1, diag0 + 2, proc0 + 0]
    assert feats.columns[1].tolist() == [0, nd + 1]
    dense = feats.dense(np.array([1, 0]))
    assert dense.shape == (2, feats.width) and dense[1].sum() == 7 and dense[0].sum() == 2


@pytest.mark.timeout(300)
def test_baseline_command_chooses_on_validation(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "trixmed.cli", "baseline", "mlp", "--config", "configs/demo_cpu.yaml",
                           f"run_dir={run_dir}", "baselines.epochs=4", "eval.bootstrap_rounds=3",
                           "eval.ddi_alpha=null", "eval.ddi_alpha_grid=[0,0.2,1.0]"],
                          cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run_dir / "baselines" / "mlp"
    assert sorted(p.name for p in out.iterdir()) == ["baseline.json", "metrics.json", "metrics.md", "model.safetensors",
                                                    "predictions_test.jsonl", "predictions_val.jsonl"]
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "baseline.json").read_text())["history"]
    assert metrics["selected_on"] == "val" and metrics["split"] == "test"
    assert metrics["best_epoch"] == max(history, key=lambda r: r["val_jaccard"])["epoch"]
    # the threshold is validation's choice on the saved validation probabilities
    ds = Dataset(run_dir / "dataset")
    val = read_predictions(out / "predictions_val.jsonl", ds.vocab.med)
    truth = ds.multi_hot([s.target for s in sorted(ds.samples("val"), key=lambda s: val.visit_keys.index(s.visit_key))])
    assert metrics["threshold"] == choose_threshold(truth, val.y_prob)
    # α from the validation curve, within validation's own DDI rate where any α is
    assert metrics["ddi_alpha_chosen_on"] == "val" and metrics["ddi_alpha"] in (0.0, 0.2, 1.0)
    assert [c["alpha"] for c in metrics["safety_curve"]["val"]] == [0.0, 0.2, 1.0]
    within = [c for c in metrics["safety_curve"]["val"] if c["ddi_rate"] <= metrics["ddi_target"]]
    if within:
        assert metrics["ddi_alpha"] == max(within, key=lambda c: (c["jaccard"], -c["alpha"]))["alpha"]
    assert "[baseline mlp] best epoch" in proc.stdout and "Jaccard" in proc.stdout
