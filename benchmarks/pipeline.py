"""The whole TRIXMED pipeline on MIMIC-III (SafeDrug 131), codes backbone, 2 Ray workers under DeepSpeed.

    python benchmarks/pipeline.py [--config configs/mimic3_codes.yaml] [--run-dir DIR] [key=value ...]
    python benchmarks/pipeline.py --config configs/demo_cpu.yaml --out benchmarks/results/pipeline_demo.json
    python benchmarks/pipeline.py --smoke [--out FILE]   # demo config, 1 epoch a phase, 5 plain steps, temp dirs

Writes benchmarks/results/pipeline.json: bootstrap test metrics, per-stage wall time, training
samples/s, peak memory (RSS summed over the driver and every Ray process it started, sampled
every 0.2 s), and the distributed overhead ratio: the experts phase's 2-worker Ray + DeepSpeed
training throughput ÷ a plain single-process PyTorch loop training the same model with the
same global batch on the same cores.

The ratio is measured in pairs after the pipeline: one more experts epoch on Ray + DeepSpeed (in
a scratch copy of the run's inputs, Ray started afresh), beside a plain block of as many samples,
in alternating order; the median of the pairs' ratios counts. This shared machine's speed swings
by a third within half an hour, so a phase and a plain loop timed minutes apart compared the
hours, not the runtimes (0.74 and 1.02 for the same code in one hour). The whole phase's mean ÷
the fastest of 3 plain blocks after it is kept beside it (`phase_vs_fastest_plain_ratio`).

The benchmark data are credentialed-derived: read in place from ../shared/data, and the run
directory (which holds the prepared dataset) defaults to the system temp dir, outside the checkout.
`--smoke` runs the same stages and measurements on the bundled demo (configs/demo_cpu.yaml, one
epoch a phase, blocks of 5 timed plain steps, one pair) in a fresh temp run directory, and writes
to a temp dir unless `--out` is given; it reads no shared data.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT as REPO
from _common import add_output_args, machine, write_report

# the smoke run: the bundled demo, one epoch a phase (Ray + DeepSpeed still start for both phases)
SMOKE_CONFIG = REPO / "configs" / "demo_cpu.yaml"
SMOKE_OVERRIDES = ["warmup.epochs=1", "experts.epochs=1", "eval.bootstrap_rounds=3"]
SMOKE_PLAIN_STEPS = 5
PLAIN_BLOCKS = 3
PAIRS, SMOKE_PAIRS = 3, 1


class PeakRSS:
    """Peak of the summed RSS of this process and all its descendants (Ray's raylet, workers...).

    Finding the descendants reads every process's /proc entry; doing that at every sample took
    2-3 % of a core, which the 2-rank training being measured shares. So the list of processes is
    renewed every `refresh` samples, and each sample reads only their memory."""

    def __init__(self, interval: float = 0.2, refresh: int = 5):
        import psutil

        self.proc, self.interval, self.refresh, self.peak = psutil.Process(), interval, refresh, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        tick, procs = 0, []
        while not self._stop.is_set():
            if tick % self.refresh == 0:
                procs = [self.proc, *self.proc.children(recursive=True)]
            tick += 1
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def plain_throughput(cfg, run_dir: Path, steps: int, blocks: int = PLAIN_BLOCKS) -> list[float]:
    """Samples/s of each timed block of `steps` steps of a plain PyTorch loop (no Ray, no DeepSpeed, one process, all cores) training
    the experts model exactly as the engine does: same init, collator, loss, AdamW, global batch."""
    import numpy as np
    import torch

    from trixmed.cluster import load_assignments
    from trixmed.data.dataset import Dataset
    from trixmed.run_dir import RunDir
    from trixmed.train.inference import collator_for
    from trixmed.train.trainer import build_phase_model

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    rd = RunDir(run_dir)
    ds = Dataset(rd.dataset)
    train = ds.samples("train")
    clusters = load_assignments(rd.assignments)
    collate = collator_for(cfg, ds.vocab, "experts")
    model = build_phase_model(cfg, ds, "experts", rd)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.experts.lr)
    batch_size = cfg.experts.effective_batch_size
    perm = np.random.default_rng(cfg.seed).permutation(len(train))

    def step(i: int) -> None:
        chosen = [train[j] for j in perm[(i * batch_size) % (len(train) - batch_size):][:batch_size]]
        batch = collate(chosen, [clusters[s.visit_key] for s in chosen])
        out = model(batch)
        loss, _ = model.loss(batch, out, cfg.experts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.experts.grad_clip)
        opt.step()

    for i in range(3):   # warm-up iterations, not timed
        step(i)
    rates = []
    for block in range(blocks):
        t0 = time.perf_counter()
        for i in range(steps):
            step(3 + block * steps + i)
        rates.append(steps * batch_size / (time.perf_counter() - t0))
    return rates


def paired_ratios(cfg, config: str, overrides: list[str], pairs: int) -> list[dict]:
    """`pairs` times: one experts epoch on Ray + DeepSpeed and a plain block of as many samples,
    back to back, the order alternating so that a machine slowing down or speeding up favours
    neither. The epoch trains in a scratch run directory holding copies of the stage's inputs
    (the run's own experts/ stays the pipeline's; `config` and `overrides` are what `cfg` was
    loaded from, but its run_dir); Ray is started for it and shut down before the plain block,
    whose process then has the cores to itself, as in the pipeline's stages. Each epoch's
    samples/s is the trainer's own (its training steps, without set-up or validation)."""
    from trixmed.commands.common import yaml_quote
    from trixmed.config import load_config
    from trixmed.console import Console
    from trixmed.data.dataset import Dataset
    from trixmed.io import read_json
    from trixmed.pipeline.stages import STAGES, run_stage
    from trixmed.run_dir import RunDir
    from trixmed.train.ray_session import ray_session
    from trixmed.train.sampling import steps_per_epoch
    from trixmed.train.trainer import phase_samples

    run_dir = Path(cfg.run_dir)
    rd = RunDir(run_dir)
    train, _ = phase_samples(cfg, Dataset(rd.dataset), "experts")
    steps = steps_per_epoch(len(train), cfg.experts.effective_batch_size, "experts")   # the epoch's

    def ray_epoch(scratch: Path) -> float:
        for name in STAGES["experts"].inputs:
            shutil.copytree(rd.stage_dir(name), RunDir(scratch).stage_dir(name))
        one = load_config(config, [f"run_dir={yaml_quote(scratch)}", *overrides, "experts.epochs=1"])
        with ray_session(one):
            run_stage(one, "experts", force=True, console=Console(stream=io.StringIO()))
        return read_json(RunDir(scratch).history("experts"))["epochs"][0]["samples_per_s"]

    results = []
    for i in range(pairs):
        order = ("ray", "plain") if i % 2 == 0 else ("plain", "ray")
        scratch = Path(tempfile.mkdtemp(prefix="trixmed-bench-pair-"))
        try:
            rates = {side: ray_epoch(scratch) if side == "ray" else plain_throughput(cfg, run_dir, steps, blocks=1)[0]
                     for side in order}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        pair = {"first": order[0], "ray_samples_per_s": round(rates["ray"], 1),
                "plain_samples_per_s": round(rates["plain"], 1), "ratio": round(rates["ray"] / rates["plain"], 3)}
        print(f"pair {i + 1}/{pairs}: Ray + DeepSpeed {pair['ray_samples_per_s']} samples/s, "
              f"plain {pair['plain_samples_per_s']} → {pair['ratio']}", flush=True)
        results.append(pair)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="default configs/mimic3_codes.yaml; with --smoke configs/demo_cpu.yaml")
    # outside the checkout: the run directory holds a dataset derived from credentialed MIMIC data
    parser.add_argument("--run-dir", help="default: <tmp>/trixmed_bench_pipeline; with --smoke a fresh temp dir")
    parser.add_argument("--keep", action="store_true", help="reuse an existing run directory (stages up to date are skipped)")
    parser.add_argument("--plain-steps", type=int, help=f"timed steps of the plain PyTorch loop (60; --smoke {SMOKE_PLAIN_STEPS})")
    add_output_args(parser, "pipeline.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    from trixmed.commands.common import yaml_quote
    from trixmed.config import load_config, to_dict
    from trixmed.io import read_json
    from trixmed.paths import shared_data_dir
    from trixmed.pipeline.stages import run_pipeline
    from trixmed.run_dir import RunDir
    from trixmed.train.ray_session import ray_session

    config = args.config or str(SMOKE_CONFIG if args.smoke else REPO / "configs" / "mimic3_codes.yaml")
    plain_steps = args.plain_steps or (SMOKE_PLAIN_STEPS if args.smoke else 60)
    user_overrides = [*(SMOKE_OVERRIDES if args.smoke else []), *args.overrides]
    overrides = []
    if load_config(config, user_overrides).data.source == "benchmark":
        shared = shared_data_dir()
        if shared is None:
            print("benchmarks/pipeline.py: ../shared/data not found (set TRIXMED_SHARED_DATA)", file=sys.stderr)
            return 2
        overrides.append(f"data.path={yaml_quote(shared / 'benchmark' / 'mimic3_safedrug131')}")
    smoke_tmp = tempfile.mkdtemp(prefix="trixmed-bench-smoke-run-") if args.smoke and not args.run_dir else None
    run_dir = Path(args.run_dir or smoke_tmp or Path(tempfile.gettempdir()) / "trixmed_bench_pipeline")
    cfg = load_config(config, [f"run_dir={yaml_quote(run_dir)}", *overrides, *user_overrides])
    if run_dir.exists() and not args.keep and smoke_tmp is None:
        shutil.rmtree(run_dir)

    try:
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            with ray_session(cfg):
                results = run_pipeline(cfg)
            total = time.perf_counter() - t0
            plain_blocks = plain_throughput(cfg, run_dir, plain_steps)
            plain = max(plain_blocks)
            pairs = paired_ratios(cfg, config, [*overrides, *user_overrides], SMOKE_PAIRS if args.smoke else PAIRS)

        rd = RunDir(run_dir)
        histories = {p: read_json(rd.history(p)) for p in rd.PHASES}
        metrics = read_json(rd.metrics)
    finally:
        if smoke_tmp is not None:
            shutil.rmtree(smoke_tmp, ignore_errors=True)
    sps = {p: h["epochs"] and sum(e["samples_per_s"] for e in h["epochs"]) / len(h["epochs"]) for p, h in histories.items()}
    import torch

    config_path = Path(config).resolve()
    result = {
        "smoke": args.smoke,
        "data": cfg.data.path or "bundled MIMIC-III demo",
        "config": str(config_path.relative_to(REPO)) if config_path.is_relative_to(REPO) else config,
        "overrides": user_overrides,
        "machine": {**machine(), "torch": torch.__version__},
        "distributed": to_dict(cfg.distributed),
        "pipeline_wall_s": round(total, 1),
        "stages": {r.name: {"status": r.status, "wall_s": round(r.wall_s, 1)} for r in results},
        "train_samples_per_s": {p: round(v, 1) for p, v in sps.items()},
        "plain_pytorch_samples_per_s": round(plain, 1),
        "plain_pytorch_steps": plain_steps,
        "plain_pytorch_blocks_samples_per_s": [round(r, 1) for r in plain_blocks],
        "phase_vs_fastest_plain_ratio": round(sps["experts"] / plain, 3),
        "pairs": pairs,
        "distributed_overhead_ratio": round(statistics.median(p["ratio"] for p in pairs), 3),
        "peak_rss_gib": round(mem.peak / 1024**3, 2),
        "threshold": metrics["threshold"],
        "test_metrics": {k: {"mean": round(v["mean"], 4), "std": round(v["std"], 4), "point": round(v["point"], 4)}
                         for k, v in metrics["metrics"].items()},
        "histories": {p: [{k: e[k] for k in ("epoch", "train_loss", "val_jaccard", "samples_per_s")} for e in h["epochs"]]
                      for p, h in histories.items()},
    }
    write_report(args, result, {k: result[k] for k in ("pipeline_wall_s", "stages", "train_samples_per_s",
                                                        "plain_pytorch_samples_per_s", "phase_vs_fastest_plain_ratio",
                                                        "pairs", "distributed_overhead_ratio", "peak_rss_gib")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
