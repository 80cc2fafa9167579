"""The edit stage: FLAME's list-wise editor over a trained and evaluated run (`editor.enabled`).

It starts from the sets the evaluate stage decided (its threshold and α, read back from
eval/metrics.json), trains the editor on the training split (trixmed/train/editor_fit.py), keeps
the epoch with the best validation Jaccard, and scores the edited test sets with the evaluate
stage's own bootstrap. Its results live in editor/, not in eval/metrics.json: the evaluate stage's
output is this stage's input, and writing into it would change the hash that says it is current.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from trixmed.config import Config, to_dict
from trixmed.console import Console
from trixmed.data.dataset import Dataset
from trixmed.io import read_json, write_json
from trixmed.run_dir import RunDir

EDITOR_FILE = "editor.json"
SPLITS = ("train", "val", "test")


def run_edit(cfg: Config, rd: RunDir, out: Path, console: Console) -> dict[str, Any]:
    """Train, choose on validation and score the editor; write everything into `out` (staging)."""
    from trixmed.eval.metrics import multilabel_metrics, summarize
    from trixmed.eval.predictions import write_predictions
    from trixmed.eval.selection import read_choices, score_test
    from trixmed.models.editor import save_editor
    from trixmed.pipeline.predict import model_predictions
    from trixmed.train.editor_fit import EditorData, edit_greedy, fit_editor

    ecfg = cfg.editor
    ds = Dataset(rd.dataset)
    ddi = ds.ddi
    choices = read_choices(rd.metrics, "the edit stage")
    alpha = choices.ddi_alpha if ecfg.ddi_alpha is None else float(ecfg.ddi_alpha)
    preds = {split: model_predictions(cfg, rd, ds, split) for split in SPLITS}
    truth = {split: ds.multi_hot([s.target for s in p.samples]).astype(bool) for split, p in preds.items()}
    data = {split: EditorData.of(p.pooled, p.probs, choices.decide(p.probs, ddi), truth[split]) for split, p in preds.items()}
    val_patients = np.array([s.patient_id for s in preds["val"].samples])

    def val_jaccard(sets: np.ndarray) -> float:
        return summarize(multilabel_metrics(truth["val"], sets, None, ddi), val_patients, cfg.eval.average)["jaccard"]

    console.line(f"[edit] editor on {len(data['train'])} training visits from the point-wise sets (threshold "
                 f"{choices.threshold:g}, decoder α {choices.ddi_alpha:g}); φ = Jaccard − {alpha:g}·DDI − "
                 f"{ecfg.refusal_weight:g}·refusal; {ecfg.sft_epochs} SFT + {ecfg.grpo_epochs} GRPO epochs")
    t0 = time.perf_counter()
    started = False

    def progress(position: int, total: int, postfix: dict[str, Any]) -> None:
        nonlocal started
        if not started:
            console.start_bar("edit", total=total)
            started = True
        console.advance_bar(position, **postfix)

    try:
        policy, history, kept = fit_editor(data["train"], data["val"], ddi, ecfg, alpha=alpha, threshold=choices.threshold,
                                           seed=cfg.seed, score=val_jaccard, progress=progress)
    finally:
        console.close_bar()
    train_s = time.perf_counter() - t0
    save_editor(policy, out / "model")

    edited, counts = {}, {}
    for split in ("val", "test"):
        sets, adds, removes = edit_greedy(policy, data[split], ecfg.max_edits)
        edited[split] = sets.numpy()
        counts[split] = (adds.numpy(), removes.numpy())
        p = preds[split]
        write_predictions(out / rd.predictions(split).name, [s.visit_key for s in p.samples], p.probs, ds.vocab.med, edited[split])
    adds, removes = counts["test"]
    test = preds["test"]
    n_patients = len({s.patient_id for s in test.samples})
    pointwise = read_json(rd.metrics)["metrics"]
    block = {
        "ddi_alpha": alpha, "ddi_alpha_from": "eval (the run's chosen decoder α)" if ecfg.ddi_alpha is None else "editor.ddi_alpha",
        "refusal_weight": ecfg.refusal_weight, "step_weight": ecfg.step_weight, "max_edits": ecfg.max_edits,
        "kept": kept, "val_jaccard_pointwise": val_jaccard(data["val"].start.numpy()),
        "edits_per_visit": float((adds + removes).mean()), "edits_per_patient": float((adds + removes).sum() / n_patients),
        "adds": int(adds.sum()), "removes": int(removes.sum()),
        "visits_edited": int(((adds + removes) > 0).sum()),
        "refusals": int((~edited["test"].any(1) & data["test"].start.numpy().any(1)).sum()),
        "pointwise": {k: {"mean": v["mean"], "std": v["std"]} for k, v in pointwise.items()},
        "train_s": round(train_s, 1),
    }
    write_json(out / EDITOR_FILE, {"editor": to_dict(ecfg), "seed": cfg.seed, "ddi_alpha": alpha, "threshold": choices.threshold,
                                   "decoder_ddi_alpha": choices.ddi_alpha, "kept": kept, "history": history})
    result = score_test(ds, cfg.eval, test.samples, test.probs, edited["test"], out, rd.metrics.name, rd.metrics_table.name,
                        {"model": "FLAME editor", "threshold": choices.threshold, "decoder_ddi_alpha": choices.ddi_alpha,
                         "selected_on": "val", "editor": block})
    m = result["metrics"]
    console.line(f"[edit] kept {kept['phase']} epoch {kept['epoch']} (val Jaccard {kept['val_jaccard']:.4f}, point-wise "
                 f"{block['val_jaccard_pointwise']:.4f}); test Jaccard {m['jaccard']['mean']:.4f} (point-wise "
                 f"{pointwise['jaccard']['mean']:.4f}), DDI {m['ddi_rate']['mean']:.4f}, "
                 f"{block['edits_per_patient']:.2f} edits per patient ({block['adds']} adds, {block['removes']} removes)")
    return {"kept": f"{kept['phase']} {kept['epoch']}", "ddi_alpha": alpha, "edits_per_patient": round(block["edits_per_patient"], 4),
            **{k: v["mean"] for k, v in m.items()}}


def edit_patient(rd: RunDir, ds: Dataset, patient: np.ndarray, probs: np.ndarray, start: np.ndarray) -> list[dict[str, Any]]:
    """The trained editor's edits of one decided set [M] (`patient` [H], `probs` [M]), in order:
    each drug with its point-wise probability and the drugs of the set it interacts with, as the
    set stood when the edit was made. At most the `max_edits` the editor was trained with."""
    import torch

    from trixmed.models.editor import load_editor, rollout

    policy = load_editor(rd.editor_model)
    r = rollout(policy, torch.as_tensor(patient[None], dtype=torch.float32), torch.as_tensor(probs[None], dtype=torch.float32),
                torch.as_tensor(start[None], dtype=torch.bool), read_json(rd.editor / EDITOR_FILE)["editor"]["max_edits"],
                greedy=True)
    meds, n_med = ds.vocab.med, len(ds.vocab.med)
    adj = (ds.ddi != 0)
    adj = adj | adj.T
    steps = []
    for step, a in enumerate(r.actions[:, 0].tolist()):
        if a < 0 or a == 2 * n_med:
            break
        j = a % n_med
        before = r.states[step, 0].numpy()
        partners = [meds[k] for k in np.flatnonzero(before & adj[j]) if k != j]
        steps.append({"action": "add" if a < n_med else "remove", "code": meds[j], "probability": round(float(probs[j]), 6),
                      "interacts_with": partners})
    return steps
