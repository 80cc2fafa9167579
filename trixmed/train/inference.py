"""Batched, gradient-free passes of a trained model over samples (features, predictions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from trixmed.config import Config
from trixmed.data.dataset import Sample, Vocab


@torch.no_grad()
def infer(
    model: torch.nn.Module,
    collate: Callable[..., dict[str, Any]],
    samples: list[Sample],
    clusters: list[int] | None = None,
    batch_size: int = 64,
    progress: str | None = None,
    device: torch.device | None = None,
) -> dict[str, np.ndarray]:
    """probs [N, n_med], pooled [N, H] and, for routed models, gates [N, E]. With `device`, the
    batches move there (the model must already be on it)."""
    from tqdm.auto import tqdm

    model.eval()
    probs, pooled, gates = [], [], []
    starts = range(0, len(samples), batch_size)
    # disable=None: a bar only on a terminal, never in log files
    for start in tqdm(starts, desc=progress, disable=True if progress is None else None, mininterval=5):
        chunk = samples[start:start + batch_size]
        cl = clusters[start:start + batch_size] if clusters is not None else None
        batch = collate(chunk, cl)
        if device is not None:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        out = model(batch)
        probs.append(torch.sigmoid(out.logits.float()).cpu().numpy())
        pooled.append(out.pooled.float().cpu().numpy())
        if out.gates is not None:
            gates.append(out.gates.float().cpu().numpy())
    result = {"probs": np.concatenate(probs), "pooled": np.concatenate(pooled)}
    if gates:
        result["gates"] = np.concatenate(gates)
    return result


def collator_for(cfg: Config, vocab: Vocab, phase: str | None = None) -> Callable[..., dict[str, Any]]:
    """The model's collator; the hf backbone gets its tokenizer, and LM targets only in warm-up
    training with λ_LM > 0 (`phase` None = inference)."""
    from trixmed.models import build_collator

    if cfg.model.backbone == "codes":
        return build_collator(cfg, vocab)
    from trixmed.models.checkpoint import load_tokenizer

    with_output = phase == "warmup" and cfg.warmup.lm_weight > 0
    return build_collator(cfg, vocab, tokenizer=load_tokenizer(cfg.model.hf), with_output=with_output)
