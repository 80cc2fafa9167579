"""Each drug's molecules for the drug tower: read at prepare time, counted in the card."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from trixmed.data.dataset import Dataset
from trixmed.data.drugs import SMILES_FILE, drug_table, molecule_counts, molecules_line, morgan_fingerprints, read_smiles
from trixmed.errors import TrixmedError

PARACETAMOL = "CC(=O)NC1=CC=C(O)C=C1"
ASPIRIN = "CC(=O)OC1=CC=CC=C1C(O)=O"


def test_prepare_keeps_parseable_smiles_and_counts_the_rest(mimic, prepare_cli, tmp_path):
    src = mimic.benchmark(tmp_path / "bench")
    # A01A's only SMILES is unparsable (an unclosed ring), N03A has none, J01C is not in the vocabulary
    (src / SMILES_FILE).write_text(json.dumps({"N02B": [PARACETAMOL, ASPIRIN], "A01A": ["C1CC"], "J01C": [ASPIRIN]}))
    rc, _, err = prepare_cli("--source", "benchmark", "--input", src, "--run-dir", tmp_path / "run")
    assert rc == 0, err
    ds = Dataset(tmp_path / "run" / "dataset")
    assert ds.drugs["code"].tolist() == ds.vocab.med == ["N02B", "A01A", "N03A"]
    assert ds.drugs["smiles"].map(list).tolist() == [[PARACETAMOL, ASPIRIN], [], []]
    assert ds.drugs["unparsable"].tolist() == [0, 1, 0]
    assert ds.card["molecules"] == {"drugs": 3, "with_molecules": 1, "unparsable_smiles": 1}
    card = (tmp_path / "run" / "dataset" / "card.md").read_text()
    assert "| drug molecules (drug tower) | molecules for 1 of 3 drugs (1 SMILES RDKit could not parse) |" in card


def test_a_source_without_smiles_gives_a_title_only_tower(mimic, prepare_cli, tmp_path):
    src = mimic.benchmark(tmp_path / "bench")
    rc, _, err = prepare_cli("--source", "benchmark", "--input", src, "--run-dir", tmp_path / "run")
    assert rc == 0, err
    ds = Dataset(tmp_path / "run" / "dataset")
    assert molecules_line(ds.card["molecules"]) == "molecules for 0 of 3 drugs: the drug tower reads titles only"
    assert ds.drugs["smiles"].map(len).tolist() == [0, 0, 0]


def test_fingerprints_average_the_molecules_and_mark_drugs_without_one():
    table = drug_table(["N02B", "A01A", "N03A"], {"N02B": [PARACETAMOL, ASPIRIN], "A01A": ["C1CC"]})
    fps, missing = morgan_fingerprints(table["smiles"].tolist(), radius=2, bits=256)
    assert fps.shape == (3, 256) and missing.tolist() == [0.0, 1.0, 1.0]
    one, _ = morgan_fingerprints([[PARACETAMOL], [ASPIRIN]], radius=2, bits=256)
    np.testing.assert_allclose(fps[0], one.mean(axis=0))
    assert set(np.unique(fps[0])) >= {0.5} and not fps[1:].any()


def test_malformed_smiles_file_is_one_line(tmp_path):
    path = tmp_path / SMILES_FILE
    path.write_text(json.dumps({"N02B": "CCO"}))
    with pytest.raises(TrixmedError) as info:
        read_smiles(path)
    assert str(info.value) == f"{path}: field N02B: expected a list of SMILES strings, got 'CCO'"


def test_a_dataset_prepared_before_drug_tables_says_how_to_fix_it(tmp_path):
    from trixmed.testing import make_tiny_dataset

    root = make_tiny_dataset(tmp_path)
    (root / "drugs.parquet").unlink()
    with pytest.raises(TrixmedError) as info:
        Dataset(root).drugs
    assert str(info.value) == (f"{root / 'drugs.parquet'}: missing; the drug tower needs it: run `trixmed prepare` again "
                               "(datasets prepared before drug tables have none)")


@pytest.mark.mimic
@pytest.mark.parametrize("name, expected", [("mimic3_safedrug131", "molecules for 131 of 131 drugs"),
                                            ("mimic4_raremed122", "molecules for 122 of 122 drugs")])
def test_benchmark_molecules(benchmark_dir, name, expected):
    src = benchmark_dir(name)
    codes = pd.read_csv(src / "vocab_med.csv", dtype=str, keep_default_na=False)["atc3"].tolist()
    assert molecules_line(molecule_counts(drug_table(codes, read_smiles(src / SMILES_FILE)))) == expected
