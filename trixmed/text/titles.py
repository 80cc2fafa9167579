"""Medical codes → their text titles (ICD-9-CM, ICD-10-CM/PCS, WHO ATC), with fallbacks.

Lookup order for every code: the exact code → its nearest parent that has a title → the plain
text "unknown code X". The tables ship in `trixmed/resources/descriptions/` (see NOTICE.md) and
are read lazily, one table the first time a code of that system is asked for.

Accepted code spellings (dots are ignored, case is folded):
    diagnoses   'icd9:4019', 'icd10:I10', bare MIMIC style '4019', 'V5861', 'E8788', 'I10', 'E119'
    procedures  'icd9:3601', 'icd10:0DTJ4ZZ', bare '3601' (≤ 4 digits: ICD-9), '0DTJ4ZZ' (7 chars: ICD-10-PCS)
    medications ATC at any level: 'N', 'N02', 'N02B', 'N02BE', 'N02BE01'

A bare diagnosis starting with a digit is ICD-9; one starting with V or E exists in both ICD-9
and ICD-10-CM (MIMIC-IV vocabularies carry no version), so the exact code is tried in ICD-9 first,
then ICD-10-CM, and only then the parents in the same order; any other letter is ICD-10-CM.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from trixmed.paths import resource_path

KINDS = ("diag", "proc", "med")
ATC_LEVEL_LENGTHS = (1, 3, 4, 5, 7)
WHO_ATC_FILE = "WHO_ATC-DDD_2026-04-25.csv"
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Title:
    text: str
    code: str     # the code whose title was used (differs from the query for a parent match)
    system: str   # icd9cm | icd10cm | icd9proc | icd10pcs | atc | none
    match: str    # exact | parent | unknown


class CodeTitles:
    """Title lookup over the bundled description tables; every answer is cached."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else resource_path("descriptions")
        self._cache: dict[tuple[str, str], Title] = {}
        self._tables: dict[str, dict[str, str]] = {}
        self._block_list: list[tuple[str, tuple[str, int], tuple[str, int]]] | None = None

    @classmethod
    @functools.cache
    def default(cls) -> CodeTitles:
        """One shared instance over the bundled tables."""
        return cls()

    def diag(self, code: str) -> str:
        return self.resolve("diag", code).text

    def proc(self, code: str) -> str:
        return self.resolve("proc", code).text

    def med(self, code: str) -> str:
        return self.resolve("med", code).text

    def title(self, kind: str, code: str) -> str:
        return self.resolve(kind, code).text

    def title_words(self, kind: str, code: str) -> list[str]:
        """Lower-cased word tokens of the title; [] for an unknown code (its text says nothing)."""
        t = self.resolve(kind, code)
        return [] if t.match == "unknown" else _WORD.findall(t.text.lower())

    def resolve(self, kind: str, code: str) -> Title:
        key = (kind, code)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._resolve(kind, code)
        return hit

    # ----------------------------------------------------------------------------------------

    def _resolve(self, kind: str, code: str) -> Title:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        systems, bare = _systems(kind, str(code))
        for system in systems:
            text = self._table(system).get(bare)
            if text:
                return Title(text, bare, system, "exact")
        for system in systems:
            for parent in self._parents(system, bare):
                text = self._table(system).get(parent)
                if text:
                    return Title(text, parent, system, "parent")
        return Title(f"unknown code {code}", str(code), "none", "unknown")

    def _parents(self, system: str, code: str) -> list[str]:
        """Candidate parent codes, nearest first."""
        if system == "icd9cm":
            category = 4 if code.startswith("E") else 3
            out = [code[:n] for n in range(len(code) - 1, category - 1, -1)]
            return out + self._icd9_blocks(code[:category])
        if system == "icd10cm":
            return [code[:n] for n in range(len(code) - 1, 2, -1)]
        if system == "icd9proc":
            return [code[:n] for n in range(len(code) - 1, 1, -1)]
        if system == "icd10pcs":
            return [code[:1]] if len(code) > 1 else []
        return [code[:n] for n in reversed(ATC_LEVEL_LENGTHS) if n < len(code)]

    def _icd9_blocks(self, category: str) -> list[str]:
        """ICD-9-CM block ranges ('401-405', 'V50-V59', …) containing a category, narrowest first."""
        key = _icd9_sort_key(category)
        if key is None:
            return []
        hits = [(hi[1] - lo[1], label) for label, lo, hi in self._blocks() if lo[0] == key[0] and lo[1] <= key[1] <= hi[1]]
        return [label for _, label in sorted(hits)]

    def _blocks(self) -> list[tuple[str, tuple[str, int], tuple[str, int]]]:
        if self._block_list is None:
            out = []
            for label in self._table("icd9cm"):
                if "-" in label:
                    lo, _, hi = label.partition("-")
                    klo, khi = _icd9_sort_key(lo), _icd9_sort_key(hi)
                    if klo and khi:
                        out.append((label, klo, khi))
            self._block_list = out
        return self._block_list

    def _table(self, system: str) -> dict[str, str]:
        if system not in self._tables:
            self._tables[system] = self._load(system)
        return self._tables[system]

    def _load(self, system: str) -> dict[str, str]:
        root = self.root
        if system == "icd9cm":
            df = _read_csv(root / "icd9_diagnoses.csv")
            return _to_dict(df["code"], df["long_title"].where(df["long_title"] != "", df["short_title"]))
        if system == "icd9proc":
            df = _read_csv(root / "icd9_procedures.csv")
            cats = _read_csv(root / "icd9_procedure_categories.csv")
            return _to_dict(df["code"], df["long_title"].where(df["long_title"] != "", df["short_title"])) | _to_dict(cats["code"], cats["title"])
        if system == "icd10cm":
            df = pd.read_parquet(root / "icd10cm_cms2025.parquet", columns=["code", "long_name"])
            return _to_dict(df["code"], df["long_name"])
        if system == "icd10pcs":
            df = pd.read_parquet(root / "icd10pcs_cms2025.parquet", columns=["code", "long_name"])
            sections = _read_csv(root / "icd10pcs_sections.csv")
            return _to_dict(df["code"], df["long_name"]) | _to_dict(sections["code"], sections["title"])
        if system == "atc":
            df = _read_csv(root / WHO_ATC_FILE)
            return _to_dict(df["atc_code"], df["atc_name"])
        raise ValueError(f"unknown code system {system!r}")


def title_words(kind: str, code: str) -> list[str]:
    """Lower-cased words of a code's title from the bundled tables (cached)."""
    return CodeTitles.default().title_words(kind, code)


# --------------------------------------------------------------------------------------------


def _systems(kind: str, code: str) -> tuple[tuple[str, ...], str]:
    """The code systems to try, in order, and the code stripped of prefix, dots and case."""
    raw = code.strip()
    prefix, sep, rest = raw.partition(":")
    version = prefix.lower() if sep else ""
    bare = (rest if sep else raw).replace(".", "").strip().upper()
    if kind == "med":
        return ("atc",), bare
    if kind == "diag":
        if version == "icd9":
            return ("icd9cm",), bare
        if version == "icd10":
            return ("icd10cm",), bare
        if bare[:1].isdigit():
            return ("icd9cm",), bare
        if bare[:1] in ("V", "E"):
            return ("icd9cm", "icd10cm"), bare
        return ("icd10cm",), bare
    if version == "icd9":
        return ("icd9proc",), bare
    if version == "icd10":
        return ("icd10pcs",), bare
    if bare.isdigit() and len(bare) <= 4:
        return ("icd9proc",), bare
    return ("icd10pcs",), bare


def _icd9_sort_key(category: str) -> tuple[str, int] | None:
    """'401' → ('', 401); 'V58' → ('V', 58); 'E878' → ('E', 878); None when not a category."""
    letter = category[:1] if category[:1] in ("V", "E") else ""
    digits = category[len(letter):]
    return (letter, int(digits)) if digits.isdigit() else None


def _read_csv(path: Path) -> pd.DataFrame:
    # every column as text: codes keep their leading zeros ('0066'), "NA" stays a string
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _to_dict(codes: pd.Series, titles: pd.Series) -> dict[str, str]:
    df = pd.DataFrame({
        "code": codes.astype(str).str.replace(".", "", regex=False).str.strip().str.upper(),
        "title": titles.fillna("").astype(str).str.strip(),
    })
    # the WHO file repeats level-5 codes once per DDD route: keep the first title
    df = df[df["title"] != ""].drop_duplicates("code", keep="first")
    return dict(zip(df["code"], df["title"]))
