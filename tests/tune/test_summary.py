"""What a finished sweep decides and leaves (trixmed/tune/summary.py), without Ray: its best trial is
the one the evaluate stage's rule ranks first on the same validation split, and best.yaml, the
sweep's own product, is that trial's whole config, ready for `trixmed run`."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import yaml

from trixmed.cli import main
from trixmed.config import EvalConfig, load_config
from trixmed.data.dataset import Dataset
from trixmed.eval.evaluate import evaluate_predictions
from trixmed.eval.metrics import choose_threshold, multilabel_metrics
from trixmed.eval.selection import select_and_score, validation_scores
from trixmed.run_dir import RunDir
from trixmed.testing import make_dataset_dir
from trixmed.tune.space import load_space
from trixmed.tune.summary import best_trial, write_best_config

ROOT = Path(__file__).resolve().parents[2]
K, TOP_N, EXPERTS = "stratify.num_clusters", "model.moe.top_n", "model.moe.num_experts"
VOCAB = {"diag": ["D0"], "proc": ["P0"], "med": ["M0", "M1", "M2", "M3"]}
HI, LO = 0.9, 0.01
# the same validation visits for every trial: four whose truth is the interacting pair M0–M1, two
# and two more whose truth is M2 alone
TRUTH = [["M0", "M1"]] * 4 + [["M2"]] * 4
# Trial A finds every drug, the interacting pair too, and adds M3 to the last two visits at the
# probability of M2 (no threshold parts them); trial B misses M1 and nothing else.
PROBS = {
    "A": [[HI, HI, LO, LO]] * 4 + [[LO, LO, HI, LO]] * 2 + [[LO, LO, HI, HI]] * 2,
    "B": [[HI, LO, LO, LO]] * 4 + [[LO, LO, HI, LO]] * 4,
}
# α chosen on validation against a DDI rate of 0: A must drop M1, B keeps what it has
EVAL = EvalConfig(bootstrap_rounds=2, ddi_alpha=None, ddi_target=0.0)


def test_the_best_trial_is_the_one_evaluate_ranks_first_on_validation(tmp_path):
    ddi = np.zeros((4, 4), dtype=np.uint8)
    ddi[0, 1] = ddi[1, 0] = 1
    visits = [{"patient_id": f"{split}{i}", "visit_order": 0, "split": split, "diag": ["D0"], "proc": [], "med": med}
              for split in ("val", "test") for i, med in enumerate(TRUTH)]
    ds = Dataset(make_dataset_dir(tmp_path / "dataset", visits, VOCAB, ddi))
    val = ds.samples("val")
    truth = ds.multi_hot([s.target for s in val]).astype(bool)
    trials, by_evaluate, by_threshold = [], {}, {}
    for name, rows in PROBS.items():
        probs = np.array(rows)
        # what a trial reports to Tune (trial.score_validation on its model's validation probabilities)
        trials.append({"trial_id": name, "status": "completed", "scores": validation_scores(ds, EVAL, val, probs)})
        # what the evaluate stage makes of the same probabilities: its validation predictions file, scored
        out = tmp_path / name
        out.mkdir()
        select_and_score(ds, EVAL, {"val": (val, probs), "test": (ds.samples("test"), probs)}, out,
                         {"val": "val.jsonl", "test": "test.jsonl"}, "metrics.json", "metrics.md")
        by_evaluate[name] = evaluate_predictions(ds, out / "val.jsonl", "val", EVAL)["metrics"]["jaccard"]["point"]
        # the rule a trial used to score by: the threshold alone
        plain = probs >= choose_threshold(truth, probs)
        by_threshold[name] = float(multilabel_metrics(truth, plain, None, ddi)["jaccard"].mean())
    assert {t["trial_id"]: t["scores"]["jaccard"] for t in trials} == pytest.approx(by_evaluate, abs=1e-12)
    assert best_trial(trials)["trial_id"] == max(by_evaluate, key=by_evaluate.get) == "B"
    assert [t["scores"]["ddi_alpha"] for t in trials] == [1.0, 0.0]
    # the threshold alone would have ranked the trials the other way
    assert max(by_threshold, key=by_threshold.get) == "A" and by_threshold["A"] > by_threshold["B"]


def _best(trial_id: str, params: dict) -> dict:
    return {"trial_id": trial_id, "params": params,
            "scores": {"jaccard": 0.44, "f1": 0.55, "prauc": 0.6, "ddi_rate": 0.07, "avg_drugs": 12.5, "threshold": 0.35,
                       "ddi_alpha": 0.02}}


def test_best_yaml_is_the_best_trials_whole_config_and_runs_as_it_is(tmp_path):
    run_dir = tmp_path / "run"
    exp = RunDir(run_dir).experiment("paper_grid")
    base = load_config(ROOT / "configs" / "demo_cpu.yaml", [f"run_dir={run_dir}"])
    summary = {"experiment": "paper_grid", "best": _best("abc_00001", {K: 4, TOP_N: 2, EXPERTS: 4})}
    assert write_best_config(exp, summary, base, load_space(ROOT / "tune_spaces" / "paper_grid.yaml")) == exp.best_config
    text = exp.best_config.read_text()
    assert text.startswith(f"# Best configuration of the `trixmed tune` experiment paper_grid ({exp.root})\n"
                           f"# trial abc_00001: {K}=4, {TOP_N}=2, {EXPERTS}=4\n"
                           "# validation: Jaccard 0.4400, F1 0.5500, PRAUC 0.6000 at threshold 0.35, DDI safety weight "
                           "α 0.02 (its best epoch's weights)\n"
                           f"# Chosen on validation; `trixmed run --config {exp.best_config}` trains it and evaluates it "
                           "once on test.\n")
    cfg = load_config(exp.best_config)
    assert (cfg.stratify.num_clusters, cfg.model.moe.top_n, cfg.model.moe.num_experts) == (4, 2, 4)
    assert cfg.run_dir == str(run_dir)   # the sweep's run directory: warm-up and features are reused
    assert cfg == load_config(ROOT / "configs" / "demo_cpu.yaml", [f"run_dir={run_dir}", f"{K}=4", f"{TOP_N}=2",
                                                                  f"{EXPERTS}=4"])
    assert yaml.safe_load(text)["model"]["moe"]["top_n"] == 2
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", "--config", str(exp.best_config), "--dry-run"]) == 0
    assert f"plan for {run_dir}\n" in out.getvalue() and "4 experts, top-2" in out.getvalue()


def test_without_a_best_trial_an_earlier_best_yaml_is_removed(tmp_path):
    exp = RunDir(tmp_path / "run").experiment("paper_grid")
    exp.root.mkdir(parents=True)
    exp.best_config.write_text("# an earlier sweep's\n")
    assert write_best_config(exp, {"experiment": "paper_grid", "best": None}, load_config(None),
                             load_space(ROOT / "tune_spaces" / "paper_grid.yaml")) is None
    assert not exp.best_config.exists()
