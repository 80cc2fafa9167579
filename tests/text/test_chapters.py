import pytest

from trixmed.text.chapters import UNKNOWN, diagnosis_chapter


@pytest.mark.parametrize(("code", "chapter"), [
    ("4019", "Diseases of the circulatory system"),              # MIMIC-III, no dot
    ("0389", "Infectious and parasitic diseases"),
    ("25000", "Endocrine, nutritional and metabolic diseases, immunity disorders"),
    ("V5861", "Supplementary classification: factors influencing health status (V codes)"),
    ("E8788", "Supplementary classification: external causes of injury (E codes)"),
    ("icd9:99591", "Injury and poisoning"),
    ("icd10:E119", "Endocrine, nutritional and metabolic diseases"),   # an ICD-10 E code is not an ICD-9 E code
    ("icd10:I10", "Diseases of the circulatory system"),
    ("icd10:O9A1", "Pregnancy, childbirth and the puerperium"),
    ("icd10:T400X1A", "Injury, poisoning and other consequences of external causes"),
    ("Z87891", "Factors influencing health status and contact with health services"),
    ("XYZ", UNKNOWN),
    ("12", UNKNOWN),
])
def test_chapter(code, chapter):
    assert diagnosis_chapter(code) == chapter
