"""Time `trixmed prepare` and measure its peak memory; writes benchmarks/results/prepare.{json,md}.

Each case runs `trixmed prepare` in a fresh child process (so imports count, as for a user), and
reads the child's peak RSS from `getrusage(RUSAGE_CHILDREN)` — one child per measurement process,
so the maximum is that run's. Target (issue 2): the full-size benchmark in ≤ 30 s and ≤ 2 GB.

    python benchmarks/prepare.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trixmed.paths import shared_data_dir  # noqa: E402

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
        raise SystemExit(f"prepare {' '.join(args)} failed with status {rc}")
    return {"wall_s": round(float(wall), 3), "peak_rss_mib": round(int(rss_kib) / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = {"mimic3_demo (raw CSVs, bundled)": ["--source", "mimic3"]}
    shared = shared_data_dir()
    if shared is not None:
        cases["mimic3_safedrug131 (benchmark)"] = ["--source", "benchmark", "--input", str(shared / "benchmark" / "mimic3_safedrug131")]
    else:
        print("../shared/data not found: only the bundled demo is measured", file=sys.stderr)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in cases.items():
            runs = [measure([*case, "--run-dir", str(Path(tmp) / "run")]) for _ in range(args.repeats)]
            results[name] = {
                "wall_s_median": sorted(r["wall_s"] for r in runs)[len(runs) // 2],
                "peak_rss_mib_max": max(r["peak_rss_mib"] for r in runs),
                "runs": runs,
            }
            print(f"{name}: {results[name]['wall_s_median']} s, {results[name]['peak_rss_mib_max']} MiB")
    report = {
        "benchmark": "trixmed prepare",
        "target": {"wall_s": 30, "peak_rss_mib": 2048, "case": "mimic3_safedrug131 (benchmark)"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "prepare.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# `trixmed prepare`: time and peak memory", "",
             f"{report['date']}, {report['machine']['cpus']} CPUs, Python {report['machine']['python']}; "
             f"median of {args.repeats} runs, each a fresh process (imports included).", "",
             "| case | wall s (median) | peak RSS MiB |", "|---|---|---|"]
    lines += [f"| {k} | {v['wall_s_median']} | {v['peak_rss_mib_max']} |" for k, v in results.items()]
    lines += ["", "Target: the full-size benchmark in ≤ 30 s and ≤ 2048 MiB on 2 cores."]
    (out_dir / "prepare.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
