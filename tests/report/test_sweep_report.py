"""`trixmed report --tune EXP` on synthetic summary.json files (no Ray): the page's numbers come from
the summary, the best trial is the completed one with the highest validation Jaccard of its decided
sets, the page points to the best.yaml the sweep wrote and never writes one, bad input is one line,
and the HTML renders in headless Chromium."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import check_page

from trixmed.cli import main
from trixmed.config import load_config
from trixmed.console import Console
from trixmed.report import sweep_report
from trixmed.report.sweep_report import build_sweep_report
from trixmed.run_dir import ExperimentDir, RunDir
from trixmed.tune.space import SearchSpace
from trixmed.tune.summary import FORMAT, write_best_config

K, TOP_N, EXPERTS, LR = "stratify.num_clusters", "model.moe.top_n", "model.moe.num_experts", "experts.lr"


def _trial(i: int, params: dict[str, Any], status: str = "completed", *, jaccard: float = 0.0, f1: float = 0.0,
           best_epoch: float | None = None, epochs_run: int = 4, epochs_planned: int = 4) -> dict[str, Any]:
    curve = [{"epoch": e, "train_loss": 0.5 / e, "val_jaccard": (best_epoch or 0.0) * e / max(epochs_run, 1)}
             for e in range(1, epochs_run + 1)]
    return {
        "trial_id": f"abc_{i:05d}", "name": f"trial_abc_{i:05d}", "status": status, "params": params,
        "epochs_run": epochs_run, "epochs_planned": epochs_planned,
        "best_epoch_val_jaccard": best_epoch,
        "scores": {"jaccard": jaccard, "f1": f1, "prauc": 0.6, "ddi_rate": 0.07, "avg_drugs": 12.5, "threshold": 0.35,
                   "ddi_alpha": 0.02}
        if status == "completed" else None,
        "curve": curve, "wall_s": 30.0 + i, "train_s": 12.0,
        "error": "RuntimeError: worker died" if status == "error" else None,
        "run_dir": f"/abs/trial_{i}/run",
    }


def _summary(root: Path, name: str, trials: list[dict[str, Any]], *, grid: dict[str, list[Any]],
             sample: dict[str, Any] | None = None, num_samples: int = 1) -> ExperimentDir:
    """A `trixmed tune` summary.json under <root>/run/tune/<name>, its best trial and best.yaml as
    `trixmed tune` writes them."""
    run_dir = root / "run"
    exp = RunDir(run_dir).experiment(name)
    exp.root.mkdir(parents=True)
    done = [t for t in trials if t["status"] == "completed"]
    best = max(done, key=lambda t: t["scores"]["jaccard"]) if done else None
    space = SearchSpace(name=name, path=f"tune_spaces/{name}.yaml", grid=grid, follow={EXPERTS: K} if K in grid else {},
                        sample=sample or {}, num_samples=num_samples)
    summary = {
        "format": FORMAT, "experiment": name, "experiment_dir": str(exp.root), "run_dir": str(run_dir),
        "space": space.to_dict(),
        "scheduler": {"kind": "asha", "metric": "val_jaccard", "mode": "max", "grace_period": 1, "reduction_factor": 2,
                      "max_t": 4},
        "selected_on": "val", "started": "2026-11-22T07:00:00+0000", "finished": "2026-11-22T07:02:03+0000",
        "wall_s": 123.4, "trials_per_min": 1.95, "trials": trials,
        "best": None if best is None else {k: best[k] for k in ("trial_id", "params", "scores")},
    }
    exp.summary.write_text(json.dumps(summary, indent=1))
    write_best_config(exp, summary, load_config(None, [f"run_dir={run_dir}"]), space)
    return exp


def _demo_2x2(root: Path) -> ExperimentDir:
    """Four cells: two completed, one stopped by ASHA after 2 epochs, one error. The trial with the
    highest per-epoch validation Jaccard (stopped) and the one with the highest F1 are not the best."""
    return _summary(root, "demo_2x2", [
        _trial(0, {K: 2, TOP_N: 1, EXPERTS: 2}, jaccard=0.41, f1=0.61, best_epoch=0.45),
        _trial(1, {K: 2, TOP_N: 2, EXPERTS: 2}, jaccard=0.44, f1=0.55, best_epoch=0.40),
        _trial(2, {K: 3, TOP_N: 1, EXPERTS: 3}, "stopped", best_epoch=0.50, epochs_run=2),
        _trial(3, {K: 3, TOP_N: 2, EXPERTS: 3}, "error", epochs_run=0),
    ], grid={K: [2, 3], TOP_N: [1, 2]})


@pytest.fixture
def demo(tmp_path: Path) -> tuple[ExperimentDir, dict[str, Any], str]:
    exp = _demo_2x2(tmp_path)
    out = io.StringIO()
    written = build_sweep_report(exp, Console(stream=out))
    return exp, written, out.getvalue()


def _md_row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def test_files_console_lines_and_the_grid_tables(demo):
    exp, written, printed = demo
    assert written == {"html": exp.report_html, "markdown": exp.report_markdown, "figures": exp.report_figures,
                       "best_config": exp.best_config}
    lines = printed.splitlines()
    assert lines[0] == f"sweep report: 4 trials of demo_2x2 ({exp.summary})"
    assert len(lines) == 2 and str(exp.report_html) in lines[1] and f"best config: {exp.best_config}" in lines[1]
    md = exp.report_markdown.read_text()
    for name in re.findall(r"\]\(figures/([\w-]+\.png)\)", md):
        assert (exp.report_figures / name).read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in exp.report_figures.glob("*.png")) == ["grid_f1.png", "grid_jaccard.png",
                                                                          "learning_curves.png"]
    summary = json.loads(exp.summary.read_text())
    t = {(x["params"][K], x["params"][TOP_N]): x for x in summary["trials"]}
    # rows K, columns top-n; the stopped cell says ASHA@<epochs run>, the failed one error
    assert _md_row("num_clusters \\ top_n", "1", "2") in md
    assert _md_row("2", f"{t[2, 1]['scores']['jaccard']:.3f}", f"{t[2, 2]['scores']['jaccard']:.3f}") in md
    assert _md_row("2", f"{t[2, 1]['scores']['f1']:.3f}", f"{t[2, 2]['scores']['f1']:.3f}") in md
    assert _md_row("3", f"ASHA@{t[3, 1]['epochs_run']}", "error") in md
    assert "- **4** trials" in md and "- **2 / 1 / 1** completed / stopped early / error" in md
    assert "- **2 min 3 s** wall time" in md and "- **1.95** trials per minute" in md
    assert "**validation** split" in md and "no trial was evaluated on test" in md
    assert "RuntimeError: worker died" in md


def test_the_best_is_the_highest_tuned_validation_jaccard_of_a_completed_trial(demo):
    exp, _, _ = demo
    trials = json.loads(exp.summary.read_text())["trials"]
    best = max((t for t in trials if t["status"] == "completed"), key=lambda t: t["scores"]["jaccard"])
    assert best["trial_id"] == "abc_00001"   # not the stopped one (best epoch 0.50), not the top F1
    assert sweep_report.best_trial(trials) is best
    md = exp.report_markdown.read_text()
    assert f"- **{best['scores']['jaccard']:.4f}** best validation Jaccard (num_clusters=2, top_n=2, num_experts=2)" in md
    assert f"Trial `{best['trial_id']}` has the highest validation Jaccard" in md
    # the trial table: best first, then the other completed one, the stopped one, the error
    assert re.findall(r"^\| (abc_\d+) \|", md, flags=re.M) == ["abc_00001", "abc_00000", "abc_00002", "abc_00003"]


def test_the_page_points_to_the_sweeps_best_yaml_and_never_writes_one(tmp_path):
    exp = _demo_2x2(tmp_path)
    written = exp.best_config.read_text()
    build_sweep_report(exp, Console(stream=io.StringIO()))
    assert exp.best_config.read_text() == written
    md = exp.report_markdown.read_text()
    assert f"`{exp.best_config}` is that configuration in full. `trixmed run --config {exp.best_config}` trains it" in md
    exp.best_config.unlink()
    out = io.StringIO()
    assert build_sweep_report(exp, Console(stream=out))["best_config"] is None and not exp.best_config.exists()
    assert "no best.yaml: the sweep did not write it (the same `trixmed tune` command writes it)" in out.getvalue()
    assert "No `best.yaml`: the sweep did not write it (the same `trixmed tune` command writes it)." in \
        exp.report_markdown.read_text()


def test_paper_grid_shows_the_best_trial_of_each_cell(tmp_path, monkeypatch):
    """K ∈ {2,4,6,8} × top-n ∈ {1,2,3}, two sampled learning rates per point: each cell shows its best
    completed trial; a cell with stopped trials only says how far the furthest got; one cell not run."""
    rng = np.random.default_rng(0)
    trials, i = [], 0
    for k in (2, 4, 6, 8):
        for n in (1, 2, 3):
            if (k, n) == (8, 3):
                continue
            for _ in range(2):
                params = {K: k, TOP_N: n, EXPERTS: k, LR: float(10 ** rng.uniform(-4, -2))}
                if (k, n) == (6, 1):
                    trials.append(_trial(i, params, "stopped", best_epoch=float(rng.uniform(0.2, 0.3)), epochs_run=1 + i % 2))
                else:
                    trials.append(_trial(i, params, jaccard=float(rng.uniform(0.3, 0.5)), f1=float(rng.uniform(0.4, 0.6)),
                                         best_epoch=float(rng.uniform(0.3, 0.5))))
                i += 1
    exp = _summary(tmp_path, "paper_k_topn", trials, grid={K: [2, 4, 6, 8], TOP_N: [1, 2, 3]},
                   sample={LR: {"loguniform": [1e-4, 1e-2]}}, num_samples=2)
    shown_curves = []
    real = sweep_report.figs.trial_curves
    monkeypatch.setattr(sweep_report.figs, "trial_curves", lambda curves: shown_curves.extend(curves) or real(curves))
    build_sweep_report(exp, Console(stream=io.StringIO()))
    md = exp.report_markdown.read_text()

    def cell_text(k: int, n: int, metric: str) -> str:
        group = [t for t in trials if (t["params"][K], t["params"][TOP_N]) == (k, n)]
        done = [t for t in group if t["status"] == "completed"]
        if done:
            return f"{max(done, key=lambda t: t['scores']['jaccard'])['scores'][metric]:.3f}"
        return f"ASHA@{max(t['epochs_run'] for t in group)}" if group else "not run"

    for metric in ("jaccard", "f1"):
        for k in (2, 4, 6, 8):
            assert _md_row(str(k), *[cell_text(k, n, metric) for n in (1, 2, 3)]) in md
    assert _md_row("6", "ASHA@2", cell_text(6, 2, "jaccard"), cell_text(6, 3, "jaccard")) in md
    assert "11 cells hold several trials (differing in the sampled `experts.lr` and 2 samples per grid point)" in md
    best = sweep_report.best_trial(trials)
    assert load_config(exp.best_config).experts.lr == best["params"][LR]
    top5 = sorted(trials, key=lambda t: -t["best_epoch_val_jaccard"])[:5]
    assert [label.split(":")[0] for label, _, _ in shown_curves] == [t["trial_id"] for t in top5]
    assert "| lr |" in md and f"{best['params'][LR]:.4g}" in md


def test_one_grid_axis_draws_bars(tmp_path):
    trials = [_trial(0, {TOP_N: 1}, jaccard=0.3, f1=0.4), _trial(1, {TOP_N: 2}, "stopped", best_epoch=0.2, epochs_run=1)]
    exp = _summary(tmp_path, "top_n", trials, grid={TOP_N: [1, 2]})
    build_sweep_report(exp, Console(stream=io.StringIO()))
    md = exp.report_markdown.read_text()
    assert "## Validation scores by experts per visit (top-n) (model.moe.top_n)" in md
    assert _md_row("1", "0.300", "0.400", "0.600") in md and _md_row("2", "ASHA@1", "ASHA@1", "ASHA@1") in md
    assert (exp.report_figures / "axis_top_n.png").is_file()


def test_times_and_error_lines_may_be_absent(tmp_path):
    """Only what the report cannot do without is required; a missing time shows as a dash, and an
    epoch without a validation score is a gap in its curve."""
    trials = [_trial(0, {TOP_N: 1}, jaccard=0.3, f1=0.4, best_epoch=0.3)]
    trials[0]["curve"][1]["val_jaccard"] = None
    del trials[0]["wall_s"], trials[0]["error"]
    exp = _summary(tmp_path, "sparse", trials, grid={TOP_N: [1]})
    summary = json.loads(exp.summary.read_text())
    del summary["started"], summary["wall_s"]
    summary["trials_per_min"] = None
    exp.summary.write_text(json.dumps(summary))
    build_sweep_report(exp, Console(stream=io.StringIO()))
    md = exp.report_markdown.read_text()
    assert "- **–** wall time" in md and "- **–** trials per minute" in md
    assert "· finished 2026-11-22T07:02:03+0000" in md and "started" not in md
    assert (exp.report_figures / "learning_curves.png").is_file()


def test_pure_sampling_draws_a_scatter_and_picks_the_best_jaccard(tmp_path):
    rng = np.random.default_rng(1)
    trials = [_trial(i, {LR: float(10 ** rng.uniform(-4, -2))}, jaccard=float(rng.uniform(0.3, 0.5)), f1=0.5,
                     best_epoch=0.3) for i in range(5)]
    trials.append(_trial(5, {LR: 1e-3}, "stopped", best_epoch=0.9, epochs_run=1))
    exp = _summary(tmp_path, "lr_only", trials, grid={}, sample={LR: {"loguniform": [1e-4, 1e-2]}}, num_samples=6)
    build_sweep_report(exp, Console(stream=io.StringIO()))
    md = exp.report_markdown.read_text()
    assert "## Validation Jaccard vs experts.lr" in md and "(loguniform [0.0001, 0.01])" in md
    assert (exp.report_figures / "sample_lr.png").is_file()
    best = max(trials[:5], key=lambda t: t["scores"]["jaccard"])
    assert load_config(exp.best_config).experts.lr == best["params"][LR]
    assert re.findall(r"^\| (abc_\d+) \|", md, flags=re.M)[0] == best["trial_id"]


def test_no_completed_trial_no_best_yaml_and_the_page_says_why(tmp_path):
    exp = _summary(tmp_path, "all_stopped", [
        _trial(0, {K: 2, TOP_N: 1, EXPERTS: 2}, "stopped", best_epoch=0.3, epochs_run=1),
        _trial(1, {K: 2, TOP_N: 2, EXPERTS: 2}, "error", epochs_run=0),
    ], grid={K: [2], TOP_N: [1, 2]})
    out = io.StringIO()
    written = build_sweep_report(exp, Console(stream=out))
    assert written["best_config"] is None and not exp.best_config.exists()
    assert "no best.yaml: no trial completed" in out.getvalue()
    md = exp.report_markdown.read_text()
    assert "No trial completed (1 stopped early, 1 failed)" in md and "no `best.yaml` was written" in md
    assert "- **–** best validation Jaccard: no trial completed" in md
    assert _md_row("2", "ASHA@1", "error") in md


def _cli_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err.rstrip("\n")


def test_bad_input_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli_error(["report", "--tune", str(empty)], capsys) == (
        f"trixmed report: error: {empty}: no summary.json: not a finished `trixmed tune` experiment "
        "(resume it with the same `trixmed tune` command)")
    assert _cli_error(["report", "--tune", str(tmp_path / "nope")], capsys) == (
        f"trixmed report: error: {tmp_path / 'nope'}: not a directory "
        "(expected a `trixmed tune` experiment: <run>/tune/<space>)")
    exp = ExperimentDir(empty)
    exp.summary.write_text('{"format": 1, "trials": [')
    assert _cli_error(["report", "--tune", str(empty)], capsys) == (
        f"trixmed report: error: {exp.summary}: not valid JSON (Expecting value: line 1 column 26 (char 25))")
    exp.summary.write_text('{"format": 1}')   # before α was part of the scores and the sweep wrote best.yaml
    assert _cli_error(["report", "--tune", str(empty)], capsys) == (
        f"trixmed report: error: {exp.summary}: format 1, expected 2 (written by another trixmed: `trixmed tune` with "
        "--force runs the sweep again)")
    good = _demo_2x2(tmp_path)
    summary = json.loads(good.summary.read_text())
    del summary["trials"][1]["status"]
    good.summary.write_text(json.dumps(summary))
    assert _cli_error(["report", "--tune", str(good.root)], capsys) == (
        f"trixmed report: error: {good.summary}: trials[1].status: missing")
    assert _cli_error(["report", "--tune", str(good.root), "--run", str(tmp_path), "--sample", "5"], capsys) == (
        "trixmed report: error: --tune: reports a sweep from its summary alone; --run/--run-dir, --sample choose a run "
        "to report (use one or the other)")


def test_cli_writes_the_report_and_help_shows_both_modes(tmp_path, capsys):
    exp = _demo_2x2(tmp_path)
    assert main(["report", "--tune", str(exp.root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("sweep report: 4 trials") and str(exp.report_html) in out[1]
    assert exp.report_html.is_file() and exp.best_config.is_file()
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--run DIR" in text and "--tune EXPERIMENT_DIR" in text and "--sample N" in text


def test_sweep_page_renders_in_chromium_without_errors_and_not_blank(demo, tmp_path):
    exp, _, _ = demo
    assert len(list(exp.report_figures.glob("*.png"))) == 3
    check_page(exp.report_html, tmp_path / "sweep.png", figures=3)
