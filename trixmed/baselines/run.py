"""One baseline over a prepared run directory: train, choose on validation, score test once, and
write everything into `RunDir.baseline(name)` atomically."""

from __future__ import annotations

import time
from typing import Any

from trixmed.config import Config, to_dict
from trixmed.console import Console
from trixmed.data.dataset import Dataset
from trixmed.eval.selection import SPLITS, select_and_score
from trixmed.io import atomic_dir, write_json
from trixmed.run_dir import RunDir

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "baseline.json"


def run_baseline(cfg: Config, name: str, console: Console) -> dict[str, Any]:
    """Train baseline `name` on the run directory's prepared dataset; returns the test result."""
    from safetensors.torch import save_file

    from trixmed.baselines.multihot import MultiHotFeatures, predict, train_baseline

    rd = RunDir(cfg.run_dir)
    ds = Dataset(rd.dataset)
    samples = {split: ds.samples(split) for split in ("train", *SPLITS)}
    y = {split: ds.multi_hot([s.target for s in rows]).astype(bool) for split, rows in samples.items()}
    console.line(f"[baseline {name}] training on {len(samples['train'])} visits, validation {len(samples['val'])}")
    t0 = time.perf_counter()
    feats = {split: MultiHotFeatures.build(rows, ds.vocab) for split, rows in samples.items()}
    model, history = train_baseline(
        name, feats, y, cfg.baselines, cfg.seed, ds.ddi,
        on_epoch=lambda r: console.line(f"[baseline {name}] epoch {r['epoch']}: loss {r['train_loss']:.4f}  "
                                        f"val jaccard {r['val_jaccard']:.4f}"))
    best = max(history, key=lambda r: r["val_jaccard"])
    scores = {split: (samples[split], predict(model, feats[split])) for split in SPLITS}
    with atomic_dir(rd.baseline(name)) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / MODEL_FILE))
        write_json(tmp / CONFIG_FILE, {"baseline": name, "baselines": to_dict(cfg.baselines), "seed": cfg.seed,
                                       "best_epoch": best["epoch"], "history": history})
        return select_and_score(ds, cfg.eval, scores, tmp, {s: rd.predictions(s).name for s in SPLITS},
                                rd.metrics.name, rd.metrics_table.name, best_epoch=best["epoch"],
                                extra={"model": name, "selected_on": "val", "train_s": round(time.perf_counter() - t0, 1)})
