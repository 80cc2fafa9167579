"""The last rungs of the accuracy ladder, each measured on VALIDATION only: a seed ensemble
(mean probability of N runs that differ only in `seed`) and per-drug decision thresholds.

    python benchmarks/ladder.py [--config C] [--seeds 42 43 44] [--work-dir DIR] [--smoke] [--out FILE] [overrides ...]

Each seed is a whole `trixmed run` in DIR/seed<s> (a finished run is skipped by its stage hashes,
so a run directory made earlier can be copied there). Then, on validation:

- every single run and the ensemble, decided by trixmed's one decision rule
  (`eval/selection.py`: the threshold, then the DDI-aware α) and scored on validation;
- per-drug thresholds against the one global threshold, thresholding only, in 2 folds over the
  validation patients: fitted on one half (coordinate ascent on mean Jaccard, from the global
  threshold), scored on the other. Fitting and scoring on the same visits would flatter them.

The candidate with the best validation Jaccard is scored once on test (the evaluate stage's
bootstrap). Writes benchmarks/results/ladder.json and ladder.md. `--smoke`: two seeds of the
bundled demo, one epoch a phase, in a temp work directory.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, add_output_args, machine, output_path

from trixmed.io import atomic_file, write_json

CONFIG = "configs/mimic3_codes.yaml"
SMOKE_CONFIG = "configs/demo_cpu.yaml"
SMOKE_OVERRIDES = ("warmup.epochs=1", "experts.epochs=1", "eval.bootstrap_rounds=3")
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


def mean_jaccard(truth: np.ndarray, pred: np.ndarray) -> float:
    inter, union = (truth & pred).sum(1), (truth | pred).sum(1)
    return float(np.where(union > 0, inter / np.maximum(union, 1), 0.0).mean())


def per_drug_thresholds(truth: np.ndarray, probs: np.ndarray, start: float, sweeps: int = 2) -> np.ndarray:
    """Each drug's threshold, one drug at a time over the grid, keeping the others: the mean
    Jaccard over visits is not separable by drug, so every change is scored on the whole set."""
    thr = np.full(probs.shape[1], start)
    pred = probs >= thr
    inter, union = (truth & pred).sum(1).astype(float), (truth | pred).sum(1).astype(float)
    for _ in range(sweeps):
        for j in range(probs.shape[1]):
            t = truth[:, j]
            rest_i, rest_u = inter - (t & pred[:, j]), union - (t | pred[:, j])
            best, best_score = thr[j], -1.0
            for g in THRESHOLD_GRID:
                p = probs[:, j] >= g
                u = rest_u + (t | p)
                score = float(np.where(u > 0, (rest_i + (t & p)) / np.maximum(u, 1), 0.0).mean())
                if score > best_score + 1e-12:   # ties keep the lower threshold
                    best, best_score = g, score
            thr[j] = best
            pred[:, j] = probs[:, j] >= best
            inter, union = rest_i + (t & pred[:, j]), rest_u + (t | pred[:, j])
    return thr


def two_fold(truth: np.ndarray, probs: np.ndarray, patients: np.ndarray, seed: int) -> dict[str, float]:
    """Global against per-drug thresholds, each fitted on one half of the validation patients and
    scored on the other; the mean over both directions."""
    from trixmed.eval.metrics import choose_threshold

    ids = np.unique(patients)
    np.random.default_rng(seed).shuffle(ids)
    half = np.isin(patients, ids[: len(ids) // 2])
    scores = {"global": [], "per_drug": []}
    for fit, score in ((half, ~half), (~half, half)):
        start = choose_threshold(truth[fit], probs[fit], THRESHOLD_GRID)
        scores["global"].append(mean_jaccard(truth[score], probs[score] >= start))
        scores["per_drug"].append(mean_jaccard(truth[score], probs[score] >= per_drug_thresholds(truth[fit], probs[fit], start)))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def run_seed(config: str, overrides: list[str], run_dir: Path, seed: int, log: Path) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "trixmed.cli", "run", "--config", config, f"run_dir={run_dir}", f"seed={seed}", *overrides]
    with open(log, "a") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"benchmarks/ladder.py: seed {seed}: `trixmed run` exited {proc.returncode}; see {log}")
    return time.perf_counter() - t0


def split_probs(ds, run_dir: Path, split: str) -> np.ndarray:
    """[N, M] probabilities a run's evaluate stage wrote for `split`, in the dataset's sample order."""
    from trixmed.eval.predictions import read_predictions
    from trixmed.run_dir import RunDir

    preds = read_predictions(RunDir(run_dir).eval / f"predictions_{split}.jsonl", ds.vocab.med)
    row = {k: i for i, k in enumerate(preds.visit_keys)}
    return preds.y_prob[[row[s.visit_key] for s in ds.samples(split)]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help=f"default {CONFIG}; with --smoke {SMOKE_CONFIG}")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 42 43 44; with --smoke 42 43")
    parser.add_argument("--work-dir", type=Path, help="default <tmp>/trixmed_ladder; with --smoke a fresh temp dir")
    add_output_args(parser, "ladder.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    from trixmed.commands.common import yaml_quote
    from trixmed.config import load_config
    from trixmed.data.dataset import Dataset
    from trixmed.eval.evaluate import evaluate_predictions
    from trixmed.eval.predictions import Predictions
    from trixmed.eval.selection import choose, validation_scores
    from trixmed.paths import shared_data_dir
    from trixmed.run_dir import RunDir

    config = args.config or (SMOKE_CONFIG if args.smoke else CONFIG)
    seeds = args.seeds or ([42, 43] if args.smoke else [42, 43, 44])
    overrides = [*(SMOKE_OVERRIDES if args.smoke else []), *args.overrides]
    if load_config(ROOT / config, overrides).data.source == "benchmark" and not any(o.startswith("data.path=") for o in overrides):
        shared = shared_data_dir()
        if shared is None:
            print("benchmarks/ladder.py: ../shared/data not found (set TRIXMED_SHARED_DATA)", file=sys.stderr)
            return 2
        overrides.append(f"data.path={yaml_quote(shared / 'benchmark' / 'mimic3_safedrug131')}")
    smoke_tmp = Path(tempfile.mkdtemp(prefix="trixmed-bench-ladder-")) if args.smoke and not args.work_dir else None
    work = args.work_dir or smoke_tmp or Path(tempfile.gettempdir()) / "trixmed_ladder"
    work.mkdir(parents=True, exist_ok=True)
    try:
        walls = {s: round(run_seed(config, overrides, work / f"seed{s}", s, work / f"seed{s}.log"), 1) for s in seeds}
        cfg = load_config(ROOT / config, overrides)
        ds = Dataset(RunDir(work / f"seed{seeds[0]}").dataset)
        val, test = ds.samples("val"), ds.samples("test")
        truth = ds.multi_hot([s.target for s in val]).astype(bool)
        patients = np.array([s.patient_id for s in val])
        probs = {s: (split_probs(ds, work / f"seed{s}", "val"), split_probs(ds, work / f"seed{s}", "test")) for s in seeds}
        candidates = {f"seed {s}": p for s, p in probs.items()}
        candidates[f"ensemble of {len(seeds)} seeds"] = tuple(np.mean([p[i] for p in probs.values()], 0) for i in (0, 1))
        rungs = []
        for name, (pv, _) in candidates.items():
            scores = validation_scores(ds, cfg.eval, val, pv)
            rungs.append({"candidate": name, "val": {k: round(float(v), 4) for k, v in scores.items()},
                          "two_fold_val_jaccard": {k: round(v, 4) for k, v in two_fold(truth, pv, patients, cfg.seed).items()}})
        best = max(rungs, key=lambda r: r["val"]["jaccard"])
        pv, pt = candidates[best["candidate"]]
        choices, _ = choose(cfg.eval, truth, pv, patients, ds.ddi)
        tested = evaluate_predictions(ds, Predictions([s.visit_key for s in test], choices.decide(pt, ds.ddi), pt), "test", cfg.eval)
    finally:
        if smoke_tmp is not None:
            shutil.rmtree(smoke_tmp, ignore_errors=True)
    report = {
        "smoke": args.smoke, "machine": machine(), "config": config, "overrides": overrides, "seeds": seeds,
        "run_wall_s": walls, "rungs": rungs, "chosen_on_val": best["candidate"],
        "test": {k: {"mean": round(v["mean"], 4), "std": round(v["std"], 4)} for k, v in tested["metrics"].items()},
    }
    out = output_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    with atomic_file(out.with_suffix(".md")) as fh:
        fh.write(markdown(report))
    print(markdown(report))
    print(f"wrote {out}")
    return 0


def markdown(report: dict) -> str:
    lines = [
        "# Seed ensemble and per-drug thresholds, on validation",
        "",
        f"`python benchmarks/ladder.py` — {report['config']}, seeds {', '.join(map(str, report['seeds']))}; "
        f"{report['machine']['cpus']} CPUs ({report['machine']['cpu']}). Every number but the last line is validation.",
        "",
        "| candidate | val Jaccard (decision rule) | val F1 | 2-fold val Jaccard, global threshold | 2-fold, per-drug thresholds |",
        "|---|---|---|---|---|",
    ]
    for r in report["rungs"]:
        two = r["two_fold_val_jaccard"]
        lines.append(f"| {r['candidate']} | {r['val']['jaccard']:.4f} | {r['val']['f1']:.4f} | {two['global']:.4f} | {two['per_drug']:.4f} |")
    t = report["test"]
    lines += ["", f"Chosen on validation: **{report['chosen_on_val']}**; its test Jaccard {t['jaccard']['mean']:.4f} ± "
                  f"{t['jaccard']['std']:.4f}, F1 {t['f1']['mean']:.4f} ± {t['f1']['std']:.4f} (bootstrap)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
