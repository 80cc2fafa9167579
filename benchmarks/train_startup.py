"""A Ray Train phase's start-up and end, with trixmed's backend and with Ray's `TorchConfig`.

    python benchmarks/train_startup.py [--rounds 4]     # → benchmarks/results/train_startup.json + .md
    python benchmarks/train_startup.py --smoke          # 1 round (CI)

trixmed's `DataParallelTrainer` runs with `process_group.RayTrainGroup`, which only tells the workers
where their group meets; Ray's `TorchConfig` would make the group itself, and Ray Train's controller
imports torch to unpickle it. Each run here is one phase the way trixmed runs one, less the model:
2 workers (0.5 CPU each) that import torch and DeepSpeed, join their gloo group
(`join_process_group`), all-reduce once and report once, on one local Ray started for the whole
benchmark. The two backends alternate, side by side in one run. Timed: `fit()` in the driver, and
the controller's CPU seconds up to the report (a callback that runs in the controller reads them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import add_output_args, machine, write_report
from ray.train import UserCallback

CASES = ("trixmed_backend", "torch_config")


class ControllerClock(UserCallback):
    """Runs in Ray Train's controller (by value, as everything this script defines)."""

    def __init__(self, out: str):
        self.out = out

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        Path(self.out).write_text(json.dumps({"controller_cpu_s": time.process_time(),
                                              "controller_has_torch": "torch" in sys.modules,
                                              "sums": [m["sum"] for m in metrics]}))


def rank(config: dict[str, Any]) -> None:
    import ray.train
    import torch
    import torch.distributed as dist

    from trixmed.train.deepspeed_strategy import join_process_group

    join_process_group(use_gpu=False)   # imports DeepSpeed, as a trainer's rank does
    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    ray.train.report({"sum": total.item()})


def one_phase(case: str, storage: Path) -> dict[str, Any]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from trixmed.train.process_group import RayTrainGroup

    probe = storage / f"{case}-probe.json"
    trainer = DataParallelTrainer(
        rank, train_loop_config={}, backend_config=RayTrainGroup() if case == "trixmed_backend" else TorchConfig(),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name=f"{case}-{time.time_ns()}", storage_path=str(storage),
                             callbacks=[ControllerClock(str(probe))]))
    t0 = time.perf_counter()
    trainer.fit()
    fit_s = time.perf_counter() - t0
    seen = json.loads(probe.read_text())
    assert seen["sums"] == [3.0, 3.0], seen   # both ranks in one group
    return {"case": case, "fit_s": fit_s, "controller_cpu_s": seen["controller_cpu_s"],
            "controller_has_torch": seen["controller_has_torch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of both cases, alternating which goes first (default 4)")
    add_output_args(parser, "train_startup.json")
    args = parser.parse_args()
    from trixmed.config import load_config
    from trixmed.train.ray_session import ensure_ray, ray_session

    rounds = 1 if args.smoke else args.rounds
    runs: dict[str, list[dict]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="trixmed-bench-train-startup-") as tmp:
        cfg = load_config(None, [f"run_dir={tmp}"])
        with ray_session(cfg):
            ensure_ray(cfg)
            for r in range(rounds):
                for case in (CASES if r % 2 == 0 else CASES[::-1]):
                    runs[case].append(one_phase(case, Path(tmp) / "ray"))
    summary = {case: {"fit_s_median": round(statistics.median(x["fit_s"] for x in rs), 3),
                      "controller_cpu_s_median": round(statistics.median(x["controller_cpu_s"] for x in rs), 3),
                      "controller_has_torch": any(x["controller_has_torch"] for x in rs)}
               for case, rs in runs.items()}
    ours, ray_s = summary["trixmed_backend"], summary["torch_config"]
    report = {"smoke": args.smoke, "machine": machine(), "rounds": rounds, "summary": summary,
              "fit_saved_s": round(ray_s["fit_s_median"] - ours["fit_s_median"], 3),
              "controller_cpu_saved_s": round(ray_s["controller_cpu_s_median"] - ours["controller_cpu_s_median"], 3),
              "ratio_trixmed_over_torch_config": round(ours["fit_s_median"] / ray_s["fit_s_median"], 3),
              "runs": runs,
              "command": "python benchmarks/train_startup.py" + (" --smoke" if args.smoke else f" --rounds {rounds}")}
    out = write_report(args, report, {"summary": summary, "fit_saved_s": report["fit_saved_s"],
                                      "controller_cpu_saved_s": report["controller_cpu_saved_s"]})
    out.with_suffix(".md").write_text(_markdown(report), encoding="utf-8")


def _markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"# A Ray Train phase's start-up and end (2 workers, gloo), median of {report['rounds']} rounds", "",
             f"`{report['command']}` on {report['machine']['cpu']} ({report['machine']['cpus']} CPUs).", "",
             "| backend | `fit()` | controller CPU to the report | controller imports torch |",
             "|---|---|---|---|"]
    for case, m in s.items():
        lines.append(f"| {case} | {m['fit_s_median']:.2f} s | {m['controller_cpu_s_median']:.2f} s | "
                     f"{'yes' if m['controller_has_torch'] else 'no'} |")
    lines += ["", f"Saved per phase: **{report['fit_saved_s']:.2f} s** of `fit()` "
              f"(trixmed's backend ÷ TorchConfig: {report['ratio_trixmed_over_torch_config']:.2f}), "
              f"{report['controller_cpu_saved_s']:.2f} s of the controller's CPU."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
