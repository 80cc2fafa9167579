"""A training rank's start-up through DeepSpeed, with and without Muon's modules.

    python benchmarks/rank_startup.py [--rounds 5]     # → benchmarks/results/rank_startup.json + .md
    python benchmarks/rank_startup.py --smoke          # 1 round (CI)

To ask whether the optimizer is its Muon, DeepSpeed (ZeRO 1-3, bf16) imports Muon's modules,
which compile their kernels as they load (torch._inductor's compiler). trixmed's ranks get
stand-ins instead (`deepspeed_strategy.join_process_group`). Each case is a fresh process doing
what a rank does before its first optimizer step: import torch and DeepSpeed, join a 1-rank gloo
group, `DeepSpeedStrategy.prepare` (ZeRO-2, trixmed's client AdamW) and one step. The
`deepspeed_muon` case imports Muon's real modules before joining, so the stand-ins are not used
and the rank pays what DeepSpeed's own import would. The cases alternate, side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import add_output_args, machine, write_report

CASES = ("stand_ins", "deepspeed_muon")


def child(case: str) -> None:
    """One rank's start-up, timed from before `import torch` to the end of its first step."""
    from trixmed.testing import free_local_port, join_local_gloo   # torch-free at import: before the clock

    t0 = time.perf_counter()
    import torch
    import deepspeed  # noqa: F401

    from trixmed.config import DistributedConfig, MoEConfig, PhaseConfig
    from trixmed.train.deepspeed_strategy import MUON_MODULES, DeepSpeedStrategy

    if case == "deepspeed_muon":
        for name in MUON_MODULES:
            __import__(name)
    imported = time.perf_counter()
    join_local_gloo(0, 1, free_local_port())
    strategy = DeepSpeedStrategy(DistributedConfig(zero_stage=2), MoEConfig())
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 32))
    engine = strategy.prepare(model, PhaseConfig(micro_batch_size=4, effective_batch_size=4, grad_clip=1.0), "warmup")
    x, y = torch.randn(4, 64), torch.randn(4, 32)
    engine.backward(torch.nn.functional.mse_loss(engine(x), y))
    strategy.step(engine)
    end = time.perf_counter()
    print(json.dumps({"case": case, "import_torch_deepspeed_s": imported - t0, "join_prepare_step_s": end - imported,
                      "total_s": end - t0, "inductor_compiler_loaded": "torch._inductor.compile_fx" in sys.modules}),
          flush=True)


def run_case(case: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", case], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{case} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both cases, alternating which goes first (default 5)")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    add_output_args(parser, "rank_startup.json")
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    rounds = 1 if args.smoke else args.rounds
    runs: dict[str, list[dict]] = {case: [] for case in CASES}
    for r in range(rounds):
        for case in (CASES if r % 2 == 0 else CASES[::-1]):
            runs[case].append(run_case(case))
    summary = {case: {"total_s_median": round(statistics.median(x["total_s"] for x in rs), 3),
                      "join_prepare_step_s_median": round(statistics.median(x["join_prepare_step_s"] for x in rs), 3),
                      "inductor_compiler_loaded": any(x["inductor_compiler_loaded"] for x in rs)}
               for case, rs in runs.items()}
    saved = summary["deepspeed_muon"]["total_s_median"] - summary["stand_ins"]["total_s_median"]
    report = {"smoke": args.smoke, "machine": machine(), "rounds": rounds, "summary": summary,
              "saved_s_per_rank": round(saved, 3),
              "ratio_stand_ins_over_deepspeed_muon": round(summary["stand_ins"]["total_s_median"]
                                                          / summary["deepspeed_muon"]["total_s_median"], 3),
              "runs": runs, "command": "python benchmarks/rank_startup.py" + (" --smoke" if args.smoke else f" --rounds {rounds}")}
    out = write_report(args, report, {"summary": summary, "saved_s_per_rank": report["saved_s_per_rank"]})
    out.with_suffix(".md").write_text(_markdown(report), encoding="utf-8")


def _markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"# A rank's start-up through DeepSpeed (ZeRO-2, 1 gloo rank), median of {report['rounds']} rounds", "",
             f"`{report['command']}` on {report['machine']['cpu']} ({report['machine']['cpus']} CPUs).", "",
             "| case | import → first step done | join + prepare + first step | torch._inductor's compiler loaded |",
             "|---|---|---|---|"]
    for case, m in s.items():
        lines.append(f"| {case} | {m['total_s_median']:.2f} s | {m['join_prepare_step_s_median']:.2f} s | "
                     f"{'yes' if m['inductor_compiler_loaded'] else 'no'} |")
    lines += ["", f"Saved per rank and phase: **{report['saved_s_per_rank']:.2f} s** "
              f"(stand-ins ÷ DeepSpeed's Muon: {report['ratio_stand_ins_over_deepspeed_muon']:.2f})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
