"""`trixmed report` (and one `trixmed explain`) on a trained run: wall time and cluster coherence.

    python benchmarks/report.py [--run-dir DIR]    # default: the MIMIC-III run benchmarks/pipeline.py leaves
    python benchmarks/report.py --smoke [--out FILE]   # trains a tiny run in a temp dir first

Writes benchmarks/results/report.json: the wall time of `trixmed report --run DIR` as a user runs
it (a fresh process: imports, data loading, t-SNE, figures, files; target ≤ 2 min on 2 cores),
the report's own per-step timings, the wall time of `trixmed explain` for the run's first test
patient, and the coherence metrics next to the paper's (within vs between-cluster diagnosis
similarity 0.41 vs 0.025, 16.4×; Appendix A.4).

The default run directory is <tmp>/trixmed_bench_pipeline, the full MIMIC-III run that
`python benchmarks/pipeline.py` trains (it holds credentialed-derived data, so it stays outside
the checkout). `--smoke` trains the tiny synthetic dataset of trixmed/testing.py through the real
pipeline (Ray Train + DeepSpeed, 2 workers, 2 epochs a phase) and writes to a temp dir unless --out.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT as REPO
from _common import add_output_args, machine, write_report

TARGET_WALL_S = 120.0


def tiny_run(root: Path) -> None:
    """The tiny synthetic dataset through every training stage (real Ray + DeepSpeed)."""
    from trixmed.config import load_config
    from trixmed.pipeline.stages import run_pipeline
    from trixmed.testing import TINY_OVERRIDES, make_tiny_dataset
    from trixmed.train.ray_session import ray_session

    make_tiny_dataset(root)
    cfg = load_config(None, [*TINY_OVERRIDES, f"run_dir={root}"])
    with ray_session(cfg):
        run_pipeline(cfg, stages=["warmup", "extract", "stratify", "experts", "evaluate"])


def timed_cli(*args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "trixmed.cli", *args], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"trixmed {args[0]} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return wall, proc.stdout


def first_test_patient(run_dir: Path, out: Path) -> None:
    """The first test sample's visits as a patient file (a temp file: MIMIC codes stay off the checkout)."""
    from trixmed.data.dataset import Dataset
    from trixmed.io import write_json
    from trixmed.run_dir import RunDir

    sample = Dataset(RunDir(run_dir).dataset).samples("test")[0]
    write_json(out, {"visits": [{"diag": list(v.diag), "proc": list(v.proc), "med": list(v.med)} for v in sample.visits]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", help="a trained run (default: <tmp>/trixmed_bench_pipeline; with --smoke a fresh tiny run)")
    add_output_args(parser, "report.json")
    args = parser.parse_args(argv)

    from trixmed.io import read_json
    from trixmed.report.run_report import PAPER_COHERENCE
    from trixmed.run_dir import RunDir

    smoke_tmp = Path(tempfile.mkdtemp(prefix="trixmed-bench-report-")) if args.smoke and not args.run_dir else None
    run_dir = Path(args.run_dir) if args.run_dir else smoke_tmp / "run" if smoke_tmp else Path(tempfile.gettempdir()) / "trixmed_bench_pipeline"
    try:
        train_s = None
        if smoke_tmp is not None:
            t0 = time.perf_counter()
            tiny_run(run_dir)
            train_s = time.perf_counter() - t0
        rd = RunDir(run_dir)
        if not rd.metrics.is_file():
            print(f"benchmarks/report.py: {rd.metrics} not found: train the run first (`python benchmarks/pipeline.py`)",
                  file=sys.stderr)
            return 2
        report_s, _ = timed_cli("report", "--run", str(run_dir))
        patient = Path(tempfile.mkdtemp(prefix="trixmed-bench-patient-")) / "patient.json"
        try:
            first_test_patient(run_dir, patient)
            explain_s, _ = timed_cli("explain", "--run", str(run_dir), "--patient", str(patient), "--format", "json")
        finally:
            shutil.rmtree(patient.parent, ignore_errors=True)
        data = read_json(rd.report_data)
        coherence = read_json(rd.coherence)["coherence"]
    finally:
        if smoke_tmp is not None:
            shutil.rmtree(smoke_tmp, ignore_errors=True)

    dj = coherence["diagnosis_jaccard"]
    result = {
        "smoke": args.smoke,
        "run_dir": str(run_dir) if smoke_tmp is None else "<tiny synthetic run, temp dir>",
        "dataset": data["dataset"],
        "model": data["model"],
        "machine": machine(),
        "report_wall_s": round(report_s, 1),
        "target_wall_s": TARGET_WALL_S,
        "within_target": report_s <= TARGET_WALL_S,
        "report_timings_s": data["timings"],
        "explain_wall_s": round(explain_s, 1),
        "tiny_run_train_s": round(train_s, 1) if train_s is not None else None,
        "coherence": {
            "within": dj["within"], "between": dj["between"], "ratio": dj["ratio"],
            "within_pairs": dj["within_pairs"], "between_pairs": dj["between_pairs"], "ratio_pairs": dj["ratio_pairs"],
            "per_cluster_within": dj["per_cluster_within"],
            "training_visits": dj["visits"], "visits_sampled": dj["visits_sampled"], "pairs": dj["pairs"],
            "silhouette": coherence["silhouette"]["value"],
            "routing_sharpness_mean": coherence.get("routing_sharpness", {}).get("mean"),
        },
        "paper": {**PAPER_COHERENCE, "source": "TRIXMED paper, Appendix A.4 (Figure 6, right)"},
        "map": data["map"],
    }
    write_report(args, result, {k: result[k] for k in ("report_wall_s", "within_target", "explain_wall_s", "coherence", "paper")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
