"""Bare-GPU check: trixmed's experts-phase training step, MoE-LoRA against one LoRA, on one GPU with plain torch.

    python benchmarks/gpu_check.py [--steps 20] [--batch 2] [--seq-len 2048]   # CUDA: the LLaMA-3.1-8B
                                         # architecture (configs/arch), random weights, bf16
    python benchmarks/gpu_check.py --smoke [--out FILE]   # CPU: a tiny Llama through the same code

For a machine narrower than a cluster: one GPU with torch, transformers and peft, and no Ray,
DeepSpeed or gguf (nothing here imports them). It builds trixmed's own MedRecModel around a
random-weight causal LM made directly on the device in bf16 (no checkpoint, no tokenizer, no
network), as configs/llama3_8b_moelora.yaml sets up the experts phase: LoRA r8 on q, k, v, o, up,
down; gradient checkpointing; MoE-LoRA with 8 experts, top-2 (router `triage`) against the "w/o
MoE" ablation (router `none`, one LoRA), one after the other in the same process. Each variant
trains on synthetic batches (random token ids, full attention, random clusters and medication
sets): warm-up steps, then timed AdamW steps as the trainer takes them (clip, step). Batch and
sequence length default to the config's micro-batch and model.hf.max_length.

Writes benchmarks/results/gpu_check.json (+ .md beside it): per variant tokens/s, median step
time, peak GPU memory (torch.cuda.max_memory_allocated, weights included), adapter parameter
counts and the losses; the MoE ÷ one-LoRA ratios; device, versions and setup. `--budget-s` bounds
the whole command: the timed loops stop early (and say so) rather than overrun it. Without CUDA
(and without --smoke) it says so and exits with status 1, writing nothing.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from typing import Any

from _common import ROOT, add_output_args, machine, significant, write_report

START = time.perf_counter()
CONFIG = ROOT / "configs" / "llama3_8b_moelora.yaml"
ARCH_8B = ROOT / "configs" / "arch" / "llama3_1_8b_config.json"
VARIANTS = {"moe": "triage", "one_lora": "none"}   # name → model.moe.router
N_MED = 131                                        # SafeDrug's MIMIC-III medication vocabulary (ATC-3)
# the smoke model: small enough for seconds on 2 CPU cores, with GQA like Llama-3 (kv heads < heads)
TINY_ARCH = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}


def architecture(smoke: bool) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**TINY_ARCH) if smoke else LlamaConfig.from_json_file(str(ARCH_8B))


def random_lm(arch: Any, device: Any) -> Any:
    """A random-weight causal LM of `arch`, created on `device` in bf16 (8B: ~16 GB, never fp32 on the host)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        return AutoModelForCausalLM.from_config(arch, dtype=torch.bfloat16)


def synthetic_batches(n: int, batch: int, seq_len: int, vocab_size: int, num_clusters: int, device: Any) -> list[dict]:
    """Batches in the hf collator's layout, every position a prompt token (no padding, so every token counts)."""
    import torch

    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        b = {"input_ids": torch.randint(vocab_size, (batch, seq_len), generator=g),
             "attention_mask": torch.ones(batch, seq_len, dtype=torch.long),
             "prompt_mask": torch.ones(batch, seq_len, dtype=torch.bool),
             # ~19 medications per visit, as in MIMIC-III
             "labels": (torch.rand(batch, N_MED, generator=g) < 19 / N_MED).float(),
             "cluster": torch.randint(num_clusters, (batch,), generator=g)}
        out.append({k: v.to(device) for k, v in b.items()})
    return out


def adapter_counts(model: Any) -> tuple[int, int]:
    """(adapted linear layers, adapter parameters): peft LoRA layers or trixmed's MoE-LoRA layers."""
    from peft.tuners.lora import LoraLayer

    from trixmed.models.lora import MoELoRALinear

    layers = sum(isinstance(m, (LoraLayer, MoELoRALinear)) for m in model.modules())
    params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n or ".experts_" in n)
    return layers, params


def measure(cfg: Any, arch: Any, device: Any, batch: int, seq_len: int, warmup: int, steps: int, stop_at: float) -> dict[str, Any]:
    """Build one variant around a fresh random LM, train `warmup` + up to `steps` timed steps
    (fewer when `stop_at`, a perf_counter time, passes first; at least 2 are timed)."""
    import torch

    from trixmed.data.dataset import Vocab
    from trixmed.models import build_model

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    lm = random_lm(arch, device)
    lm_params = sum(p.numel() for p in lm.parameters())
    vocab = Vocab(diag=["D0"], proc=["P0"], med=[f"M{i}" for i in range(N_MED)])
    with torch.device(device):   # MoE-LoRA experts, router and head are created beside the LM
        model = build_model(cfg, vocab, phase="experts", num_clusters=cfg.model.moe.num_experts, lm=lm).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.experts.lr)
    batches = synthetic_batches(4, batch, seq_len, arch.vocab_size, cfg.model.moe.num_experts, device)
    if cuda:
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    resident = torch.cuda.memory_allocated() if cuda else None

    def step(b: dict) -> float:
        out = model(b)
        loss, _ = model.loss(b, out, cfg.experts)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.experts.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()   # .item() waits for the device: each step's time is its own

    for i in range(warmup):
        step(batches[i % len(batches)])
    times, losses = [], []
    while len(times) < steps and (len(times) < 2 or time.perf_counter() < stop_at):
        t = time.perf_counter()
        losses.append(step(batches[len(times) % len(batches)]))
        times.append(time.perf_counter() - t)
    layers, adapter = adapter_counts(model)
    gib = 2**30
    return {
        "router": cfg.model.moe.router,
        "build_s": significant(build_s),
        "timed_steps": len(times),
        "stopped_by_budget": len(times) < steps,
        "step_time_s_median": significant(statistics.median(times)),
        "step_time_s_min": significant(min(times)),
        "tokens_per_s": significant(batch * seq_len * len(times) / sum(times)),
        "peak_memory_gib": significant(torch.cuda.max_memory_allocated() / gib) if cuda else None,
        "resident_after_build_gib": significant(resident / gib) if cuda else None,
        "lm_params": lm_params,
        "trainable_params": sum(p.numel() for p in params),
        "adapted_layers": layers,
        "adapter_params": adapter,
        "adapter_params_per_layer": adapter / layers,
        "losses": [significant(x) for x in losses],
    }


def run(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    from trixmed.config import load_config

    arch = architecture(args.smoke)
    # the model.hf.path in the config is never read: build_model gets the LM itself
    sizes = [f"experts.micro_batch_size={args.batch}", f"model.hf.max_length={args.seq_len}"]
    cfg = load_config(CONFIG, sizes)
    budget_end = START + args.budget_s
    variants = {}
    for i, (name, router) in enumerate(VARIANTS.items()):
        # each variant gets an equal share of what is left of the budget, its model build included
        stop_at = time.perf_counter() + (budget_end - time.perf_counter()) / (len(VARIANTS) - i)
        variants[name] = measure(load_config(CONFIG, [*sizes, f"model.moe.router={router}"]), arch, device,
                                 args.batch, args.seq_len, args.warmup, args.steps, stop_at)
        gc.collect()   # the LM and optimizer of this variant go before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    moe, one = variants["moe"], variants["one_lora"]
    ratios = {"step_time": significant(moe["step_time_s_median"] / one["step_time_s_median"]),
              "adapter_params": significant(moe["adapter_params"] / one["adapter_params"])}
    if device.type == "cuda":
        ratios["peak_memory"] = significant(moe["peak_memory_gib"] / one["peak_memory_gib"])
    lora = cfg.model.lora
    return {
        "smoke": args.smoke,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)",
        "gpu_memory_gib": (significant(torch.cuda.get_device_properties(device).total_memory / 2**30)
                           if device.type == "cuda" else None),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                     "peft": peft.__version__},
        "machine": machine(),
        "config": str(CONFIG.relative_to(ROOT)),
        "architecture": {"name": "tiny Llama" if args.smoke else f"{ARCH_8B.name} (random weights)",
                         **{k: getattr(arch, k) for k in TINY_ARCH}, "head_dim": arch.head_dim},
        "setup": {"dtype": "bfloat16 (LM); adapters as trixmed and peft create them",
                  "gradient_checkpointing": cfg.model.hf.gradient_checkpointing,
                  "num_experts": cfg.model.moe.num_experts, "top_n": cfg.model.moe.top_n,
                  "lora_rank": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "lora_targets": lora.targets,
                  "micro_batch": args.batch, "seq_len": args.seq_len, "tokens_per_step": args.batch * args.seq_len,
                  "warmup_steps": args.warmup, "timed_steps": args.steps, "optimizer": "AdamW",
                  "lr": cfg.experts.lr, "grad_clip": cfg.experts.grad_clip, "budget_s": args.budget_s,
                  "num_medications": N_MED},
        "variants": variants,
        "moe_over_one_lora": ratios,
        "wall_s": significant(time.perf_counter() - START),
    }


def markdown(r: dict[str, Any]) -> str:
    s, a = r["setup"], r["architecture"]
    lines = [
        "# Bare-GPU check: MoE-LoRA against one LoRA (benchmarks/gpu_check.py)", "",
        f"{r['date']}, {r['device']}, torch {r['versions']['torch']}, transformers {r['versions']['transformers']}, "
        f"peft {r['versions']['peft']}, CPU {r['machine']['cpu']}; whole command {r['wall_s']} s.", "",
        f"{a['name']}: {a['num_hidden_layers']} layers, hidden {a['hidden_size']}; bf16, gradient checkpointing "
        f"{'on' if s['gradient_checkpointing'] else 'off'}; LoRA r{s['lora_rank']} on {', '.join(s['lora_targets'])}; "
        f"micro-batch {s['micro_batch']} × {s['seq_len']} tokens; {s['warmup_steps']} warm-up + up to "
        f"{s['timed_steps']} timed AdamW steps per variant.", "",
        "| variant | timed steps | step s (median) | tokens/s | peak GiB | adapter params | last loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in (("moe", f"MoE-LoRA ({s['num_experts']} experts, top-{s['top_n']})"), ("one_lora", "one LoRA (w/o MoE)")):
        v = r["variants"][name]
        peak = "–" if v["peak_memory_gib"] is None else v["peak_memory_gib"]
        lines.append(f"| {label} | {v['timed_steps']}{' (budget)' if v['stopped_by_budget'] else ''} | "
                     f"{v['step_time_s_median']} | {v['tokens_per_s']:,.0f} | {peak} | {v['adapter_params']:,} | {v['losses'][-1]} |")
    ratio = r["moe_over_one_lora"]
    lines += ["", f"MoE ÷ one LoRA: step time **{ratio['step_time']}**"
              + (f", peak memory {ratio['peak_memory']}" if "peak_memory" in ratio else "")
              + f", adapter parameters {ratio['adapter_params']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_output_args(ap, "gpu_check.json")
    # defaults: GPU run / --smoke
    ap.add_argument("--steps", type=int, help="timed optimizer steps per variant (20 / 2)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (3 / 1)")
    ap.add_argument("--batch", type=int, help="sequences per step (the config's experts.micro_batch_size / 2)")
    ap.add_argument("--seq-len", type=int, help="tokens per sequence (the config's model.hf.max_length / 32)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="bound on the whole command: timed loops stop early past it (default 420)")
    args = ap.parse_args(argv)
    from trixmed.config import load_config

    paper = load_config(CONFIG)
    for name, full, smoke in (("steps", 20, 2), ("warmup", 3, 1), ("batch", paper.experts.micro_batch_size, 2),
                              ("seq_len", paper.model.hf.max_length, 32)):
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/gpu_check.py: no CUDA device on this machine: nothing measured, no results written "
              "(--smoke runs the same code on CPU with a tiny Llama)", file=sys.stderr)
        return 1
    if args.smoke:
        # on a shared CI machine torch's default thread pool, oversubscribed, spin-waits: a tiny
        # step took 14 s with 2 threads and 0.03 s with 1 on 2 busy cores
        torch.set_num_threads(1)
    report = run(args, torch.device("cpu" if args.smoke else "cuda"))
    bad = [name for name, v in report["variants"].items() if not all(map(math.isfinite, v["losses"]))]
    shown = {name: {k: v[k] for k in ("step_time_s_median", "tokens_per_s", "peak_memory_gib", "timed_steps")}
             for name, v in report["variants"].items()}
    out = write_report(args, report, {**shown, "moe_over_one_lora": report["moe_over_one_lora"], "wall_s": report["wall_s"]})
    out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(f"wrote {out.with_suffix('.md')}")
    if bad:
        print(f"benchmarks/gpu_check.py: non-finite loss in {', '.join(bad)} (results written)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
