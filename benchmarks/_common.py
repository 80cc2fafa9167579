"""What the benchmark scripts share: the repository root, `--smoke` / `--out`, machine facts."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:   # `python benchmarks/x.py` from a checkout without `pip install -e`
    sys.path.insert(0, str(ROOT))


def add_output_args(parser: argparse.ArgumentParser, name: str) -> None:
    """`--smoke` (tiny inputs, same measurement code) and `--out` (default: benchmarks/results/`name`,
    or a fresh temp dir with `--smoke`, so a smoke run never overwrites the committed results)."""
    parser.add_argument("--smoke", action="store_true",
                        help="tiny inputs through the same measurements, for a quick check; writes to a temp dir unless --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"result file (default: benchmarks/results/{name}; with --smoke a temp dir)")
    parser.set_defaults(_out_name=name)


def output_path(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    if args.smoke:
        return Path(tempfile.mkdtemp(prefix="trixmed-bench-smoke-")) / args._out_name
    return RESULTS / args._out_name


def machine() -> dict[str, object]:
    return {"cpus": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(), "platform": platform.platform()}


def cpu_model() -> str:
    """The processor's name: ratios measured side by side still move with it (stratify's K-means
    ratio was 1.06 on one 2-core machine, 1.60 on another)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_report(args: argparse.Namespace, report: dict, shown: object) -> Path:
    """Write `report` as JSON to the `--out` path, print `shown` and where the report went."""
    from trixmed.io import write_json

    out = output_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(json.dumps(shown, indent=2))
    print(f"wrote {out}")
    return out


def significant(x: float, digits: int = 4) -> float:
    """`x` to `digits` significant figures: a smoke run's sub-millisecond timings must not round to zero."""
    return float(f"{x:.{digits}g}")
