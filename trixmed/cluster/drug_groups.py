"""Drug groups for LAMO's group adapters (`model.drug_groups`): every medication in exactly one of G groups.

    atc             by the ATC level-1 anatomical letter (the code's first character: N02B → N),
                    whole letters merged into G groups of near-equal drug counts: the largest
                    letter first, each into the group with the fewest drugs so far (ties: the
                    letter, then the lower group), so the grouping depends on the vocabulary only
    coprescription  by how drugs are prescribed together, on the TRAINING split only (validation
                    and test never shape the model): co-occurrence counts over the training visits,
                    Ochiai-normalised (C_ij / √(C_ii·C_jj)), each drug's row L2-normalised, then
                    K-means (k-means++, seeded) into G groups

The warm-up computes the groups once (`dataset_drug_groups`) and saves them with the model as the
`drug_group` buffer, so every later stage, `predict` and `explain` read them from the model.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from trixmed.config import Config, DrugGroupsConfig
from trixmed.data.dataset import Dataset
from trixmed.errors import TrixmedError

KEY = "model.drug_groups.count"


def atc_groups(codes: list[str], count: int) -> np.ndarray:
    """[n] group id of each code: ATC anatomical letters merged into `count` balanced groups."""
    letters = sorted({c[0].upper() for c in codes})
    if len(letters) < count:
        raise TrixmedError(KEY, f"{count} groups, but the {len(codes)} medications span only {len(letters)} "
                           f"ATC anatomical groups ({', '.join(letters)})")
    size = {letter: sum(c[0].upper() == letter for c in codes) for letter in letters}
    load = [0] * count
    group_of = {}
    for letter in sorted(letters, key=lambda x: (-size[x], x)):
        g = min(range(count), key=lambda i: (load[i], i))
        group_of[letter] = g
        load[g] += size[letter]
    return np.array([group_of[c[0].upper()] for c in codes], dtype=np.int64)


def coprescription_groups(codes: list[str], train_meds: Iterable[Iterable[str]], count: int, seed: int) -> np.ndarray:
    """[n] group id of each code: K-means on the normalised co-prescription rows of `train_meds`
    (the medication set of every training visit)."""
    from sklearn.cluster import KMeans

    if len(codes) < count:
        raise TrixmedError(KEY, f"{count} groups, but there are only {len(codes)} medications")
    index = {c: i for i, c in enumerate(codes)}
    rows = [[index[m] for m in set(meds) if m in index] for meds in train_meds]
    given = np.zeros((len(rows), len(codes)))
    for r, cols in enumerate(rows):
        given[r, cols] = 1.0
    co = given.T @ given
    freq = np.sqrt(np.diag(co))
    with np.errstate(divide="ignore", invalid="ignore"):
        ochiai = np.nan_to_num(co / np.outer(freq, freq))
    norms = np.linalg.norm(ochiai, axis=1, keepdims=True)
    x = ochiai / np.where(norms > 0, norms, 1.0)
    labels = KMeans(n_clusters=count, n_init=10, random_state=seed).fit(x).labels_
    if len(np.unique(labels)) < count:
        raise TrixmedError(KEY, f"{count} groups, but the training visits' co-prescriptions separate "
                           f"only {len(np.unique(labels))}: use fewer groups")
    # numbered by each group's first drug in vocabulary order, so the ids do not depend on K-means' order
    first = {label: i for i, label in reversed(list(enumerate(labels)))}
    renumber = {label: g for g, label in enumerate(sorted(first, key=first.get))}
    return np.array([renumber[label] for label in labels], dtype=np.int64)


def dataset_drug_groups(cfg: Config, ds: Dataset) -> np.ndarray | None:
    """Each medication's group under `cfg.model.drug_groups` (None for `by: none`)."""
    groups: DrugGroupsConfig = cfg.model.drug_groups
    codes = ds.vocab.med
    if groups.by == "atc":
        return atc_groups(codes, groups.count)
    if groups.by == "coprescription":
        visits = ds.visits
        return coprescription_groups(codes, visits.loc[visits["split"] == "train", "med"], groups.count, cfg.seed)
    return None


def groups_line(by: str, groups: np.ndarray) -> str:
    """What the console says of a grouping."""
    sizes = np.bincount(groups)
    return f"{by}, {len(sizes)} groups of {', '.join(map(str, sizes))} drugs"
