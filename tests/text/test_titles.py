from __future__ import annotations

import pandas as pd
import pytest

from trixmed.text.titles import CodeTitles, title_words


@pytest.fixture(scope="module")
def titles() -> CodeTitles:
    return CodeTitles.default()


@pytest.mark.parametrize(
    ("kind", "code", "system", "text"),
    [
        ("diag", "4019", "icd9cm", "Unspecified essential hypertension"),
        ("diag", "icd9:4019", "icd9cm", "Unspecified essential hypertension"),
        ("diag", "401.9", "icd9cm", "Unspecified essential hypertension"),
        ("diag", "0066", "icd9cm", "Amebic skin ulceration"),            # leading zero kept
        ("diag", "V5861", "icd9cm", "Long-term (current) use of anticoagulants"),
        ("diag", "I10", "icd10cm", "Essential (primary) hypertension"),
        ("diag", "icd10:I10", "icd10cm", "Essential (primary) hypertension"),
        ("diag", "E119", "icd10cm", "Type 2 diabetes mellitus without complications"),  # bare E: ICD-9 has no E119
        ("diag", "icd10:V00", "icd10cm", "Pedestrian conveyance accident"),
        ("proc", "3893", "icd9proc", "Venous catheterization, not elsewhere classified"),
        ("proc", "icd10:0DTJ4ZZ", "icd10pcs", "Resection of Appendix, Percutaneous Endoscopic Approach"),
        ("proc", "0DTJ4ZZ", "icd10pcs", "Resection of Appendix, Percutaneous Endoscopic Approach"),
        ("med", "N02B", "atc", "OTHER ANALGESICS AND ANTIPYRETICS"),
        ("med", "N", "atc", "NERVOUS SYSTEM"),
        ("med", "N02BE01", "atc", "paracetamol"),
    ],
)
def test_exact_titles(titles, kind, code, system, text):
    t = titles.resolve(kind, code)
    assert (t.text, t.system, t.match) == (text, system, "exact")
    assert titles.title(kind, code) == text


@pytest.mark.parametrize(
    ("kind", "code", "parent", "text"),
    [
        ("diag", "40199", "4019", "Unspecified essential hypertension"),       # strip a digit
        ("diag", "V5899", "V589", "Unspecified aftercare"),
        ("diag", "E9982", "E998", None),                                         # E category has 4 chars
        ("diag", "4069", "390-459", "Diseases Of The Circulatory System"),       # no 406 category: its block
        ("diag", "T814XXA", "T814", "Infection following a procedure"),         # ICD-10 placeholder X
        ("proc", "3601", "36", "Operations on vessels of heart"),                # retired code → 2-digit category
        ("proc", "022", "02", "Other operations on skull, brain, and cerebral meninges"),
        ("proc", "3E0436Z", "3", "Administration"),                              # PCS section
        ("med", "N02X", "N02", "ANALGESICS"),
        ("med", "N02BZ99", "N02B", "OTHER ANALGESICS AND ANTIPYRETICS"),
    ],
)
def test_parent_fallbacks(titles, kind, code, parent, text):
    t = titles.resolve(kind, code)
    assert (t.match, t.code) == ("parent", parent)
    if text is not None:
        assert t.text == text
    assert not t.text.startswith("unknown")


def test_unknown_codes(titles):
    assert titles.diag("ZZZ9") == "unknown code ZZZ9"
    assert titles.med("Q99") == "unknown code Q99"
    assert titles.proc("icd9:9") == "unknown code icd9:9"
    assert titles.title_words("med", "Q99") == []
    with pytest.raises(ValueError):
        titles.resolve("drug", "N02B")


def test_title_words_are_lowercase_tokens(titles):
    assert titles.title_words("diag", "V5861") == ["long", "term", "current", "use", "of", "anticoagulants"]
    assert title_words("med", "N02B") == ["other", "analgesics", "and", "antipyretics"]


def test_tables_load_lazily():
    fresh = CodeTitles()
    fresh.med("N02B")
    assert set(fresh._tables) == {"atc"}


README_EXACT = {  # ../shared/data/README.md "Coverage of benchmark vocabularies"
    "mimic3_safedrug131": {"diag": 1958, "proc": 1418},
    "mimic3_safedrug112": {"diag": 1958, "proc": 1418},
    "mimic3_micron151": {"diag": 1958, "proc": 1418},
    "mimic4_raremed122": {"diag": 3969, "proc": 1200},
}
MIMIC3_PROC_WITHOUT_TITLE = {"3601", "022", "3605", "458", "324", "325", "323", "485", "374", "537", "857", "684"}


@pytest.mark.mimic
@pytest.mark.parametrize("name", sorted(README_EXACT))
def test_benchmark_vocabularies_resolve(titles, benchmark_dir, name):
    root = benchmark_dir(name)
    for kind, column in (("diag", "icd9_code"), ("proc", "icd9_code"), ("med", "atc3")):
        codes = pd.read_csv(root / f"vocab_{kind}.csv", dtype=str, keep_default_na=False)[column]
        found = [titles.resolve(kind, c) for c in codes]
        exact = sum(t.match == "exact" for t in found)
        assert exact >= README_EXACT[name].get(kind, len(codes)), (kind, exact, len(codes))
        assert not [t for t in found if t.match == "unknown"], kind
        if name.startswith("mimic3") and kind == "proc":
            assert {t.code for t, c in zip(found, codes) if c in MIMIC3_PROC_WITHOUT_TITLE} <= {c[:2] for c in MIMIC3_PROC_WITHOUT_TITLE}
            assert all(titles.resolve("proc", c).match == "parent" for c in MIMIC3_PROC_WITHOUT_TITLE)
