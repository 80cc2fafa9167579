"""Speed and memory of the model core: MoE-LoRA (K=8 experts, top-2) against the same backbone
without MoE (one LoRA, the "w/o MoE" ablation), forward + backward, side by side in one run.

    .venv/bin/python benchmarks/model.py [--steps 30] [--batch 64] [--threads 1] [--out benchmarks/results/model.json]
    .venv/bin/python benchmarks/model.py --smoke [--out FILE]   # 3 steps, batch 8, 1 round, to a temp dir

Memory is reported twice: peak RSS of the process (dominated by torch and the title tables), and
the training step's tensor memory (weights + gradients + activations autograd saves for backward,
unique storages), which is what the MoE changes. Each variant runs in its own subprocess, variants alternate over
`--rounds` and the best round counts, which damps noise from other work on the machine. Inputs are
synthetic patients with MIMIC-III-like statistics (2.4 visits, 13.6 diagnoses, 4.5 procedures,
19 medications per visit) over real ICD-9 / ATC-3 codes from the bundled title tables, so title
words and narratives are realistic; no credentialed data is read. The `hf` figures use a tiny random
Llama (hidden 64, 2 layers) saved to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, add_output_args, write_report

VARIANTS = {"plain": ["model.moe.router=none"], "moe": ["model.moe.router=triage"]}


def _vocab():
    import pandas as pd

    from trixmed.data.dataset import Vocab
    from trixmed.paths import resource_path

    d = resource_path("descriptions")
    diag = pd.read_csv(d / "icd9_diagnoses.csv", dtype=str)["code"].head(1958).tolist()
    proc = pd.read_csv(d / "icd9_procedures.csv", dtype=str)["code"].head(1430).tolist()
    atc = pd.read_csv(d / "WHO_ATC-DDD_2026-04-25.csv", dtype=str)["atc_code"]
    med = atc[atc.str.len() == 4].head(131).tolist()
    return Vocab(diag=diag, proc=proc, med=med)


def _samples(vocab, n: int, seed: int = 0):
    from trixmed.data.dataset import Sample, Visit

    rng = random.Random(seed)
    out = []
    for i in range(n):
        visits = tuple(Visit(tuple(rng.sample(vocab.diag, rng.randint(8, 19))), tuple(rng.sample(vocab.proc, rng.randint(1, 8))),
                             tuple(rng.sample(vocab.med, rng.randint(10, 28))))
                       for _ in range(min(1 + int(rng.expovariate(1 / 1.4)), 8)))
        out.append(Sample(f"p{i}:{len(visits) - 1}", f"p{i}", "train", visits))
    return out


def _tiny_llama(path: Path) -> None:
    from trixmed.testing import save_tiny_llama

    text = (ROOT / "trixmed/resources/descriptions/icd9_diagnoses.csv").read_text().splitlines()[:3000]
    save_tiny_llama(path, text, vocab_size=2000, hidden_size=64, max_positions=4096)


def run_one(backbone: str, variant: str, steps: int, batch_size: int, threads: int, hf_dir: str | None) -> dict:
    """One variant in this process: samples/s of forward+backward and peak RSS."""
    import torch

    from trixmed.config import load_config
    from trixmed.models import build_collator, build_model
    from trixmed.models.checkpoint import load_tokenizer
    from trixmed.text.titles import CodeTitles

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    overrides = ["model.moe.num_experts=8", "model.moe.top_n=2", "stratify.num_clusters=8"] + VARIANTS[variant]
    if backbone == "hf":
        overrides += ["model.backbone=hf", f"model.hf.path={hf_dir}", "model.hf.max_length=1024", "text.token_budget=1024"]
    cfg = load_config(None, overrides)
    vocab, titles = _vocab(), CodeTitles.default()
    model = build_model(cfg, vocab, phase="experts", num_clusters=8, titles=titles).train()
    tok = load_tokenizer(cfg.model.hf) if backbone == "hf" else None
    collate = build_collator(cfg, vocab, tokenizer=tok, titles=titles, with_output=False)
    samples = _samples(vocab, batch_size * 4)
    rng = random.Random(1)
    batches = [collate(samples[i:i + batch_size], [rng.randrange(8) for _ in range(batch_size)])
               for i in range(0, len(samples), batch_size)]
    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch):
        out = model(batch)
        loss, _ = model.loss(batch, out, cfg.experts)
        loss.backward()
        for p in params:
            p.grad = None

    for b in batches[:2]:
        step(b)
    saved: dict[int, int] = {}

    def keep(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        step(batches[0])
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    grad_mb = sum(p.numel() * p.element_size() for p in params) / 2**20
    rss_before = _rss_mb()
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(batches[i % len(batches)])
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    return {
        "backbone": backbone, "variant": variant, "batch_size": batch_size, "threads": threads, "steps": steps,
        "samples_per_s": batch_size / median, "median_step_ms": 1000 * median,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_setup_mb": rss_before,
        "trainable_params": sum(p.numel() for p in params),
        # training-step memory from tensor sizes: weights + gradients + activations saved for backward
        "step_memory_mb": param_mb + grad_mb + sum(saved.values()) / 2**20,
        "saved_activations_mb": sum(saved.values()) / 2**20,
        "seq_len": int(batches[0]["input_ids"].shape[1]) if backbone == "hf" else int(batches[0]["visit_mask"].shape[1]),
    }


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # defaults: full run / --smoke
    ap.add_argument("--steps", type=int, help="timed steps per variant (30 / 3)")
    ap.add_argument("--batch", type=int, help="codes backbone batch (64 / 8)")
    ap.add_argument("--hf-batch", type=int, help="hf backbone batch (8 / 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, help="alternating rounds, the best counts (2 / 1)")
    add_output_args(ap, "model.json")
    ap.add_argument("--one", nargs=2, metavar=("BACKBONE", "VARIANT"), help=argparse.SUPPRESS)
    ap.add_argument("--hf-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name, full, smoke in (("steps", 30, 3), ("batch", 64, 8), ("hf_batch", 8, 2), ("rounds", 2, 1)):
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.one:
        batch = args.hf_batch if args.one[0] == "hf" else args.batch
        print(json.dumps(run_one(*args.one, args.steps, batch, args.threads, args.hf_dir)))
        return 0

    results: dict[str, dict[str, dict]] = {"codes": {}, "hf": {}}
    with tempfile.TemporaryDirectory() as tmp:
        _tiny_llama(Path(tmp))
        for backbone in ("codes", "hf"):
            for _ in range(args.rounds):
                for variant in VARIANTS:
                    cmd = [sys.executable, __file__, "--one", backbone, variant, "--steps", str(args.steps),
                           "--batch", str(args.batch), "--hf-batch", str(args.hf_batch), "--threads", str(args.threads),
                           "--hf-dir", tmp]
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise SystemExit(f"{backbone}/{variant} failed with status {proc.returncode}:\n{proc.stderr[-3000:]}")
                    r = json.loads(proc.stdout.splitlines()[-1])
                    best = results[backbone].get(variant)
                    if best is None or r["samples_per_s"] > best["samples_per_s"]:
                        results[backbone][variant] = r
    summary = {}
    for backbone, r in results.items():
        plain, moe = r["plain"], r["moe"]
        summary[backbone] = {
            "plain_samples_per_s": round(plain["samples_per_s"], 1), "moe_samples_per_s": round(moe["samples_per_s"], 1),
            "moe_time_ratio": round(plain["samples_per_s"] / moe["samples_per_s"], 3),
            "plain_step_memory_mb": round(plain["step_memory_mb"], 1), "moe_step_memory_mb": round(moe["step_memory_mb"], 1),
            "moe_step_memory_ratio": round(moe["step_memory_mb"] / plain["step_memory_mb"], 3),
            "plain_peak_rss_mb": round(plain["peak_rss_mb"]), "moe_peak_rss_mb": round(moe["peak_rss_mb"]),
        }
    summary["codes"]["target_time_ratio"] = 1.3
    write_report(args, {"smoke": args.smoke, "summary": summary, "runs": results}, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
