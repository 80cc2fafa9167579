"""Multi-hot baselines: features, the two models and their training loop.

Features of a sample (its last visit is the current one, whose medications are the target):

    [current diagnoses | current procedures | earlier medications | earlier diagnoses | earlier procedures]

each a multi-hot block over the dataset's vocabulary (earlier = the union over every earlier visit).
`lr` is one linear layer (a logistic regression per drug, trained jointly); `mlp` is
Linear → ReLU → Dropout → Linear. Training is plain single-process PyTorch (these models are
small), full-batch validation after each epoch: the epoch with the best validation Jaccard (at the
threshold validation prefers) is kept; the decision threshold and α are then chosen on validation
by `trixmed.eval.selection` exactly as for TRIXMED.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trixmed.baselines import BASELINES
from trixmed.config import BaselinesConfig
from trixmed.data.dataset import Sample, Vocab
from trixmed.eval.metrics import choose_threshold, multilabel_metrics

# (code kind, which visits): the feature blocks, in order
BLOCKS = (("diag", "current"), ("proc", "current"), ("med", "earlier"), ("diag", "earlier"), ("proc", "earlier"))


@dataclass
class MultiHotFeatures:
    """Column indices of each sample's active features (kept sparse; batches are densified)."""

    width: int
    columns: list[np.ndarray]

    @classmethod
    def build(cls, samples: list[Sample], vocab: Vocab) -> MultiHotFeatures:
        offsets, width = {}, 0
        for kind, when in BLOCKS:
            offsets[kind, when] = width
            width += len(getattr(vocab, kind))
        index = {kind: vocab.index(kind) for kind in ("diag", "proc", "med")}
        columns = []
        for s in samples:
            cols = set()
            for kind, when in BLOCKS:
                visits = (s.current,) if when == "current" else s.history
                cols |= {offsets[kind, when] + index[kind][c] for v in visits for c in getattr(v, kind)}
            columns.append(np.fromiter(sorted(cols), dtype=np.int64))
        return cls(width, columns)

    def dense(self, rows: np.ndarray) -> torch.Tensor:
        out = torch.zeros(len(rows), self.width)
        for r, i in enumerate(rows):
            out[r, torch.from_numpy(self.columns[i])] = 1.0
        return out


def build_baseline(name: str, width: int, n_med: int, cfg: BaselinesConfig) -> nn.Module:
    if name == "lr":
        return nn.Linear(width, n_med)
    if name == "mlp":
        return nn.Sequential(nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, n_med))
    raise ValueError(f"unknown baseline {name!r}; one of {', '.join(BASELINES)}")


@torch.no_grad()
def predict(model: nn.Module, feats: MultiHotFeatures, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    rows = np.arange(len(feats.columns))
    return np.concatenate([torch.sigmoid(model(feats.dense(rows[i:i + batch_size]))).numpy()
                           for i in range(0, len(rows), batch_size)]) if len(rows) else np.zeros((0, 0))


def train_baseline(name: str, feats: dict[str, MultiHotFeatures], y: dict[str, np.ndarray],
                   cfg: BaselinesConfig, seed: int, ddi: np.ndarray,
                   on_epoch: Callable[[dict], None] | None = None) -> tuple[nn.Module, list[dict]]:
    """Train `name` on the train features, keeping the epoch with the best validation Jaccard;
    `feats[split]` and `y[split]` (multi-hot truth) for train and val. Returns the model (best
    epoch's weights) and the per-epoch history."""
    torch.manual_seed(seed)
    model = build_baseline(name, feats["train"].width, y["train"].shape[1], cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    target = torch.from_numpy(y["train"].astype(np.float32))
    history: list[dict] = []
    best, best_state, bad = -1.0, None, 0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        perm = np.random.default_rng([seed, epoch]).permutation(len(feats["train"].columns))
        losses = []
        for i in range(0, len(perm), cfg.batch_size):
            rows = perm[i:i + cfg.batch_size]
            loss = loss_fn(model(feats["train"].dense(rows)), target[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        probs = predict(model, feats["val"])
        threshold = float(choose_threshold(y["val"], probs))
        val_j = float(multilabel_metrics(y["val"], probs >= threshold, None, ddi)["jaccard"].mean())
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_jaccard": val_j,
                  "val_threshold": threshold, "train_s": round(time.perf_counter() - t0, 2)}
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if val_j > best:
            best, best_state, bad = val_j, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if 0 < cfg.patience <= bad:
                break
    model.load_state_dict(best_state)
    return model, history
