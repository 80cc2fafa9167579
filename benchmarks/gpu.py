"""GPU readiness: the experts phase of the real engine on a random-weight Llama, on this machine's GPUs.

    python benchmarks/gpu.py [--steps 30]    # CUDA: Llama-3.1-8B architecture (configs/arch), or the
                                             # 1B-class Llama-3.2 architecture where a GPU has < 40 GiB
    python benchmarks/gpu.py --smoke         # the tiny Llama, on CPU where there is no GPU: the same path

What runs is `trixmed`'s own pipeline over the bundled MIMIC-III demo, as configs/llama3_8b_moelora.yaml
sets it up (MoE-LoRA, 8 experts, top-2, ZeRO-3, bf16, gradient checkpointing, narratives up to
model.hf.max_length tokens): prepare → an untrained warm-up model (saving one 8B training phase:
only the experts phase is measured) → extract → stratify → experts on Ray Train + DeepSpeed with
one worker per GPU, for about --steps optimizer steps. The model is the architecture with random
weights, written to a temporary directory with a byte-level BPE tokenizer trained on the
narratives: nothing is downloaded, no real weights are needed, and the speed is the real one.

Writes benchmarks/results/gpu.json: tokens/s per GPU (real, unpadded narrative tokens), step
time, peak GPU memory (nvidia-smi's memory.used, the most any GPU showed while the phase ran) and
the setup. Without CUDA (and without --smoke) it says so and exits with status 1, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import ROOT, add_output_args, machine, write_report

CONFIG = ROOT / "configs" / "llama3_8b_moelora.yaml"
ARCH_8B = ROOT / "configs" / "arch" / "llama3_1_8b_config.json"
ARCH_1B = ROOT / "configs" / "arch" / "llama3_2_1b_config.json"
MIN_GIB_FOR_8B = 40   # 8B bf16 weights (16 GB) + ZeRO-3 working set + activations at 2048 tokens
# the bundled demo as the main job reads it (configs/demo_cpu.yaml): every patient, random split
DEMO_DATA = ["data.source=mimic3", "data.path=null", "data.processing.min_visits=1",
             "data.split.kind=random", "data.split.ratios=[0.6,0.2,0.2]"]


def narratives(cfg: Any) -> list[str]:
    """The demo's narratives (prompt + medications), the tokenizer's training corpus."""
    from trixmed.data.dataset import Dataset
    from trixmed.run_dir import RunDir
    from trixmed.text.narrative import render
    from trixmed.text.titles import CodeTitles

    titles = CodeTitles.default()
    texts = []
    for s in Dataset(RunDir(cfg.run_dir).dataset).samples():
        n = render(s, titles, token_budget=cfg.text.token_budget, instruction=cfg.text.instruction)
        texts.append(n.prompt + " " + n.output)
    return texts


def save_random_llama(path: Path, arch: Path, corpus: list[str]) -> Path:
    """A random-weight LlamaForCausalLM of `arch` (bf16) and a BPE tokenizer trained on `corpus`.

    The model is laid out on the meta device and its bf16 weights made and initialised in host
    memory, so the driver never allocates GPU memory (an 8B model built on a GPU in fp32 took 32 GB
    of the first GPU, which the caching allocator kept while the workers trained)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=16000, special_tokens=["<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(path)
    config = AutoConfig.from_pretrained(str(arch))
    config.bos_token_id, config.eos_token_id = 0, 1   # the trained tokenizer's ids (the vocabulary stays the architecture's)
    torch.manual_seed(0)
    with torch.device("meta"):   # transformers skips the initialisation of a meta model: it is done below
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model = model.to_empty(device="cpu")
    model.init_weights()
    model.save_pretrained(path, safe_serialization=True)
    del model
    return path


class GpuMemoryPeak:
    """The highest memory.used any GPU shows while the block runs (nvidia-smi every 0.5 s): the
    training workers are other processes, so the driver cannot ask torch for their peak."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                self.peak_mib = max([self.peak_mib, *(int(x) for x in out.stdout.split())])
            self._stop.wait(0.5)

    def __enter__(self) -> "GpuMemoryPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def token_counts(cfg: Any) -> tuple[int, int]:
    """(real tokens of one pass over the experts phase's training samples, samples), as the
    phase's collator cuts them (model.hf.max_length)."""
    from trixmed.data.dataset import Dataset
    from trixmed.run_dir import RunDir
    from trixmed.train.inference import collator_for
    from trixmed.train.trainer import phase_samples

    ds = Dataset(RunDir(cfg.run_dir).dataset)
    train, _ = phase_samples(cfg, ds, "experts")
    collate = collator_for(cfg, ds.vocab, "experts")
    tokens = sum(int(collate(train[i:i + 16])["attention_mask"].sum()) for i in range(0, len(train), 16))
    return tokens, len(train)


def gpu_inventory() -> list[tuple[str, float]]:
    """(name, memory in GiB) of each GPU, from nvidia-smi: asking torch would create a CUDA context,
    and GPU memory with it, in the driver."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits",
                          *(["-i", visible] if visible else [])], capture_output=True, text=True, check=True).stdout
    return [(name.strip(), int(mib) / 1024) for name, mib in (line.rsplit(",", 1) for line in out.strip().splitlines())]


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from trixmed.config import load_config
    from trixmed.pipeline.stages import run_stage
    from trixmed.testing import save_tiny_llama, save_untrained_warmup
    from trixmed.train.ray_session import ray_session

    cuda = torch.cuda.is_available()
    inventory = gpu_inventory() if cuda else []
    gpus = len(inventory)
    gib = min(mem for _, mem in inventory) if gpus else 0.0
    workers = gpus or 2
    base = [*DEMO_DATA, f"run_dir={work / 'run'}", f"distributed.num_workers={workers}",
            f"distributed.use_gpu={'true' if cuda else 'false'}", "distributed.max_failures=0",
            "extract.actors=1", f"extract.gpus_per_actor={1 if cuda else 0}", "extract.cpus_per_actor=1",
            "stratify.num_workers=1", "stratify.num_clusters=8", "stratify.pca_components=8",
            # no accumulation: one optimizer step = one micro-batch per worker
            "experts.micro_batch_size=2", f"experts.effective_batch_size={2 * workers}", "experts.warmup_steps=2"]
    if args.smoke:
        base += ["model.hf.max_length=256", "text.token_budget=200", "distributed.stage3_param_persistence_threshold=0",
                 "distributed.cpus_per_worker=0.5"]
    else:
        base += [f"distributed.cpus_per_worker={max(1, (torch.get_num_threads() // max(gpus, 1)) - 1)}"]
    # the demo first (its narratives train the tokenizer), with a placeholder model path
    cfg = load_config(CONFIG, [*base, f"model.hf.path={work / 'model'}"])
    run_stage(cfg, "prepare")
    corpus = narratives(cfg)
    if args.smoke:
        arch_name = "tiny Llama (hidden 32, 2 layers)"
        save_tiny_llama(work / "model", corpus, vocab_size=400, max_positions=1024)
    else:
        arch = ARCH_8B if gib >= MIN_GIB_FOR_8B else ARCH_1B
        arch_name = f"{arch.name} (random weights)"
        save_random_llama(work / "model", arch, corpus)
    tokens, samples = token_counts(cfg)
    steps_per_epoch = math.ceil(samples / cfg.experts.effective_batch_size)
    epochs = max(1, math.ceil(args.steps / steps_per_epoch))
    cfg = load_config(CONFIG, [*base, f"model.hf.path={work / 'model'}", f"experts.epochs={epochs}"])
    save_untrained_warmup(cfg)
    with ray_session(cfg):
        for stage in ("extract", "stratify"):
            run_stage(cfg, stage)
        t0 = time.perf_counter()
        if cuda:
            with GpuMemoryPeak() as peak:
                run_stage(cfg, "experts")
            peak_mib = peak.peak_mib
        else:
            run_stage(cfg, "experts")
            peak_mib = None
        phase_s = time.perf_counter() - t0
    history = json.loads((work / "run" / "experts" / "history.json").read_text())
    epochs_run = history["epochs"]
    # the first epoch carries compilation and allocator warm-up: steady state is the rest, when there is a rest
    steady = epochs_run[1:] or epochs_run
    train_s = sum(e["train_s"] for e in steady)
    steps = steps_per_epoch * len(steady)
    return {
        "device": inventory[0][0] if cuda else "CPU (smoke)",
        "gpus": gpus,
        "gpu_memory_gib": round(gib, 1),
        "architecture": arch_name,
        "setup": {"zero_stage": cfg.distributed.zero_stage, "precision": cfg.distributed.precision,
                  "gradient_checkpointing": cfg.model.hf.gradient_checkpointing, "experts": cfg.model.moe.num_experts,
                  "top_n": cfg.model.moe.top_n, "lora_rank": cfg.model.lora.rank, "max_length": cfg.model.hf.max_length,
                  "micro_batch_per_gpu": cfg.experts.micro_batch_size, "world_size": history["world_size"]},
        "train_samples": samples,
        "mean_tokens_per_sample": tokens / samples,
        "steps_measured": steps,
        "epochs": len(epochs_run),
        "step_time_s": train_s / steps,
        "tokens_per_s_per_gpu": tokens * len(steady) / train_s / history["world_size"],
        "samples_per_s": samples * len(steady) / train_s,
        "peak_gpu_memory_mib": peak_mib,
        "experts_phase_wall_s": phase_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_output_args(parser, "gpu.json")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of the experts phase to time (default 30)")
    parser.add_argument("--keep", type=Path, help="keep the work directory (run dir, random model) here")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print("benchmarks/gpu.py: no CUDA device on this machine: nothing measured, no results written "
              "(--smoke runs the same path on CPU with a tiny model)", file=sys.stderr)
        return 1
    if args.smoke:
        args.steps = min(args.steps, 4)
    work = Path(tempfile.mkdtemp(prefix="trixmed-bench-gpu-"))
    try:
        result = run(args, work)
    finally:
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    report = {"smoke": args.smoke, "config": str(CONFIG.relative_to(ROOT)), "machine": machine(), "result": result}
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items() if k != "setup"}
    write_report(args, report, shown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
