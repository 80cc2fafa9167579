"""Each medication's molecules, for the drug tower (`model.head: drug_tower`, trixmed/models/drug_tower.py).

    <dataset>/drugs.parquet   one row per medication, in vocabulary order:
        code         str
        smiles       list<str>: the SMILES of the drug's ATC class that RDKit parses
        unparsable   int32: the class's SMILES that RDKit refused

A processed benchmark folder may list SMILES per ATC-3 class in `atc3_smiles.json` (SafeDrug's
atc3toSMILES, at most three molecules a class); raw MIMIC tables list none. A drug without a
parseable SMILES has no molecule: the tower reads its title only. The card counts them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trixmed.errors import TrixmedError

SMILES_FILE = "atc3_smiles.json"


def read_smiles(path: Path) -> dict[str, list[str]]:
    """`atc3_smiles.json`: ATC code → list of SMILES strings."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrixmedError(path, f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise TrixmedError(path, "expected a mapping of ATC code → list of SMILES")
    for code, smiles in raw.items():
        if not isinstance(smiles, list) or not all(isinstance(s, str) for s in smiles):
            raise TrixmedError(path, f"field {code}: expected a list of SMILES strings, got {smiles!r}")
    return raw


def drug_table(codes: list[str], smiles: Mapping[str, list[str]] | None = None) -> pd.DataFrame:
    """One row per code (in the given order): the SMILES RDKit parses, and how many it refused.
    `smiles` None: the source lists no molecules."""
    listed = [list((smiles or {}).get(code, [])) for code in codes]
    kept = [[s for s in row if _parse(s) is not None] for row in listed] if smiles else listed
    return pd.DataFrame({"code": list(codes), "smiles": kept,
                         "unparsable": np.array([len(a) - len(b) for a, b in zip(listed, kept)], dtype=np.int32)})


def write_drugs(path: Path, drugs: pd.DataFrame) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("code", pa.string()), ("smiles", pa.list_(pa.string())), ("unparsable", pa.int32())])
    pq.write_table(pa.table({name: drugs[name].tolist() for name in schema.names}, schema=schema), path)


def molecule_counts(drugs: pd.DataFrame) -> dict[str, int]:
    """What the card and the run log say about a drug table."""
    return {"drugs": len(drugs), "with_molecules": int((drugs["smiles"].map(len) > 0).sum()),
            "unparsable_smiles": int(drugs["unparsable"].sum())}


def molecules_line(counts: Mapping[str, int]) -> str:
    line = f"molecules for {counts['with_molecules']} of {counts['drugs']} drugs"
    if counts["unparsable_smiles"]:
        line += f" ({counts['unparsable_smiles']} SMILES RDKit could not parse)"
    if not counts["with_molecules"]:
        line += ": the drug tower reads titles only"
    return line


def morgan_fingerprints(smiles: list[list[str]], radius: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """([n, bits] float32, [n] float32): each row's mean Morgan fingerprint over its molecules, and
    1 where the row has no molecule RDKit parses (its fingerprint stays zero)."""
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    out = np.zeros((len(smiles), bits), dtype=np.float32)
    missing = np.ones(len(smiles), dtype=np.float32)
    for i, row in enumerate(smiles):
        mols = [m for m in map(_parse, row) if m is not None]
        if mols:
            out[i] = np.mean([generator.GetFingerprintAsNumPy(m) for m in mols], axis=0)
            missing[i] = 0.0
    return out, missing


def _parse(smiles: str) -> Any:
    """An RDKit molecule, or None where RDKit cannot parse the SMILES (it would print why on stderr)."""
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(smiles)
