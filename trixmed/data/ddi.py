"""Drug–drug interactions keyed by ATC level-3 code, so raw-CSV datasets get a DDI matrix offline.

The bundled pair list `resources/ddi/ddi_pairs_atc3.csv` is the union of the published
GAMENet/SafeDrug/MICRON/RAREMed DDI matrices (TWOSIDES, top-40 side effects). Those matrices are
built from drug interaction data, not from patients, so their pairs can ship; the TWOSIDES table
itself is not obtainable offline. Rebuild the list with

    python -m trixmed.data.ddi --build [BENCHMARK_ROOT]
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trixmed.errors import TrixmedError
from trixmed.paths import resource_path, shared_data_dir

PAIRS_FILE = resource_path("ddi", "ddi_pairs_atc3.csv")


def matrix_pairs(ddi: np.ndarray, codes: Sequence[str]) -> set[tuple[str, str]]:
    """Unordered code pairs (a < b) that interact in a [n, n] matrix indexed like `codes`."""
    i, j = np.nonzero(np.asarray(ddi) + np.asarray(ddi).T)
    return {tuple(sorted((codes[a], codes[b]))) for a, b in zip(i.tolist(), j.tolist()) if a != b}


def build_pairs(benchmark_root: str | Path, out: str | Path = PAIRS_FILE) -> int:
    """Write the union of every benchmark folder's `ddi_A` as ATC-3 pairs; returns the pair count."""
    import pandas as pd

    from trixmed.io import atomic_file

    sources: dict[tuple[str, str], list[str]] = {}
    folders = sorted(p for p in Path(benchmark_root).iterdir() if (p / "graphs.npz").is_file())
    if not folders:
        raise TrixmedError(benchmark_root, "no benchmark folder with graphs.npz found")
    for folder in folders:
        codes = pd.read_csv(folder / "vocab_med.csv", dtype=str, keep_default_na=False)["atc3"].tolist()
        with np.load(folder / "graphs.npz", allow_pickle=False) as z:
            ddi = z["ddi_A"]
        for pair in matrix_pairs(ddi, codes):
            sources.setdefault(pair, []).append(folder.name)
    with atomic_file(out) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["atc3_a", "atc3_b", "sources"])
        for (a, b), names in sorted(sources.items()):
            w.writerow([a, b, ";".join(names)])
    return len(sources)


def load_pairs(path: str | Path = PAIRS_FILE) -> set[tuple[str, str]]:
    """The interacting ATC-3 pairs of a pair list, each as a sorted tuple."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"atc3_a", "atc3_b"} - set(reader.fieldnames or [])
        if missing:
            raise TrixmedError(path, f"missing column(s) {', '.join(sorted(missing))}")
        return {tuple(sorted((r["atc3_a"], r["atc3_b"]))) for r in reader}


def ddi_matrix(codes: Sequence[str], pairs: set[tuple[str, str]] | None = None) -> np.ndarray:
    """Symmetric uint8 [n, n] DDI matrix for medication `codes` (ATC-3) from a pair list."""
    pairs = load_pairs() if pairs is None else pairs
    index = {c: i for i, c in enumerate(codes)}
    out = np.zeros((len(codes), len(codes)), dtype=np.uint8)
    for a, b in pairs:
        if a in index and b in index:
            out[index[a], index[b]] = out[index[b], index[a]] = 1
    return out


# --------------------------------------------------------------------------------------------
# DDI rate: SafeDrug's definition, shared by the dataset card (ground truth) and the metrics.


def ddi_rate(pred_sets: np.ndarray | Sequence[Sequence[int]], ddi: np.ndarray) -> float:
    """SafeDrug's DDI rate: interacting unordered pairs / all unordered pairs, pooled over visits.

    `pred_sets` is a [N, M] 0/1 matrix or a list of drug-index lists (indices into the
    vocabulary, i.e. into `ddi` — never positions inside the predicted list). A pair (i, j)
    interacts when ddi[i, j] or ddi[j, i] is set. 0 when no visit has two drugs.
    """
    if isinstance(pred_sets, np.ndarray) and pred_sets.ndim == 2:
        if pred_sets.dtype != bool and not np.isin(pred_sets, (0, 1)).all():
            raise ValueError("pred_sets must hold only 0/1")
        p = pred_sets.astype(bool)
    else:
        p = np.zeros((len(pred_sets), ddi.shape[0]), dtype=bool)
        for r, idx in enumerate(pred_sets):
            p[r, np.asarray(list(idx), dtype=np.int64)] = True
    check_ddi_matrix(ddi, p.shape[1])
    inter, pairs = ddi_pair_counts(p, ddi)
    return pooled_rate(inter, pairs)


def check_ddi_matrix(ddi: np.ndarray, n_med: int) -> None:
    if ddi.ndim != 2 or ddi.shape != (n_med, n_med):
        raise ValueError(f"ddi must be [{n_med}, {n_med}] (one row/column per vocabulary drug), got {ddi.shape}")


def ddi_pair_counts(p: np.ndarray, ddi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per visit: interacting unordered pairs and all unordered pairs of the set in `p`."""
    adj = (np.asarray(ddi) != 0)
    adj = (adj | adj.T).astype(np.float64)
    np.fill_diagonal(adj, 0.0)  # a drug never pairs with itself (SafeDrug's loop has j > i)
    pf = p.astype(np.float64)
    inter = ((pf @ adj) * pf).sum(1) / 2.0
    k = pf.sum(1)
    return inter, k * (k - 1) / 2.0


def pooled_rate(num: np.ndarray, den: np.ndarray) -> float:
    total = float(np.sum(den))
    return float(np.sum(num)) / total if total > 0 else 0.0


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trixmed.data.ddi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", action="store_true", help="rebuild the bundled ATC-3 pair list")
    parser.add_argument("benchmark_root", nargs="?", help="folder of benchmark folders (default: ../shared/data/benchmark)")
    args = parser.parse_args(argv)
    if not args.build:
        parser.print_help()
        return 0
    root = args.benchmark_root or (shared_data_dir() or Path("../shared/data")) / "benchmark"
    n = build_pairs(root)
    print(f"wrote {n} ATC-3 pairs to {PAIRS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
