"""ICD diagnosis chapters: the coarse disease categories a cluster profile is summarised by.

ICD-9-CM chapters are numeric ranges of the three-digit category plus the V (supplementary) and
E (external causes) sections; ICD-10-CM chapters are ranges of the letter + two digits. MIMIC-IV
codes carry an `icd9:` / `icd10:` prefix; unprefixed codes are read as ICD-9 when they start
with a digit (MIMIC-III), the same rule the title lookup uses.
"""

from __future__ import annotations

# (first category, last category, chapter title), ICD-9-CM
_ICD9 = (
    (1, 139, "Infectious and parasitic diseases"),
    (140, 239, "Neoplasms"),
    (240, 279, "Endocrine, nutritional and metabolic diseases, immunity disorders"),
    (280, 289, "Diseases of the blood and blood-forming organs"),
    (290, 319, "Mental disorders"),
    (320, 389, "Diseases of the nervous system and sense organs"),
    (390, 459, "Diseases of the circulatory system"),
    (460, 519, "Diseases of the respiratory system"),
    (520, 579, "Diseases of the digestive system"),
    (580, 629, "Diseases of the genitourinary system"),
    (630, 679, "Complications of pregnancy, childbirth and the puerperium"),
    (680, 709, "Diseases of the skin and subcutaneous tissue"),
    (710, 739, "Diseases of the musculoskeletal system and connective tissue"),
    (740, 759, "Congenital anomalies"),
    (760, 779, "Conditions originating in the perinatal period"),
    (780, 799, "Symptoms, signs and ill-defined conditions"),
    (800, 999, "Injury and poisoning"),
)
_ICD9_V = "Supplementary classification: factors influencing health status (V codes)"
_ICD9_E = "Supplementary classification: external causes of injury (E codes)"

# (first, last) as "letter + two digits", ICD-10-CM chapters
_ICD10 = (
    ("A00", "B99", "Certain infectious and parasitic diseases"),
    ("C00", "D49", "Neoplasms"),
    ("D50", "D89", "Diseases of the blood and immune mechanism"),
    ("E00", "E89", "Endocrine, nutritional and metabolic diseases"),
    ("F01", "F99", "Mental, behavioral and neurodevelopmental disorders"),
    ("G00", "G99", "Diseases of the nervous system"),
    ("H00", "H59", "Diseases of the eye and adnexa"),
    ("H60", "H95", "Diseases of the ear and mastoid process"),
    ("I00", "I99", "Diseases of the circulatory system"),
    ("J00", "J99", "Diseases of the respiratory system"),
    ("K00", "K95", "Diseases of the digestive system"),
    ("L00", "L99", "Diseases of the skin and subcutaneous tissue"),
    ("M00", "M99", "Diseases of the musculoskeletal system and connective tissue"),
    ("N00", "N99", "Diseases of the genitourinary system"),
    ("O00", "O9A", "Pregnancy, childbirth and the puerperium"),
    ("P00", "P96", "Certain conditions originating in the perinatal period"),
    ("Q00", "Q99", "Congenital malformations and chromosomal abnormalities"),
    ("R00", "R99", "Symptoms, signs and abnormal clinical and laboratory findings"),
    ("S00", "T88", "Injury, poisoning and other consequences of external causes"),
    ("U00", "U85", "Codes for special purposes"),
    ("V00", "Y99", "External causes of morbidity"),
    ("Z00", "Z99", "Factors influencing health status and contact with health services"),
)
UNKNOWN = "Unclassified code"


def diagnosis_chapter(code: str) -> str:
    """The ICD chapter title of a diagnosis code (MIMIC style: no dot, optional icd9:/icd10: prefix)."""
    prefix, sep, rest = code.strip().partition(":")
    version = prefix.lower() if sep else ""
    bare = (rest if sep else code).replace(".", "").strip().upper()
    # unprefixed V/E codes are ICD-9 (MIMIC-III: V5861, E8788); MIMIC-IV prefixes its ICD-10 codes
    if version == "icd10" or (version != "icd9" and bare[:1].isalpha() and bare[:1] not in ("V", "E")):
        return _icd10_chapter(bare)
    return _icd9_chapter(bare)


def _icd9_chapter(bare: str) -> str:
    if bare.startswith("V"):
        return _ICD9_V
    if bare.startswith("E"):
        return _ICD9_E
    digits = bare[:3]
    if len(digits) < 3 or not digits.isdigit():
        return UNKNOWN
    category = int(digits)
    return next((title for lo, hi, title in _ICD9 if lo <= category <= hi), UNKNOWN)


def _icd10_chapter(bare: str) -> str:
    head = bare[:3]
    if len(head) < 3 or not head[1].isdigit():
        return UNKNOWN
    return next((title for lo, hi, title in _ICD10 if lo <= head <= hi), UNKNOWN)
