"""A tiny synthetic dataset directory in the contract of trixmed/data/dataset.py, with learnable
structure (each diagnosis implies a medication) so training measurably reduces the loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers import make_dataset_dir


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
    return make_dataset_dir(Path(root) / "dataset", rows, {"diag": diag, "proc": proc, "med": med}, ddi)


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
