"""Tiny stand-ins for real data and models, shared by tests and the benchmarks' `--smoke` modes.

Nothing here is downloaded: datasets are written from a few synthetic visits, configs shrink the
model, and the tiny Llama is a random-weight model with a tokenizer trained on the given corpus.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trixmed.config import Config, load_config
from trixmed.data.dataset import VISIT_COLUMNS, Sample, Visit, Vocab, visit_key
from trixmed.data.drugs import drug_table, write_drugs
from trixmed.io import write_json
from trixmed.run_dir import DRUGS_FILE, RunDir

# --------------------------------------------------------------------------------------------
# Datasets


def make_dataset_dir(
    root: Path,
    visits: Sequence[Mapping[str, Any]] | Any,
    vocab: Mapping[str, Sequence[str]],
    ddi: np.ndarray | Sequence[Sequence[int]] | None = None,
    card: Mapping[str, Any] | None = None,
    smiles: Mapping[str, list[str]] | None = None,
) -> Path:
    """Write a dataset directory following trixmed/data/dataset.py, without running `prepare`.

    `visits`: rows with patient_id, visit_order, split, diag, proc, med (visit_key is filled in
    when absent). Codes must be in `vocab` ({"diag": [...], "proc": [...], "med": [...]}).
    `ddi` defaults to no interactions; `smiles` (medication → SMILES) to no molecules.
    Returns `root` (created if needed).
    """
    import pandas as pd

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(list(visits) if not isinstance(visits, pd.DataFrame) else visits).copy()
    df["patient_id"] = df["patient_id"].astype(str)
    df["visit_order"] = df["visit_order"].astype("int64")
    if "visit_key" not in df:
        df["visit_key"] = [visit_key(p, o) for p, o in zip(df["patient_id"], df["visit_order"])]
    for kind in ("diag", "proc", "med"):
        known = set(vocab[kind])
        df[kind] = [list(codes) for codes in df[kind]]
        bad = [c for codes in df[kind] for c in codes if c not in known]
        if bad:
            raise ValueError(f"{kind} code {bad[0]!r} is not in the vocab")
    df[list(VISIT_COLUMNS)].to_parquet(root / "visits.parquet", index=False)
    write_json(root / "vocab.json", {k: list(vocab[k]) for k in ("diag", "proc", "med")})
    n_med = len(vocab["med"])
    matrix = np.zeros((n_med, n_med), dtype=np.uint8) if ddi is None else np.asarray(ddi, dtype=np.uint8)
    if matrix.shape != (n_med, n_med):
        raise ValueError(f"ddi must be [{n_med}, {n_med}], got {matrix.shape}")
    np.savez(root / "ddi.npz", ddi=matrix)
    write_drugs(root / DRUGS_FILE, drug_table(list(vocab["med"]), smiles))
    if card is not None:
        write_json(root / "card.json", dict(card))
    return root


def make_tiny_dataset(root: Path, *, patients: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    diag = [f"D{i:02d}" for i in range(12)]
    proc = [f"P{i:02d}" for i in range(6)]
    med = [f"M{i:02d}" for i in range(10)]
    rows = []
    n_train, n_test = int(patients * 2 / 3), (patients - int(patients * 2 / 3)) // 2
    for p in range(patients):
        split = "train" if p < n_train else "test" if p < n_train + n_test else "val"
        for v in range(int(rng.integers(1, 4))):
            d = sorted(rng.choice(len(diag), size=int(rng.integers(1, 4)), replace=False).tolist())
            pr = sorted(rng.choice(len(proc), size=int(rng.integers(0, 3)), replace=False).tolist())
            m = sorted({x % len(med) for x in d} | ({9} if 0 in pr else set()))
            rows.append({
                "patient_id": f"p{p}", "visit_order": v, "visit_key": f"p{p}:{v}", "split": split,
                "diag": [diag[i] for i in d], "proc": [proc[i] for i in pr], "med": [med[i] for i in m],
            })
    ddi = np.zeros((len(med), len(med)), dtype=np.uint8)
    ddi[0, 1] = ddi[1, 0] = ddi[2, 5] = ddi[5, 2] = 1
    return make_dataset_dir(RunDir(root).dataset, rows, {"diag": diag, "proc": proc, "med": med}, ddi)


TINY_OVERRIDES = [
    "model.codes.d_model=32", "model.codes.n_layers=1", "model.codes.n_heads=2", "model.codes.dropout=0.0",
    "model.codes.title_words=false", "model.lora.rank=4", "model.moe.num_experts=4", "model.moe.top_n=2",
    "warmup.fraction=0.5", "warmup.epochs=2", "warmup.lr=0.01", "warmup.warmup_steps=2",
    "warmup.micro_batch_size=4", "warmup.effective_batch_size=8",
    "experts.epochs=2", "experts.lr=0.01", "experts.warmup_steps=2",
    "experts.micro_batch_size=4", "experts.effective_batch_size=8",
    "stratify.pca_components=4", "stratify.num_clusters=3",
    "distributed.num_workers=2", "distributed.zero_stage=2",
    "eval.bootstrap_rounds=3",
]


def save_untrained_warmup(cfg: Config, seed: int = 0) -> Path:
    """A seeded, untrained warm-up model saved where `cfg.run_dir` keeps it (the dataset must be
    there): all that feature extraction reads, without training one."""
    import torch

    from trixmed.data.dataset import Dataset
    from trixmed.models import build_model, save_model

    rd = RunDir(cfg.run_dir)
    torch.manual_seed(seed)
    save_model(build_model(cfg, Dataset(rd.dataset).vocab, phase="warmup"), rd.model("warmup"))
    return rd.model("warmup")


# --------------------------------------------------------------------------------------------
# Model-level stand-ins


class FakeTitles:
    """Titles with shared words so title-word enrichment has something to share."""

    def title_words(self, kind: str, code: str) -> list[str]:
        return [] if code.endswith("9") else [kind, f"w{code[-1]}", "common"]

    def title(self, kind: str, code: str) -> str:
        return " ".join(self.title_words(kind, code)) or code

    def diag(self, code: str) -> str:
        return self.title("diag", code)

    def proc(self, code: str) -> str:
        return self.title("proc", code)

    def med(self, code: str) -> str:
        return self.title("med", code)


def make_vocab() -> Vocab:
    return Vocab(diag=[f"D{i}" for i in range(12)], proc=[f"P{i}" for i in range(7)], med=[f"M{i}" for i in range(10)])


def make_samples(vocab: Vocab, n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        visits = tuple(
            Visit(tuple(rng.sample(vocab.diag, rng.randint(1, 4))), tuple(rng.sample(vocab.proc, rng.randint(0, 3))),
                  tuple(rng.sample(vocab.med, rng.randint(1, 4))))
            for _ in range(rng.randint(1, 4))
        )
        out.append(Sample(f"p{i}:{len(visits) - 1}", f"p{i}", "train", visits))
    return out


def tiny_config(*overrides: str) -> Config:
    base = ["model.codes.d_model=16", "model.codes.n_heads=2", "model.codes.dropout=0.0", "model.lora.rank=2",
            "model.moe.num_experts=4", "model.moe.top_n=2"]
    return load_config(None, base + list(overrides))


# --------------------------------------------------------------------------------------------
# A tiny Hugging Face model


def save_tiny_llama(
    path: str | Path,
    corpus: Iterable[str],
    *,
    vocab_size: int = 320,
    hidden_size: int = 32,
    num_layers: int = 2,
    max_positions: int = 1024,
    seed: int = 0,
) -> Path:
    """A random-weight `LlamaForCausalLM` and a byte-level BPE tokenizer trained on `corpus`,
    saved with `save_pretrained` so they load through the same `from_pretrained` path as LLaMA."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def slurm_unavailable(reason: str) -> None:
    """A SLURM test that cannot run here skips, except where SLURM is expected (CI: .ci/run sets
    TRIXMED_REQUIRE_SLURM=1): there it fails, since a skip would pass CI having checked nothing."""
    import pytest

    if os.environ.get("TRIXMED_REQUIRE_SLURM", "0") not in ("", "0"):
        pytest.fail(f"SLURM is expected here (TRIXMED_REQUIRE_SLURM=1) but cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def spawn_gloo_ranks(fn: Any, world: int, *args: Any) -> None:
    """`fn(rank, *args)` in `world` processes (torch.multiprocessing), joined to one gloo group on a
    free local port through DeepSpeed, one torch thread each: DeepSpeed's CPU ranks without Ray."""
    import torch.multiprocessing as mp

    mp.spawn(_gloo_rank, args=(world, free_local_port(), fn, args), nprocs=world, join=True)


def free_local_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_local_gloo(rank: int, world: int, port: int) -> None:
    """Join this process to a gloo group of `world` ranks on 127.0.0.1:`port`, as trixmed's ranks
    join (`join_process_group`), with one torch thread."""
    import torch

    from trixmed.train.deepspeed_strategy import join_process_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    join_process_group(use_gpu=False)


def _gloo_rank(rank: int, world: int, port: int, fn: Any, args: tuple[Any, ...]) -> None:
    import torch.distributed as dist

    join_local_gloo(rank, world, port)
    fn(rank, *args)
    # Past this point the rank has passed. The interpreter's teardown after a DeepSpeed ZeRO-3
    # engine sometimes aborts in a C++ destructor ("terminate called without an active exception",
    # SIGABRT, no Python frame: about 1 run in 4 on 2 cores, with or without the process group
    # destroyed), which mp.spawn reports as the rank's failure: so the rank leaves without it,
    # once every rank is done with the group (unless `fn` ended it).
    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
