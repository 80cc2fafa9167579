"""SafeDrug's published pickles (`records_final.pkl`, `voc_final.pkl`, `ddi_A_final.pkl`), read safely.

A pickle can run any code while loading, so these are read with `RestrictedUnpickler`, which
resolves only builtin containers and numpy array reconstruction. SafeDrug's `Voc` class (pickled
by reference or, by `dill`, by value) becomes `VocData`, a plain holder of `idx2word` /
`word2idx`; dill's class-building helpers are answered by inert stand-ins that build nothing
and run nothing. Any other global is refused with a `TrixmedError` naming the file.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trixmed.data.dataset import Vocab
from trixmed.data.records import Records, check_visits
from trixmed.errors import TrixmedError

FILES = {"records": "records_final.pkl", "voc": "voc_final.pkl", "ddi": "ddi_A_final.pkl"}


class VocData:
    """Inert stand-in for SafeDrug's `Voc`: keeps the pickled state as plain data."""

    def __init__(self) -> None:
        self.idx2word: dict = {}
        self.word2idx: dict = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("Voc state is not a dict")
        self.idx2word = dict(state.get("idx2word", {}))
        self.word2idx = dict(state.get("word2idx", {}))


class _Inert:
    """What dill's code/function builders return here: a placeholder that cannot be called."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def _make_type(_meta: Any, name: Any, _bases: Any = (), _namespace: Any = None, *rest: Any) -> type:
    if name != "Voc":
        raise pickle.UnpicklingError(f"refused class {name!r} (only SafeDrug's Voc is allowed)")
    return VocData


def _reconstructor(cls: Any, base: Any, state: Any = None) -> VocData:
    # protocol 0/1 object creation; only ever for the inert Voc
    if cls is not VocData:
        raise pickle.UnpicklingError(f"refused object of {cls!r}")
    return VocData()


def _latin1(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # protocol 0-2 pickles store bytes as `_codecs.encode(str, "latin1")`
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's array/scalar rebuilders under both module names (numpy 1.x `core`, 2.x `_core`)."""
    multiarray = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    numeric = importlib.import_module("numpy._core.numeric" if hasattr(np, "_core") else "numpy.core.numeric")
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        out[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        out[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        out[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    return out


_ALLOWED: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("_codecs", "encode"): _latin1,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object,
    ("__builtin__", "object"): object,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    # dill pickles the Voc class by value: these only ever yield VocData or inert placeholders
    ("dill._dill", "_create_type"): _make_type,
    ("dill._dill", "_load_type"): _Inert,
    ("dill._dill", "_create_code"): _Inert,
    ("dill._dill", "_create_function"): _Inert,
    ("dill.dill", "_create_type"): _make_type,
    ("dill.dill", "_load_type"): _Inert,
    ("dill.dill", "_create_code"): _Inert,
    ("dill.dill", "_create_function"): _Inert,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals above; `Voc` from any module maps to `VocData`."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "Voc":
            return VocData
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def safe_load(path: str | Path) -> Any:
    """Unpickle `path` with `RestrictedUnpickler`; every failure is a `TrixmedError` on the file."""
    path = Path(path)
    if not path.is_file():
        raise TrixmedError(path, "missing")
    try:
        return RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except pickle.UnpicklingError as exc:
        raise TrixmedError(path, f"unsafe or unreadable pickle: {exc}") from None
    except Exception as exc:  # truncated/corrupt streams raise EOFError, ValueError, TypeError, ...
        raise TrixmedError(path, f"unreadable pickle: {type(exc).__name__}: {exc}") from None


def load_safedrug_pickles(folder: str | Path) -> Records:
    """A folder with SafeDrug's three pickles → records; vocabulary order = upstream index order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrixmedError(folder, "input folder not found")
    paths = {k: folder / v for k, v in FILES.items()}
    voc_raw = safe_load(paths["voc"])
    vocab = Vocab(**{kind: _voc_words(voc_raw, key, paths["voc"]) for kind, key in (("diag", "diag_voc"), ("proc", "pro_voc"), ("med", "med_voc"))})
    ddi = np.asarray(safe_load(paths["ddi"]))
    n_med = len(vocab.med)
    if ddi.shape != (n_med, n_med):
        raise TrixmedError(paths["ddi"], f"DDI matrix shape {ddi.shape} does not match med_voc size {n_med}")
    records = safe_load(paths["records"])
    if not isinstance(records, list):
        raise TrixmedError(paths["records"], f"expected a list of patients, got {type(records).__name__}")
    rows = []
    for p, patient in enumerate(records):
        if not isinstance(patient, list):
            raise TrixmedError(paths["records"], f"patient {p}: expected a list of visits")
        for v, visit in enumerate(patient):
            if not isinstance(visit, (list, tuple)) or len(visit) < 3:
                raise TrixmedError(paths["records"], f"patient {p} visit {v}: expected [diag, proc, med, ...]")
            codes = [_decode(visit[i], getattr(vocab, kind), paths["records"], p, v, kind) for i, kind in enumerate(("diag", "proc", "med"))]
            rows.append((f"p{p}", v, *codes))
    visits = pd.DataFrame(rows, columns=["patient_id", "visit_order", "diag", "proc", "med"])
    visits["visit_order"] = visits["visit_order"].astype("int32")
    check_visits(visits, str(paths["records"]))
    return Records(visits=visits, vocab=vocab, ddi=((ddi + ddi.T) > 0).astype(np.uint8))


def _voc_words(raw: Any, key: str, path: Path) -> list[str]:
    voc = raw.get(key) if isinstance(raw, dict) else None
    if not isinstance(voc, VocData):
        raise TrixmedError(path, f"expected a dict with a Voc under {key!r}")
    n = len(voc.idx2word)
    if sorted(voc.idx2word) != list(range(n)):
        raise TrixmedError(path, f"{key}.idx2word: indices are not 0..{n - 1}")
    return [str(voc.idx2word[i]) for i in range(n)]


def _decode(indices: Any, codes: list[str], path: Path, p: int, v: int, kind: str) -> list[str]:
    out = []
    for i in indices:
        if not isinstance(i, (int, np.integer)) or not 0 <= int(i) < len(codes):
            raise TrixmedError(path, f"patient {p} visit {v}: field {kind}: index {i!r} outside the vocabulary (size {len(codes)})")
        out.append(codes[int(i)])
    return out
