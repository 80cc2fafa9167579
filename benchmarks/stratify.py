"""Distributed PCA → z-score → K-means against scikit-learn, and a fit streamed from Parquet shards;
writes benchmarks/results/stratify.{json,md}.

    python benchmarks/stratify.py [--out benchmarks/results/stratify.json]
    python benchmarks/stratify.py --smoke [--out FILE]   # tiny sizes, seconds, to a temp dir

(a) in memory: N = 1,000,000 rows × 64 float32 features (Gaussian blobs) in 4 Parquet shards,
    K = 8, PCA to 64 components (a full rotation: the step runs and is timed), one k-means++
    initialisation used by both sides, a fixed number of Lloyd iterations (tol = 0).
    Distributed: `ShardPool` with 2 workers × 1 CPU on a 2-CPU Ray. scikit-learn: `KMeans(init=<the
    same centroids>, n_init=1)` on the same z-scored rows, 2 threads (threadpoolctl), after Ray is shut
    down. Seconds per Lloyd iteration: the driver's wall time per iteration (distributed); for
    scikit-learn (fit of `iters` − fit of 2 iterations) / (iters − 2) (so neither side counts its
    setup). Each side's Lloyd runs 3 times, the fastest counts (this machine's cores are shared).
    Target: distributed ÷ scikit-learn ≤ 1.2 per iteration.
(b) streamed: N = 10,000,000 × 64 in 20 Parquet shards (row groups of 65,536 rows) in a temp dir
    outside the checkout, deleted afterwards; a 64 MiB memory budget makes both workers re-read
    their files on every pass. Target: peak memory ≤ 2 GiB.

(c) extraction: `extract` (Ray Data, an actor pool of 2 actors × 1 CPU holding the warm-up model,
    4 equal shards of at most 4,096 samples) against a plain single-process loop (`infer`, torch on
    both cores) over the same model and the same 15,032 samples of mimic3_safedrug131, wall time of
    each end to end (model loading and, for Ray Data, its first execution and the actors' start-up
    included; Ray itself already running, as in a pipeline whose training phases share it), 3 runs
    each, alternating, medians; on the run directory that `python benchmarks/pipeline.py` leaves
    (`--extract-run-dir`, trained with configs/mimic3_codes.yaml); skipped with a note when it is
    absent. Ratio = plain seconds ÷ Ray Data seconds (throughput ratio; target ≥ 0.8). `--smoke`
    builds a tiny run instead (one run each).

Peak memory is the RSS summed over this process and its children (Ray's own processes and the
workers), sampled every 0.2 s (`PeakRSS` from benchmarks/pipeline.py). The shards are written by a
child process and (b) runs before (a), so the measured driver holds no left-over data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import ROOT, add_output_args, machine, significant, write_report  # also puts the checkout on sys.path
from pipeline import PeakRSS

import numpy as np

FULL = {"in_memory": dict(rows=1_000_000, dim=64, shards=4, clusters=8, iters=20, runs=3),
        "streamed": dict(rows=10_000_000, dim=64, shards=20, clusters=8, iters=10, budget=64 * 2**20)}
SMOKE = {"in_memory": dict(rows=20_000, dim=16, shards=2, clusters=4, iters=5, runs=3),
         "streamed": dict(rows=60_000, dim=16, shards=3, clusters=4, iters=3, budget=2**20)}
ROW_GROUP = 65_536
EXTRACT_RUNS = 3
# the untrained tiny warm-up model `--smoke` extracts with
SMOKE_MODEL = ["model.codes.d_model=32", "model.codes.n_heads=2", "model.codes.n_layers=1", "model.codes.title_words=false",
               "model.lora.rank=4"]
SEED = 0
TARGET_RATIO, TARGET_PEAK_GIB = 1.2, 2.0
GIB = 2**30


def write_shards(directory: Path, rows: int, dim: int, shards: int, clusters: int) -> list[Path]:
    """Gaussian blobs as Parquet feature shards (all rows `train`), one shard in memory at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True)
    centres = np.random.default_rng(SEED).normal(0, 0.2, size=(clusters, dim))   # overlapping: Lloyd runs all its iterations
    paths, start = [], 0
    for s, n in enumerate(np.diff(np.linspace(0, rows, shards + 1).astype(np.int64))):
        rng = np.random.default_rng([SEED, s + 1])
        x = (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)
        table = pa.table({
            "visit_key": pa.array([f"v{i}" for i in range(start, start + n)]),
            "split": pa.array(["train"] * n),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim),
        })
        paths.append(directory / f"part-{s:03d}.parquet")
        pq.write_table(table, paths[-1], row_group_size=ROW_GROUP, compression="none")
        start += n
    return paths


def write_shards_in_child(directory: Path, case: dict) -> list[Path]:
    """`write_shards` in a child process, so this process (whose memory is measured) never holds the data."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(write_shards, directory, *(case[k] for k in ("rows", "dim", "shards", "clusters"))).result()


def distributed_fit(paths: list[Path], case: dict, *, budget: int | None, labels: bool) -> dict:
    """The distributed fit step by step on 2 workers × 1 CPU, each step timed, with its peak memory."""
    from trixmed.cluster.distributed import ShardPool

    times, out = {}, {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        times[name] = round(now - t, 3)
        t = now

    with PeakRSS() as mem, ShardPool(paths, num_workers=2, cpus_per_worker=1, memory_budget_bytes=budget) as pool:
        lap("load_s")
        out["transform"] = pool.fit_projection(case["dim"])
        lap("pca_s")
        out["init"] = pool.init_centroids(case["clusters"], "k-means++", np.random.default_rng([SEED, 0]))
        lap("init_s")
        result = pool.lloyd(out["init"], case["iters"], tol=0.0)
        lap("lloyd_and_final_pass_s")
        # the same Lloyd run again: its fastest repetition is the per-iteration time
        per_iter = min([result.iteration_seconds] + [pool.lloyd(out["init"], case["iters"], tol=0.0).iteration_seconds
                                                     for _ in range(case.get("runs", 1) - 1)], key=np.mean)
        if labels:
            out["labels"] = pool.labels(result.centroids)
        streaming = pool.streaming
    out["report"] = {
        "workers": "2 × 1 CPU", "streaming_workers": sum(streaming), "total_s": round(sum(times.values()), 3), **times, "iterations": result.n_iter, "s_per_iteration": significant(float(np.mean(per_iter))),
        "s_per_iteration_min": significant(float(np.min(per_iter))), "inertia": result.inertia,
        "peak_rss_gib": round(mem.peak / GIB, 3),
    }
    return out


def sklearn_fit(paths: list[Path], case: dict, dist: dict) -> dict:
    """scikit-learn on the same rows, 2 threads: its own PCA + StandardScaler + k-means++ (timed for
    the total), then KMeans from the distributed run's initial centroids on its z-scored rows."""
    import pyarrow.parquet as pq
    from sklearn.cluster import KMeans, kmeans_plusplus
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    with PeakRSS() as mem, threadpool_limits(limits=2):
        x = np.concatenate([np.stack(pq.read_table(p, columns=["features"]).column("features").to_numpy(zero_copy_only=False))
                            for p in paths]).astype(np.float64)
        t0 = time.perf_counter()
        StandardScaler().fit_transform(PCA(case["dim"], svd_solver="full").fit_transform(x))
        pca_s = time.perf_counter() - t0
        z = dist["transform"].project(x)
        del x
        t0 = time.perf_counter()
        kmeans_plusplus(z, case["clusters"], random_state=SEED)
        init_s = time.perf_counter() - t0

        def fit(iters: int) -> tuple[KMeans, float]:
            """The fit and its fastest wall time of 3."""
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                km = KMeans(case["clusters"], init=dist["init"], n_init=1, max_iter=iters, tol=0.0).fit(z)
                best = min(best, time.perf_counter() - t0)
            return km, best

        km_short, short = fit(2)
        km, full = fit(case["iters"])
    done = km.n_iter_ - km_short.n_iter_   # fewer than asked if a fit converged (labels unchanged)
    per_iter = (full - short) / done if done > 0 and full > short else full / km.n_iter_
    return {
        "threads": 2, "total_s": round(pca_s + init_s + full, 3), "pca_s": round(pca_s, 3), "init_s": round(init_s, 3),
        "kmeans_s": round(full, 3), "iterations": int(km.n_iter_), "s_per_iteration": significant(per_iter),
        "inertia": float(km.inertia_), "peak_rss_gib": round(mem.peak / GIB, 3),
        "adjusted_rand_vs_distributed": round(float(adjusted_rand_score(km.labels_, dist["labels"])), 6),
    }


def extraction(run_dir: Path, smoke: bool) -> dict:
    """(c): the extract stage's Ray Data path against a plain loop over the same model and samples,
    alternating, `EXTRACT_RUNS` times each; the medians count. Each Ray Data run has a Ray of its own,
    so that every run pays Ray Data's first execution, as the one extraction of a pipeline does."""
    import importlib
    import io
    import statistics

    import torch

    from trixmed.config import load_config
    from trixmed.console import Console
    from trixmed.data.dataset import Dataset
    from trixmed.models import load_model
    from trixmed.pipeline.extract import extract_features
    from trixmed.run_dir import RunDir
    from trixmed.train.inference import collator_for, infer
    from trixmed.train.ray_session import ensure_ray, ray_session

    rd = RunDir(run_dir)
    # the config the warm-up was trained with (the collator's settings come from it)
    cfg = load_config(None if smoke else ROOT / "configs" / "mimic3_codes.yaml",
                      [f"run_dir={run_dir}", "data.source=benchmark", f"data.path={run_dir}",
                       "extract.actors=2", "extract.cpus_per_actor=1", "extract.shard_size=4096",
                       *(SMOKE_MODEL if smoke else [])])
    samples = len(Dataset(rd.dataset).visits)
    torch.set_num_threads(os.cpu_count() or 1)
    importlib.import_module("ray.data")   # imported before the clock, like the plain loop's torch
    quiet = Console(stream=io.StringIO())
    plain, ray_data = [], []
    for _ in range(1 if smoke else EXTRACT_RUNS):
        t0 = time.perf_counter()
        ds = Dataset(rd.dataset)
        model = load_model(rd.model("warmup"), cfg, ds.vocab)
        infer(model, collator_for(cfg, ds.vocab), ds.samples(), batch_size=cfg.extract.batch_size)
        plain.append(time.perf_counter() - t0)
        out = Path(tempfile.mkdtemp(prefix="trixmed-bench-extract-"))
        try:
            with ray_session(cfg):
                ensure_ray(cfg)   # Ray up before the clock, as in a pipeline (the training phases share it)
                t0 = time.perf_counter()
                summary = extract_features(cfg, rd, out, out / ".partial", quiet)
                ray_data.append(time.perf_counter() - t0)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    plain_s, ray_s = statistics.median(plain), statistics.median(ray_data)
    return {"samples": samples, "dim": summary["dim"], "shards": summary["shards"], "runs": len(plain),
            "plain_runs_s": [round(t, 2) for t in plain], "ray_data_runs_s": [round(t, 2) for t in ray_data],
            "plain_s": round(plain_s, 2), "ray_data_s": round(ray_s, 2),
            "plain_samples_per_s": round(samples / plain_s, 1), "ray_data_samples_per_s": round(samples / ray_s, 1),
            "ratio": round(plain_s / ray_s, 3), "target_ratio": 0.8}


def tiny_run(root: Path) -> Path:
    """A prepared tiny dataset and an untrained warm-up model: what extraction reads."""
    from trixmed.config import load_config
    from trixmed.testing import make_tiny_dataset, save_untrained_warmup

    make_tiny_dataset(root, patients=120)
    save_untrained_warmup(load_config(None, [f"run_dir={root}", *SMOKE_MODEL]))
    return root


def ray_up() -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # a local instance only this script uses
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_output_args(parser, "stratify.json")
    parser.add_argument("--extract-run-dir", type=Path, default=Path(tempfile.gettempdir()) / "trixmed_bench_pipeline",
                        help="(c): a run directory with dataset/ and warmup/ (default: what benchmarks/pipeline.py leaves)")
    args = parser.parse_args(argv)
    import ray

    cases = SMOKE if args.smoke else FULL
    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="trixmed-bench-stratify-"))
    try:
        # (b) first: the driver's memory then holds nothing left over from scikit-learn's fit in (a)
        case = cases["streamed"]
        t0 = time.perf_counter()
        paths = write_shards_in_child(tmp / "streamed", case)
        write_s = time.perf_counter() - t0
        ray_up()
        dist = distributed_fit(paths, case, budget=case["budget"], labels=False)
        ray.shutdown()
        streamed = {
            "case": {**case, "row_group_rows": ROW_GROUP,
                     "parquet_gib": round(sum(p.stat().st_size for p in paths) / GIB, 3), "write_s": round(write_s, 1)},
            "distributed": dist["report"],
            "peak_within_target": dist["report"]["peak_rss_gib"] <= TARGET_PEAK_GIB,
        }
        print("streamed:", dist["report"]["total_s"], "s,", dist["report"]["peak_rss_gib"], "GiB peak")
        shutil.rmtree(tmp / "streamed")

        case = cases["in_memory"]
        paths = write_shards_in_child(tmp / "in_memory", case)
        ray_up()
        dist = distributed_fit(paths, case, budget=None, labels=True)
        ray.shutdown()   # scikit-learn's peak memory is then this process alone
        ref = sklearn_fit(paths, case, dist)
        results["in_memory"] = {
            "case": case, "distributed": dist["report"], "sklearn": ref,
            "ratio_s_per_iteration": round(dist["report"]["s_per_iteration"] / ref["s_per_iteration"], 3),
            "inertia_rel_diff": abs(dist["report"]["inertia"] - ref["inertia"]) / ref["inertia"],
        }
        results["streamed"] = streamed
        print("in_memory:", results["in_memory"]["ratio_s_per_iteration"], "× scikit-learn per iteration")

        run_dir = tiny_run(tmp / "tiny") if args.smoke else args.extract_run_dir
        if (run_dir / "warmup").is_dir():
            results["extract"] = {"run_dir": str(run_dir), **extraction(run_dir, args.smoke)}
            print("extract:", results["extract"]["ratio"], "× plain loop throughput")
        else:
            results["extract"] = {"skipped": f"{run_dir} has no warm-up model (run benchmarks/pipeline.py first)"}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    report = {
        "benchmark": "distributed stratify (PCA → z-score → K-means)",
        "smoke": args.smoke,
        "target": {"ratio_s_per_iteration": TARGET_RATIO, "case": "in_memory",
                   "streamed_peak_rss_gib": TARGET_PEAK_GIB},
        "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    out = write_report(args, report, {
        "ratio_s_per_iteration": results["in_memory"]["ratio_s_per_iteration"],
        "in_memory": {side: results["in_memory"][side]["s_per_iteration"] for side in ("distributed", "sklearn")},
        "streamed": {k: results["streamed"]["distributed"][k] for k in ("total_s", "peak_rss_gib")},
        "extract": results["extract"],
    })
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


def markdown(report: dict) -> str:
    a, b = report["results"]["in_memory"], report["results"]["streamed"]
    m = report["machine"]

    def size(case: dict) -> str:
        return f"{case['rows']:,} × {case['dim']}, K = {case['clusters']}, {case['iters']} Lloyd iterations"

    lines = [
        "# Distributed stratify: PCA → z-score → K-means", "",
        f"{report['date']}, {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}{' (smoke sizes)' if report['smoke'] else ''}.", "",
        f"## (a) in memory: {size(a['case'])}", "",
        "| | s / iteration | total s | peak RSS GiB | inertia |", "|---|---|---|---|---|",
        *(f"| {name} | {r['s_per_iteration']} | {r['total_s']} | {r['peak_rss_gib']} | {r['inertia']:.6g} |"
          for name, r in (("distributed (2 workers × 1 CPU, Ray)", a["distributed"]), ("scikit-learn (2 threads)", a["sklearn"]))),
        "",
        f"Ratio distributed ÷ scikit-learn per iteration: **{a['ratio_s_per_iteration']}** (target ≤ {TARGET_RATIO}); "
        f"inertia relative difference {a['inertia_rel_diff']:.2e}; adjusted Rand index between the two labelings "
        f"{a['sklearn']['adjusted_rand_vs_distributed']}. Peak RSS of the distributed run counts Ray's own processes.", "",
        f"## (b) streamed from Parquet: {size(b['case'])}", "",
        f"{b['case']['shards']} shards, {b['case']['parquet_gib']} GiB of Parquet, memory budget "
        f"{b['case']['budget'] / 2**20:g} MiB a worker ({b['distributed']['streaming_workers']} of 2 workers streaming).", "",
        "| total s | load s | PCA s | k-means++ s | Lloyd + final pass s | s / iteration | peak RSS GiB |",
        "|---|---|---|---|---|---|---|",
        f"| {b['distributed']['total_s']} | {b['distributed']['load_s']} | {b['distributed']['pca_s']} | "
        f"{b['distributed']['init_s']} | {b['distributed']['lloyd_and_final_pass_s']} | {b['distributed']['s_per_iteration']} | "
        f"{b['distributed']['peak_rss_gib']} |", "",
        f"Target: peak ≤ {TARGET_PEAK_GIB} GiB — {'met' if b['peak_within_target'] else 'NOT met'}.", "",
        "## (c) extract: Ray Data actor pool vs a plain loop", "",
    ]
    c = report["results"]["extract"]
    if "skipped" in c:
        lines.append(f"Skipped: {c['skipped']}.")
    else:
        lines += [f"{c['samples']:,} samples, features of width {c['dim']}, {c['shards']} shards; wall time end to end "
                  "(model loading, and for Ray Data its first execution and the actor start-up, included); "
                  f"median of {c['runs']} alternating runs each (plain {c['plain_runs_s']} s, Ray Data "
                  f"{c['ray_data_runs_s']} s).", "",
                  "| | seconds | samples/s |", "|---|---|---|",
                  f"| plain loop (1 process, 2 threads) | {c['plain_s']} | {c['plain_samples_per_s']} |",
                  f"| Ray Data (2 actors × 1 CPU) | {c['ray_data_s']} | {c['ray_data_samples_per_s']} |", "",
                  f"Throughput ratio Ray Data ÷ plain: **{c['ratio']}** (target ≥ {c['target_ratio']})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
