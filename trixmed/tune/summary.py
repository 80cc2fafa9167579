"""summary.json and best.yaml: what a finished sweep leaves for people, for `trixmed report --tune`
and for `trixmed run`.

    {"format": 2, "experiment", "experiment_dir", "run_dir", "space": {...}, "scheduler": {...},
     "selected_on": "val", "finished", "wall_s", "trials_per_min",
     "trials": [{"trial_id", "name", "status": completed | stopped | error, "params",
                 "epochs_run", "epochs_planned", "best_epoch_val_jaccard", "scores" | null,
                 "curve": [{"epoch", "train_loss", "val_jaccard"}], "wall_s", "train_s",
                 "timings": {"stratify_s", "experts_s", "scoring_s", "total_s"},
                 "error" | null, "log", "run_dir"}],
     "best": {"trial_id", "params", "scores"} | null}

    scores: {"jaccard", "f1", "prauc", "ddi_rate", "avg_drugs", "threshold", "ddi_alpha"}

Two validation Jaccards, on purpose: `best_epoch_val_jaccard` is the per-epoch score at the phase's
fixed `val_threshold` (what ASHA ranks, known for trials it stopped too); `scores` are the best
epoch's weights with their sets decided by the evaluate stage's rule, threshold then DDI safety
weight α chosen on validation (`trixmed.eval.selection`; completed trials only). The best trial is
the completed one with the highest `scores.jaccard`, the one `evaluate` would rank first on the same
validation split; test is never scored. best.yaml is its whole config (`write_best_config`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from trixmed.config import Config, to_dict
from trixmed.io import atomic_file, read_json
from trixmed.run_dir import ExperimentDir
from trixmed.tune.space import SearchSpace
from trixmed.tune.trial import TIMINGS_FILE, TRIAL_LOG, TRIAL_PREFIX

FORMAT = 2   # 2: scores decided with the validation α too; best.yaml written by the sweep
METRIC = "val_jaccard"   # per-epoch validation Jaccard at the phase's val_threshold: what ASHA ranks
STATUSES = ("completed", "stopped", "error")


def best_trial(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed trial with the highest validation Jaccard of its decided sets (ties: the
    earlier); a trial stopped early has no such score and is never the best."""
    done = [t for t in trials if t["status"] == "completed"]
    return max(done, key=lambda t: t["scores"]["jaccard"], default=None)


def build_summary(cfg: Config, space: SearchSpace, exp: ExperimentDir, results: Any, wall_s: float) -> dict[str, Any]:
    """Every trial of a finished sweep and the best one, chosen on validation scores only."""
    trials = [_trial_entry(space, r, cfg.experts.epochs) for r in results]
    trials.sort(key=lambda t: t["trial_id"])
    best = best_trial(trials)
    t = cfg.tune
    return {
        "format": FORMAT,
        "experiment": exp.name,
        "experiment_dir": str(exp.root),
        "run_dir": cfg.run_dir,
        "space": space.to_dict(),
        "scheduler": {"kind": t.scheduler, "metric": METRIC, "mode": "max", "grace_period": t.grace_period,
                      "reduction_factor": t.reduction_factor, "max_t": cfg.experts.epochs + 1,
                      "max_concurrent_trials": t.max_concurrent_trials},
        "selected_on": "val",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - wall_s)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": round(wall_s, 2),
        "trials_per_min": round(60 * len(trials) / wall_s, 3) if wall_s > 0 else None,
        "trials": trials,
        "best": None if best is None else {k: best[k] for k in ("trial_id", "params", "scores")},
    }


def write_best_config(exp: ExperimentDir, summary: dict[str, Any], base: Config, space: SearchSpace) -> Path | None:
    """best.yaml: the best trial's whole config, `base` (whose run_dir is the sweep's run directory:
    `trixmed run` reuses its dataset, warm-up model and features) with the trial's parameters.
    Without a best trial, an earlier sweep's file is removed rather than left to contradict the
    summary. Returns the path written, or None."""
    best = summary["best"]
    if best is None:
        exp.best_config.unlink(missing_ok=True)
        return None
    s = best["scores"]
    header = [
        f"Best configuration of the `trixmed tune` experiment {summary['experiment']} ({exp.root})",
        f"trial {best['trial_id']}: "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()),
        f"validation: Jaccard {s['jaccard']:.4f}, F1 {s['f1']:.4f}, PRAUC {s['prauc']:.4f} at threshold "
        f"{s['threshold']:.2f}, DDI safety weight α {s['ddi_alpha']:g} (its best epoch's weights)",
        f"Chosen on validation; `trixmed run --config {exp.best_config}` trains it and evaluates it once on test.",
        "run_dir is the sweep's run directory: its dataset, warm-up model and features are reused.",
    ]
    with atomic_file(exp.best_config) as fh:
        fh.write("".join(f"# {line}\n" for line in header))
        yaml.safe_dump(to_dict(space.apply(base, best["params"])), fh, sort_keys=False, allow_unicode=True)
    return exp.best_config


def _trial_entry(space: SearchSpace, result: Any, epochs: int) -> dict[str, Any]:
    path = Path(result.path)
    run = ExperimentDir.trial_run(path)
    last = result.metrics or {}
    df = result.metrics_dataframe
    rows = [] if df is None else [r for r in df.to_dict("records") if _present(r.get("train_loss"))]
    curve = [{"epoch": int(r["epoch"]), "train_loss": r["train_loss"], "val_jaccard": r.get("val_jaccard")}
             for r in rows]
    scores = last.get("scores") if result.error is None else None
    status = "error" if result.error is not None else "completed" if scores else "stopped"
    jaccards = [r["val_jaccard"] for r in rows if _present(r.get("val_jaccard"))]
    return {
        "trial_id": path.name.removeprefix(TRIAL_PREFIX),
        "name": path.name,
        "status": status,
        "params": space.complete(result.config),
        "epochs_run": len(rows),
        "epochs_planned": epochs,
        "best_epoch_val_jaccard": max(jaccards) if jaccards else None,
        "scores": scores,
        "curve": curve,
        # Tune's clock runs from the trial's first line of code to its last report
        "wall_s": round(float(last.get("time_total_s", 0.0)), 2),
        "train_s": round(sum(r.get("train_s", 0.0) + r.get("val_s", 0.0) for r in rows), 3),
        # the trial's own clock: stratify (or waiting for the shared one), experts stage, scoring
        "timings": read_json(run.root / TIMINGS_FILE) if (run.root / TIMINGS_FILE).is_file() else {},
        "error": _error_line(result.error) if result.error is not None else None,
        "log": str(run.logs / TRIAL_LOG),
        "run_dir": str(run.root),
    }


def _present(value: Any) -> bool:
    return value is not None and value == value   # not None, not NaN


def _error_line(error: BaseException) -> str:
    """The last line of a trial's error (Ray wraps it in its traceback): the exception itself."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
