"""SafeDrug pickles are read with a restricted unpickler: data in, no code run."""

from __future__ import annotations

import os
import pickle
import sys
import types

import numpy as np
import pytest

from trixmed.data.dataset import Dataset
from trixmed.data.pickles import FILES, VocData, safe_load
from trixmed.errors import TrixmedError


class Voc:  # SafeDrug's class, as `processing.py` defines it
    def __init__(self, words=()):
        self.idx2word, self.word2idx = {}, {}
        for w in words:
            self.word2idx[w] = len(self.idx2word)
            self.idx2word[len(self.idx2word)] = w


VOC = {"diag_voc": Voc(["4019", "25000", "V5861"]), "pro_voc": Voc(["3961", "8856"]), "med_voc": Voc(["N02B", "A01A", "N03A"])}
RECORDS = [
    [[[0, 1], [0], [0, 1]], [[2], [1], [1, 2]]],
    [[[0], [0, 1], [np.int64(2)]]],
    [[[1], [1], [0]], [[0, 2], [0], [0, 2]], [[1], [1], [2]]],
]


def _ddi() -> np.ndarray:
    ddi = np.zeros((3, 3))
    ddi[1, 2] = ddi[2, 1] = 1
    return ddi


def write_pickles(folder, protocol=4, voc=VOC, pickler=pickle.Pickler):
    folder.mkdir(parents=True, exist_ok=True)
    for key, obj in (("records", RECORDS), ("voc", voc), ("ddi", _ddi())):
        with open(folder / FILES[key], "wb") as fh:
            pickler(fh, protocol=protocol).dump(obj)
    return folder


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_safedrug_pickles(prepare_cli, tmp_path, protocol):
    src = write_pickles(tmp_path / "pkl", protocol)
    rc, _, err = prepare_cli("--source", "safedrug-pickle", "--input", src, "--run-dir", tmp_path)
    assert rc == 0, err
    ds = Dataset(tmp_path / "dataset")
    assert ds.vocab.diag == ["4019", "25000", "V5861"] and ds.vocab.med == ["N02B", "A01A", "N03A"]
    assert list(ds.visits.patient_id) == ["p0", "p0", "p1", "p2", "p2", "p2"]
    assert list(ds.visits.med.iloc[1]) == ["A01A", "N03A"] and list(ds.visits.proc.iloc[2]) == ["3961", "8856"]
    assert ds.ddi.dtype == np.uint8 and ds.ddi[1, 2] == 1 and ds.ddi.sum() == 2
    assert ds.card["ddi_pairs"] == 1


def test_dill_style_voc_class_is_read_as_data(prepare_cli, tmp_path, monkeypatch):
    """dill pickles a __main__ class by value (`_create_type(_load_type('type'), 'Voc', ...)`)."""
    calls = []
    fake = types.ModuleType("dill._dill")

    def _create_type(*args):
        calls.append(args)
        return type(*args[1:])

    def _load_type(name):
        return type

    for fn in (_create_type, _load_type):
        fn.__module__, fn.__qualname__ = "dill._dill", fn.__name__
        setattr(fake, fn.__name__, fn)
    monkeypatch.setitem(sys.modules, "dill", types.ModuleType("dill"))
    monkeypatch.setitem(sys.modules, "dill._dill", fake)

    class TypeRef:
        def __reduce__(self):
            return (_load_type, ("type",))

    class DillLike(pickle.Pickler):
        def reducer_override(self, obj):
            if obj is Voc:
                return (_create_type, (TypeRef(), "Voc", (object,), {"__module__": "__main__"}))
            return NotImplemented

    src = write_pickles(tmp_path / "pkl", voc=VOC, pickler=DillLike)
    monkeypatch.delitem(sys.modules, "dill._dill")
    monkeypatch.delitem(sys.modules, "dill")
    assert b"dill._dill" in (src / FILES["voc"]).read_bytes()
    loaded = safe_load(src / FILES["voc"])
    assert isinstance(loaded["med_voc"], VocData) and loaded["med_voc"].idx2word == {0: "N02B", 1: "A01A", 2: "N03A"}
    rc, _, err = prepare_cli("--source", "safedrug-pickle", "--input", src, "--run-dir", tmp_path)
    assert rc == 0, err
    assert calls == []  # the fake dill was never used to load


class Evil:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_malicious_pickle_is_refused_without_running(prepare_cli, tmp_path):
    sentinel = tmp_path / "pwned"
    src = write_pickles(tmp_path / "pkl")
    with open(src / FILES["records"], "wb") as fh:
        pickle.dump([[Evil(sentinel)]], fh)
    rc, _, err = prepare_cli("--source", "safedrug-pickle", "--input", src, "--run-dir", tmp_path / "run")
    assert rc == 2
    assert not sentinel.exists()
    line = err.strip()
    assert "\n" not in line and "records_final.pkl" in line and "refused global" in line and "system" in line
    assert not (tmp_path / "run" / "dataset").exists()


@pytest.mark.parametrize("payload", [
    (eval, ("1+1",)),
    (getattr, (object, "__subclasses__")),
    (__import__, ("os",)),
])
def test_other_globals_are_refused(tmp_path, payload):
    class Bad:
        def __reduce__(self):
            return payload

    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"a": Bad()}))
    with pytest.raises(TrixmedError, match="refused global builtins"):
        safe_load(path)


def test_pickle_vocab_mismatch(prepare_cli, tmp_path):
    src = write_pickles(tmp_path / "pkl")
    with open(src / FILES["ddi"], "wb") as fh:
        pickle.dump(np.zeros((4, 4)), fh)
    rc, _, err = prepare_cli("--source", "safedrug-pickle", "--input", src, "--run-dir", tmp_path / "run")
    assert rc == 2 and "ddi_A_final.pkl" in err and "does not match med_voc size 3" in err
    assert not (tmp_path / "run" / "dataset").exists()
