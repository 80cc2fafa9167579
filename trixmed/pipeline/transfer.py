"""Zero-shot transfer: a trained run applied, without fine-tuning, to another dataset's test split
and scored by that dataset's own harness (its truth, its DDI matrix).

Vocabularies differ in order and content (MIMIC-III's ICD-9 against MIMIC-IV's mixed ICD-9/10,
131 against 122 ATC-3 classes), so codes are mapped by their string, never by index. A target
code the source model has never seen is left out of the model's input and counted; a target
medication the source cannot predict stays in the truth (a miss) and is counted; a source
medication the target lacks is dropped from the prediction. Patients are routed as any new
patient is (`route_new_patients`), and the threshold and α are the source's, chosen on the
source's validation split (its recorded `Choices`): nothing is chosen on the target.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from trixmed.config import Config
from trixmed.console import Console
from trixmed.data.dataset import Dataset, Sample, Visit, Vocab
from trixmed.errors import TrixmedError
from trixmed.io import atomic_dir
from trixmed.run_dir import RunDir

KINDS = ("diag", "proc", "med")
TOP_UNSEEN = 10


def map_samples(samples: list[Sample], source: Vocab) -> tuple[list[Sample], dict[str, Any]]:
    """Target samples restricted to the codes `source` knows (by string), and what was left out:
    per kind, code occurrences seen / unseen over every visit of the samples, the share unseen and
    the most frequent unseen codes."""
    known = {kind: set(getattr(source, kind)) for kind in KINDS}
    seen, unseen = Counter(), {kind: Counter() for kind in KINDS}
    mapped = []
    for s in samples:
        visits = []
        for v in s.visits:
            kept = {}
            for kind in KINDS:
                codes = getattr(v, kind)
                kept[kind] = tuple(c for c in codes if c in known[kind])
                seen[kind] += len(kept[kind])
                unseen[kind].update(c for c in codes if c not in known[kind])
            visits.append(Visit(kept["diag"], kept["proc"], kept["med"]))
        mapped.append(dataclasses.replace(s, visits=tuple(visits)))
    coverage = {}
    for kind in KINDS:
        missing = sum(unseen[kind].values())
        total = seen[kind] + missing
        coverage[kind] = {"occurrences": total, "unseen": missing, "unseen_share": round(missing / total, 6) if total else 0.0,
                          "unseen_codes": len(unseen[kind]), "top_unseen": unseen[kind].most_common(TOP_UNSEEN)}
    return mapped, coverage


def medication_columns(source: list[str], target: list[str]) -> np.ndarray:
    """For each target medication, its column in the source's vocabulary (-1 where it has none)."""
    index = {c: i for i, c in enumerate(source)}
    return np.array([index.get(c, -1) for c in target], dtype=np.int64)


def transfer(cfg: Config, source_dir: Path, console: Console) -> dict[str, Any]:
    """Score the run at `source_dir` on the test split of the dataset prepared in `cfg.run_dir`;
    writes metrics.json (with the coverage report), metrics.md and predictions_test.jsonl into
    `RunDir(cfg.run_dir).transfer(<source run-dir name>)`."""
    from trixmed.eval.predictions import write_predictions
    from trixmed.eval.selection import choices_record, read_choices, score_test
    from trixmed.models.model import saved_model_config
    from trixmed.pipeline.predict import route_new_patients

    src, dst = RunDir(source_dir), RunDir(cfg.run_dir)
    if src.root.resolve() == dst.root.resolve():
        raise TrixmedError("--from", f"{src.root} is the target run directory itself; transfer needs another run")
    choices = read_choices(src.metrics, "transfer --from")
    src_cfg = dataclasses.replace(cfg, model=saved_model_config(src.model("experts")))
    src_vocab = Dataset(src.dataset).vocab
    target = Dataset(dst.dataset)
    columns = medication_columns(src_vocab.med, target.vocab.med)
    if (columns < 0).all():
        raise TrixmedError(dst.dataset, f"shares no medication with the source run {src.root}")
    samples = target.samples("test")
    mapped, coverage = map_samples(samples, src_vocab)
    console.line(f"[transfer] {src.root} → test split of {dst.dataset}: {len(samples)} visits; unseen codes "
                 + ", ".join(f"{k} {coverage[k]['unseen_share']:.1%}" for k in KINDS))
    out, _, _ = route_new_patients(src_cfg, src, src_vocab, mapped, progress="transfer")
    probs = np.zeros((len(samples), len(target.vocab.med)))
    probs[:, columns >= 0] = out["probs"][:, columns[columns >= 0]]
    decided = choices.decide(probs, target.ddi)
    coverage["target_medications_not_predictable"] = [c for c, j in zip(target.vocab.med, columns) if j < 0]
    coverage["source_medications_dropped"] = sorted(set(src_vocab.med) - set(target.vocab.med))
    with atomic_dir(dst.transfer(src.root.name)) as tmp:
        write_predictions(tmp / dst.predictions("test").name, [s.visit_key for s in samples], probs, target.vocab.med, decided)
        carried = dataclasses.replace(choices, threshold_chosen_on=f"source {choices.threshold_chosen_on}",
                                      ddi_alpha_chosen_on=f"source {choices.ddi_alpha_chosen_on}")
        return score_test(target, cfg.eval, samples, probs, decided, tmp, dst.metrics.name, dst.metrics_table.name,
                          {"source_run": str(src.root), **choices_record(carried), "coverage": coverage})
