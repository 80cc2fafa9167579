"""The dataset card: the statistics the field's dataset tables print, as JSON and Markdown.

"per-visit" means are true means over visits; "paper-style" averages are SafeDrug's
`statistics()` formula (per-patient union of codes, summed over patients, divided by the number
of visits; max = the largest per-patient union), which is what the papers' tables report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trixmed.data.dataset import SPLITS, Vocab
from trixmed.data.drugs import molecules_line
from trixmed.data.ddi import ddi_rate

_KINDS = ("diag", "proc", "med")


def dataset_card(visits: pd.DataFrame, vocab: Vocab, ddi: np.ndarray, split_kind: str) -> dict:
    """Statistics of a split dataset; `visits` carries a `split` column."""
    n_visits = len(visits)
    per_patient = visits.groupby("patient_id", sort=False)
    visit_counts = per_patient.size()
    med_index = vocab.index("med")
    med_sets = [[med_index[c] for c in codes] for codes in visits["med"]]
    test = (visits["split"] == "test").to_numpy()

    card: dict = {
        "patients": int(len(visit_counts)),
        "visits": int(n_visits),
        "vocab_sizes": vocab.sizes(),
        "visits_per_patient": {"mean": _r(visit_counts.mean()), "max": int(visit_counts.max())},
        "per_visit_mean": {k: _r(visits[k].map(len).mean()) for k in _KINDS},
        "paper_style": {},
        "ddi_pairs": int(np.triu((ddi + ddi.T) > 0, k=1).sum()),
        "ddi_rate_ground_truth": {
            "all": _r(ddi_rate(med_sets, ddi)),
            "test": _r(ddi_rate([s for s, t in zip(med_sets, test) if t], ddi)) if test.any() else None,
        },
        "split": {"kind": split_kind, "leaky": split_kind == "visit-random"},
        "splits": {},
    }
    for kind in _KINDS:
        unions = per_patient[kind].agg(lambda col: len(set().union(*col)))
        card["paper_style"][kind] = {"avg": _r(unions.sum() / n_visits), "max": int(unions.max())}
    for name in SPLITS:
        part = visits[visits["split"] == name]
        card["splits"][name] = {"patients": int(part["patient_id"].nunique()), "visits": int(len(part))}
    return card


def card_markdown(card: dict, title: str) -> str:
    s, pv, ps, dr = card["vocab_sizes"], card["per_visit_mean"], card["paper_style"], card["ddi_rate_ground_truth"]
    test_rate = "n/a" if dr["test"] is None else f"{dr['test']:.4f}"
    lines = [
        f"# Dataset card: {title}",
        "",
        "| statistic | value |",
        "|---|---|",
        f"| patients | {card['patients']} |",
        f"| visits | {card['visits']} |",
        f"| vocabulary diag / proc / med | {s['diag']} / {s['proc']} / {s['med']} |",
        f"| visits per patient, mean (max) | {card['visits_per_patient']['mean']:.2f} ({card['visits_per_patient']['max']}) |",
        f"| codes per visit, mean diag / proc / med | {pv['diag']:.2f} / {pv['proc']:.2f} / {pv['med']:.2f} |",
        "| paper-style avg diag / proc / med (max) | "
        f"{ps['diag']['avg']:.2f} / {ps['proc']['avg']:.2f} / {ps['med']['avg']:.2f} "
        f"({ps['diag']['max']}/{ps['proc']['max']}/{ps['med']['max']}) |",
        f"| DDI pairs | {card['ddi_pairs']} |",
        f"| ground-truth DDI rate all / test | {dr['all']:.4f} / {test_rate} |",
        f"| drug molecules (drug tower) | {molecules_line(card['molecules'])} |",
        "",
        f"Split `{card['split']['kind']}`:",
        "",
        "| split | patients | visits |",
        "|---|---|---|",
        *(f"| {k} | {v['patients']} | {v['visits']} |" for k, v in card["splits"].items()),
    ]
    if card["split"]["leaky"]:
        lines += ["", "**Leaky split**: visits of one patient fall into several splits. Use it only to study leakage; "
                  "never report its test scores as results."]
    return "\n".join(lines) + "\n"


def _r(x: float) -> float:
    return round(float(x), 6)
