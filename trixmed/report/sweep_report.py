"""`trixmed report --tune EXP`: a Ray Tune sweep (`trixmed tune`) as one page — headline figures,
validation Jaccard and F1 over the grid (the paper's Figure 3: clusters K × experts per visit),
every trial, the learning curves of the leaders — pointing to the best configuration the sweep
wrote for `trixmed run` (`ExperimentDir.best_config`).

It reads what `trixmed tune` wrote, `summary.json` (docs/report.md gives its fields) and whether
best.yaml is there, so it runs without Ray and in a second. Every score in it is on the validation
split: a sweep selects on validation and never looks at test. Two validation Jaccards appear, and
they differ on purpose:
    best per-epoch     at the phase's fixed `val_threshold`, every epoch: what ASHA ranks trials by,
                       known for a trial stopped early too
    decided sets       the best epoch's weights, its sets decided by the evaluate stage's rule
                       (threshold, then DDI safety weight α, chosen on validation): known for
                       completed trials only, and what the best trial is chosen by (ties: the earlier)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from trixmed.console import Console
from trixmed.errors import TrixmedError
from trixmed.io import read_json
from trixmed.report import figures as figs
from trixmed.report.page import Page, cell
from trixmed.run_dir import ExperimentDir
from trixmed.tune.summary import FORMAT as SUMMARY_FORMAT
from trixmed.tune.summary import STATUSES, best_trial

# the paper's Figure 3 grid: rows clusters K, columns experts per visit
PAPER_AXES = ("stratify.num_clusters", "model.moe.top_n")
AXIS_NAMES = {"stratify.num_clusters": "clusters K", "model.moe.top_n": "experts per visit (top-n)",
              "model.moe.num_experts": "experts"}
CURVES_SHOWN = 5
# what the report cannot do without; the times (started, finished, wall_s, trials_per_min, a trial's
# wall_s) and a trial's error line are shown as "–" when absent
SUMMARY_KEYS = ("experiment", "run_dir", "space", "scheduler", "trials")
SPACE_KEYS = ("name", "path", "grid", "sample", "num_samples")
TRIAL_KEYS = ("trial_id", "status", "params", "epochs_run", "epochs_planned", "best_epoch_val_jaccard", "scores",
              "curve")
SCORE_KEYS = ("jaccard", "f1", "prauc", "threshold", "ddi_alpha")
CURVE_KEYS = ("epoch", "train_loss", "val_jaccard")
_NOT_WRITTEN = "the sweep did not write it (the same `trixmed tune` command writes it)"


def build_sweep_report(exp: ExperimentDir, console: Console | None = None) -> dict[str, Any]:
    """Write the sweep's page (`exp.report_html`, `exp.report_markdown` + `exp.report_figures`);
    return its paths and the sweep's best config (`best_config`: None when the sweep wrote none)."""
    console = console or Console()
    t0 = time.perf_counter()
    summary = read_summary(exp)
    trials = summary["trials"]
    console.line(f"sweep report: {len(trials)} trials of {summary['experiment']} ({exp.summary})")
    best = best_trial(trials)
    best_yaml = exp.best_config if best is not None and exp.best_config.is_file() else None
    render_page(exp, summary, best, best_yaml).write(exp.report_html, exp.report_markdown, exp.report_figures)
    console.line(f"sweep report in {time.perf_counter() - t0:.1f} s: {exp.report_html} (+ {exp.report_markdown.name}, "
                 f"{exp.report_figures.name}/); "
                 + (f"best config: {best_yaml}" if best_yaml else f"no {exp.best_config.name}: "
                    + ("no trial completed" if best is None else _NOT_WRITTEN)))
    return {"html": exp.report_html, "markdown": exp.report_markdown, "figures": exp.report_figures,
            "best_config": best_yaml}


def read_summary(exp: ExperimentDir) -> dict[str, Any]:
    """summary.json, checked for every field the report reads (a `TrixmedError` naming the first gap)."""
    if not exp.root.is_dir():
        raise TrixmedError(exp.root, "not a directory (expected a `trixmed tune` experiment: <run>/tune/<space>)")
    if not exp.summary.is_file():
        raise TrixmedError(exp.root, f"no {exp.summary.name}: not a finished `trixmed tune` experiment "
                                     "(resume it with the same `trixmed tune` command)")
    try:
        raw = read_json(exp.summary)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrixmedError(exp.summary, f"not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != SUMMARY_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise TrixmedError(exp.summary, f"format {found!r}, expected {SUMMARY_FORMAT} (written by another trixmed: "
                                        "`trixmed tune` with --force runs the sweep again)")
    _require(raw, SUMMARY_KEYS, exp, "")
    _require(raw["space"], SPACE_KEYS, exp, "space.")
    _require(raw["scheduler"], ("kind",), exp, "scheduler.")
    if not isinstance(raw["trials"], list):
        raise TrixmedError(exp.summary, "trials: expected a list")
    for i, t in enumerate(raw["trials"]):
        where = f"trials[{i}]."
        _require(t, TRIAL_KEYS, exp, where)
        if t["status"] not in STATUSES:
            raise TrixmedError(exp.summary, f"{where}status: {t['status']!r}, expected one of {', '.join(STATUSES)}")
        if t["status"] == "completed":
            if t["scores"] is None:
                raise TrixmedError(exp.summary, f"{where}scores: null for a completed trial")
            _require(t["scores"], SCORE_KEYS, exp, f"{where}scores.")
        for j, point in enumerate(t["curve"]):
            _require(point, CURVE_KEYS, exp, f"{where}curve[{j}].")
    return raw


def _require(obj: Any, keys: tuple[str, ...], exp: ExperimentDir, where: str) -> None:
    if not isinstance(obj, dict):
        raise TrixmedError(exp.summary, f"{where.rstrip('.') or 'top level'}: expected a mapping")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise TrixmedError(exp.summary, f"{where}{missing[0]}: missing")


def ranked(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first: completed trials by validation Jaccard (tuned threshold and α), then trials stopped
    early by their best per-epoch validation Jaccard, then errors."""
    def key(t: dict[str, Any]) -> tuple[int, float]:
        score = t["scores"]["jaccard"] if t["status"] == "completed" else t["best_epoch_val_jaccard"]
        return STATUSES.index(t["status"]), -(score if score is not None else -math.inf)

    return sorted(trials, key=key)


# ------------------------------------------------------------------------------------------------


def render_page(exp: ExperimentDir, summary: dict[str, Any], best: dict[str, Any] | None, best_yaml: Path | None) -> Page:
    trials = summary["trials"]
    space, sched = summary["space"], summary["scheduler"]
    counts = {status: sum(t["status"] == status for t in trials) for status in STATUSES}
    page = Page("TRIXMED sweep report", subtitle=(
        f"Experiment `{summary['experiment']}` · search space `{space['name']}` ({space['path']}) · "
        f"scheduler {_scheduler_text(sched)}"
        + "".join(f" · {key} {summary[key]}" for key in ("started", "finished") if summary.get(key))))
    page.kpis([
        (str(len(trials)), "trials"),
        (f"{counts['completed']} / {counts['stopped']} / {counts['error']}", "completed / stopped early / error"),
        (_duration(summary.get("wall_s")), "wall time"),
        (cell(summary.get("trials_per_min"), 2), "trials per minute"),
        (f"{best['scores']['jaccard']:.4f}", f"best validation Jaccard ({_params_text(best['params'])})") if best
        else ("–", "best validation Jaccard: no trial completed"),
    ])
    page.note("Every score on this page is on the **validation** split: the sweep selects on validation only and "
              "no trial was evaluated on test. Test metrics come from training the best configuration once with "
              "`trixmed run` (below).")

    grid = _axes(space["grid"])
    if len(grid) >= 2:
        _grid_section(page, summary, grid, best)
    elif len(grid) == 1:
        _axis_section(page, summary, grid[0], best)
    elif space["sample"]:
        _sample_section(page, summary, best)
    _trials_section(page, summary)
    _curves_section(page, trials, sched)
    _best_section(page, exp, summary, best, best_yaml, counts)
    page.note(f"Computed by `trixmed report --tune {exp.root}` from {exp.summary.name} alone; docs/report.md says "
              "how to read each part.")
    return page


def _axes(grid: dict[str, list[Any]]) -> list[str]:
    """The grid's keys, the paper's two (K, top-n) first when it has both: they become rows and columns."""
    keys = list(grid)
    if all(k in grid for k in PAPER_AXES):
        return [*PAPER_AXES, *[k for k in keys if k not in PAPER_AXES]]
    return keys


def _cells(summary: dict[str, Any], keys: list[str], points: list[tuple[Any, ...]]
           ) -> tuple[list[dict[str, Any] | None], list[str], str]:
    """For each grid point (values of `keys`): the trial it shows (None: no trial has them), the text
    of a cell without a score, and the sentences that explain those texts."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for t in summary["trials"]:
        groups.setdefault(tuple(t["params"].get(k) for k in keys), []).append(t)
    shown = [_representative(groups[p]) if p in groups else None for p in points]
    kind = summary["scheduler"]["kind"].upper()
    notes = ["not run" if t is None else "" if t["status"] == "completed" else
             f"{kind}@{t['epochs_run']}" if t["status"] == "stopped" else "error" for t in shown]
    statuses = {t["status"] if t else None for t in shown}
    legend = ""
    if "stopped" in statuses:
        legend += (f" `{kind}@n`: stopped early by the scheduler after n epochs, so never scored at a tuned threshold and α "
                   "(its per-epoch scores are in the trial table).")
    if "error" in statuses:
        legend += " `error`: the trial failed (its error is in the trial table)."
    if None in statuses:
        legend += " `not run`: no trial has these values."
    shared = sum(len(groups[p]) > 1 for p in points if p in groups)
    if shared:
        space = summary["space"]
        others = [k for k in space["grid"] if k not in keys]
        why = [f"the grid axes {', '.join(f'`{k}`' for k in others)}"] if others else []
        why += [f"the sampled {', '.join(f'`{k}`' for k in space['sample'])}"] if space["sample"] else []
        why += [f"{space['num_samples']} samples per grid point"] if space["num_samples"] > 1 else []
        legend += (f" {shared} cell{'s' if shared > 1 else ''} hold several trials"
                   + (f" (differing in {' and '.join(why)})" if why else "")
                   + ": each shows its best one, by validation Jaccard at the tuned threshold and α.")
    return shown, notes, legend


def _representative(group: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial a grid cell shows: its best completed one, else the one stopped latest, else an error."""
    done = best_trial(group)
    if done is not None:
        return done
    stopped = [t for t in group if t["status"] == "stopped"]
    return max(stopped, key=lambda t: t["epochs_run"]) if stopped else group[0]


def _score(t: dict[str, Any] | None, metric: str) -> float:
    return t["scores"][metric] if t is not None and t["status"] == "completed" else np.nan


def _grid_section(page: Page, summary: dict[str, Any], axes: list[str], best: dict[str, Any] | None) -> None:
    rows_key, cols_key = axes[0], axes[1]
    rows, cols = summary["space"]["grid"][rows_key], summary["space"]["grid"][cols_key]
    shown, notes, legend = _cells(summary, [rows_key, cols_key], [(r, c) for r in rows for c in cols])
    shape = (len(rows), len(cols))
    grid_notes = [notes[i * len(cols):(i + 1) * len(cols)] for i in range(len(rows))]
    mark = np.array([best is not None and t is best for t in shown]).reshape(shape)
    page.section("Validation scores over the grid")
    page.paragraph(f"Rows: {_axis_name(rows_key)}; columns: {_axis_name(cols_key)}. A cell is the validation score of "
                   "its trial's best epoch at the threshold and α tuned on validation; outlined: the best trial." + legend)
    for metric, label in (("jaccard", "Jaccard"), ("f1", "F1")):
        matrix = np.array([_score(t, metric) for t in shown], dtype=np.float64).reshape(shape)
        page.figure(f"grid_{metric}", figs.heatmap(
            matrix, title=f"validation {label} (tuned threshold and α)", xlabel=_axis_name(cols_key), ylabel=_axis_name(rows_key),
            xticks=[str(c) for c in cols], yticks=[str(r) for r in rows], fmt="{:.3f}", mark=mark, notes=grid_notes),
            f"Validation {label} over {_axis_name(rows_key)} × {_axis_name(cols_key)}, as the paper's Figure 3 (which "
            "shows test scores; these are validation).")
        page.table([f"{_short(rows_key)} \\ {_short(cols_key)}", *[str(c) for c in cols]],
                   [[str(r), *[matrix[i, j] if np.isfinite(matrix[i, j]) else grid_notes[i][j] for j in range(len(cols))]]
                    for i, r in enumerate(rows)],
                   caption=f"Validation {label} (tuned threshold and α), the figure's numbers.")


def _axis_section(page: Page, summary: dict[str, Any], key: str, best: dict[str, Any] | None) -> None:
    values = summary["space"]["grid"][key]
    shown, notes, legend = _cells(summary, [key], [(v,) for v in values])
    metrics = {"Jaccard": "jaccard", "F1": "f1", "PRAUC": "prauc"}
    page.section(f"Validation scores by {_axis_name(key)}")
    page.paragraph("Each group is the validation score of its trial's best epoch at the threshold and α tuned on validation."
                   + legend)
    page.figure(f"axis_{_short(key)}", figs.grouped_bars(
        {label: [_score(t, m) for t in shown] for label, m in metrics.items()},
        [str(v) for v in values], xlabel=_axis_name(key), title=f"validation scores by {_axis_name(key)}", notes=notes),
        f"Validation Jaccard, F1 and PRAUC for each value of `{key}`"
        + (f"; the best is {key} = {_value(best['params'].get(key))}." if best else "."))
    page.table([_short(key), *metrics], [[str(v), *([_score(t, m) for m in metrics.values()] if not note else [note] * 3)]
                                          for v, t, note in zip(values, shown, notes)])


def _sample_section(page: Page, summary: dict[str, Any], best: dict[str, Any] | None) -> None:
    key, spec = next(iter(summary["space"]["sample"].items()))
    trials = [t for t in summary["trials"] if key in t["params"]]
    page.section(f"Validation Jaccard vs {key}")
    page.figure(f"sample_{_short(key)}", figs.sweep_scatter(
        [t["params"][key] for t in trials],
        [t["scores"]["jaccard"] if t["status"] == "completed" else None for t in trials],
        [t["best_epoch_val_jaccard"] if t["status"] == "stopped" else None for t in trials],
        xlabel=key, log_x=isinstance(spec, dict) and "loguniform" in spec,
        best=next((i for i, t in enumerate(trials) if t is best), None)),
        f"One point per trial against the sampled `{key}` ({_spec_text(spec)}): filled, a completed trial's validation "
        "Jaccard at its tuned threshold and α; hollow, the best per-epoch validation Jaccard (fixed threshold) of a trial "
        "stopped early; the star is the best trial. Trials that failed are not drawn.")


def _trials_section(page: Page, summary: dict[str, Any]) -> None:
    trials = ranked(summary["trials"])
    space = summary["space"]
    # grid and sampled keys first, then those that follow them (e.g. num_experts = K)
    keys = list(dict.fromkeys([*space["grid"], *space["sample"], *[k for t in trials for k in t["params"]]]))
    kind = summary["scheduler"]["kind"].upper()
    page.section("Trials")
    rows = []
    for t in trials:
        s = t["scores"] if t["status"] == "completed" else {}
        rows.append([t["trial_id"], *[_value(t["params"].get(k)) for k in keys],
                     f"stopped ({kind})" if t["status"] == "stopped" else t["status"],
                     f"{t['epochs_run']}/{t['epochs_planned']}", t["best_epoch_val_jaccard"],
                     s.get("jaccard"), s.get("f1"), s.get("prauc"), s.get("threshold"), s.get("ddi_alpha"),
                     cell(t.get("wall_s"), 1),
                     t.get("error") or ""])
    page.table(["trial", *[_short(k) for k in keys], "status", "epochs", "best per-epoch val Jaccard",
                "val Jaccard", "val F1", "val PRAUC", "threshold", "α", "wall s", "error"], rows,
               caption="Best first: completed trials by validation Jaccard at the tuned threshold and α, then trials stopped "
                       "early by their best per-epoch validation Jaccard (fixed threshold, what the scheduler ranks), "
                       "then errors. Parameters: " + ", ".join(f"{_short(k)} = `{k}`" for k in keys) + ".")


def _curves_section(page: Page, trials: list[dict[str, Any]], sched: dict[str, Any]) -> None:
    leaders = sorted((t for t in trials if t["curve"] and t["best_epoch_val_jaccard"] is not None),
                     key=lambda t: -t["best_epoch_val_jaccard"])[:CURVES_SHOWN]
    if not leaders:
        return
    page.section("Learning curves")
    page.figure("learning_curves", figs.trial_curves(
        [(f"{t['trial_id']}: {_params_text(t['params'])}", t["curve"], t["status"] == "stopped") for t in leaders]),
        f"The {len(leaders)} trials with the highest best per-epoch validation Jaccard: validation Jaccard at the fixed "
        f"threshold (left) and mean training loss (right) per epoch. Dashed, ending in a cross: "
        f"stopped early by {sched['kind'].upper()}.")


def _best_section(page: Page, exp: ExperimentDir, summary: dict[str, Any], best: dict[str, Any] | None,
                  best_yaml: Path | None, counts: dict[str, int]) -> None:
    page.section("Best configuration")
    if best is None:
        page.paragraph(f"No trial completed ({counts['stopped']} stopped early, {counts['error']} failed), so no trial "
                       f"was scored at a tuned threshold and α and no `{exp.best_config.name}` was written. The trial table "
                       "shows how far each got and why a trial failed.")
        return
    s = best["scores"]
    page.paragraph(f"Trial `{best['trial_id']}` has the highest validation Jaccard at its tuned threshold and α of the "
                   f"{counts['completed']} completed trials: Jaccard **{s['jaccard']:.4f}**, F1 {s['f1']:.4f}, "
                   f"PRAUC {s['prauc']:.4f}, threshold {s['threshold']:.2f}, DDI safety weight α {s['ddi_alpha']:g}.")
    page.table(["setting", "value"], [[k, _value(v)] for k, v in best["params"].items()],
               caption="The best trial's parameters: the overrides of the sweep's base config.")
    if best_yaml is None:
        page.paragraph(f"No `{exp.best_config.name}`: {_NOT_WRITTEN}.")
        return
    page.paragraph(f"`{best_yaml}` is that configuration in full. `trixmed run --config {best_yaml}` trains it in the "
                   f"sweep's run directory `{summary['run_dir']}` (its dataset, warm-up model and features are reused) "
                   "and evaluates it once on test.")


# ------------------------------------------------------------------------------------------------


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _axis_name(key: str) -> str:
    return f"{AXIS_NAMES.get(key, _short(key))} ({key})"


def _value(v: Any) -> str:
    """A parameter as text: sampled floats to 4 significant digits (1e-4 stays readable)."""
    return f"{v:.4g}" if isinstance(v, float) else cell(v)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{_short(k)}={_value(v)}" for k, v in params.items())


def _spec_text(spec: Any) -> str:
    if isinstance(spec, dict) and len(spec) == 1:
        kind, args = next(iter(spec.items()))
        return f"{kind} {args}"
    return str(spec)


def _scheduler_text(sched: dict[str, Any]) -> str:
    rest = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sched.items() if k != "kind")
    return f"{sched['kind'].upper()}" + (f" ({rest})" if rest else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return cell(None)
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min" if hours else f"{m} min {s} s" if m else f"{s} s"
