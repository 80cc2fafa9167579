"""Time `trixmed prepare` and measure its peak memory; writes benchmarks/results/prepare.{json,md}.

Each case runs `trixmed prepare` in a fresh child process (so imports count, as for a user), and
reads the child's peak RSS from `getrusage(RUSAGE_CHILDREN)` — one child per measurement process,
so the maximum is that run's. Target (issue 2): the full-size benchmark in ≤ 30 s and ≤ 2 GB.

    python benchmarks/prepare.py [--repeats 3] [--out benchmarks/results/prepare.json]
    python benchmarks/prepare.py --smoke [--out FILE]   # bundled demo only, 1 run, to a temp dir

The Markdown table goes beside the JSON (same name, `.md`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, add_output_args, machine, write_report  # also puts the checkout on sys.path

from trixmed.paths import shared_data_dir

_PROBE = """
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - t
print(rc, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measure(args: list[str]) -> dict:
    """Wall seconds and peak RSS (MiB) of one `trixmed prepare` run in its own process."""
    out = subprocess.run([sys.executable, "-c", _PROBE, sys.executable, "-m", "trixmed.cli", "prepare", *args],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    rc, wall, rss_kib = out.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"prepare {' '.join(args)} failed with status {rc}:\n{out.stderr[-2000:]}")
    return {"wall_s": round(float(wall), 3), "peak_rss_mib": round(int(rss_kib) / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="runs per case, the median counts (default 3; --smoke 1)")
    add_output_args(parser, "prepare.json")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.smoke else 3)
    cases = {"mimic3_demo (raw CSVs, bundled)": ["--source", "mimic3"]}
    shared = None if args.smoke else shared_data_dir()   # smoke: the bundled demo only, never credentialed data
    if shared is not None:
        cases["mimic3_safedrug131 (benchmark)"] = ["--source", "benchmark", "--input", str(shared / "benchmark" / "mimic3_safedrug131")]
    elif not args.smoke:
        print("../shared/data not found: only the bundled demo is measured", file=sys.stderr)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in cases.items():
            runs = [measure([*case, "--run-dir", str(Path(tmp) / "run")]) for _ in range(repeats)]
            results[name] = {
                "wall_s_median": sorted(r["wall_s"] for r in runs)[len(runs) // 2],
                "peak_rss_mib_max": max(r["peak_rss_mib"] for r in runs),
                "runs": runs,
            }
            print(f"{name}: {results[name]['wall_s_median']} s, {results[name]['peak_rss_mib_max']} MiB")
    report = {
        "benchmark": "trixmed prepare",
        "smoke": args.smoke,
        "target": {"wall_s": 30, "peak_rss_mib": 2048, "case": "mimic3_safedrug131 (benchmark)"},
        "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    out = write_report(args, report, results)
    lines = ["# `trixmed prepare`: time and peak memory", "",
             f"{report['date']}, {report['machine']['cpus']} CPUs, Python {report['machine']['python']}; "
             f"median of {repeats} runs, each a fresh process (imports included).", "",
             "| case | wall s (median) | peak RSS MiB |", "|---|---|---|"]
    lines += [f"| {k} | {v['wall_s_median']} | {v['peak_rss_mib_max']} |" for k, v in results.items()]
    lines += ["", "Target: the full-size benchmark in ≤ 30 s and ≤ 2048 MiB on 2 cores."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
