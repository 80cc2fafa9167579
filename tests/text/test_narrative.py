from __future__ import annotations

import pytest
from trixmed.testing import make_dataset_dir

from trixmed.config import TextConfig
from trixmed.data.dataset import Dataset, Sample, Visit
from trixmed.text.narrative import render
from trixmed.text.titles import CodeTitles

EXPECTED = """\
Instruction: Predict.
Input:
Patient History:
Visit 1:
Diagnoses: Unspecified essential hypertension
Procedures: Venous catheterization, not elsewhere classified
Medications: B01A (ANTITHROMBOTIC AGENTS), N02B (OTHER ANALGESICS AND ANTIPYRETICS)
Current Visit:
Diagnoses: Atrial fibrillation; Acute kidney failure, unspecified
Procedures: none
Output:
Recommended medications:
C07A (BETA BLOCKING AGENTS), N02B (OTHER ANALGESICS AND ANTIPYRETICS)"""


@pytest.fixture(scope="module")
def titles() -> CodeTitles:
    return CodeTitles.default()


def sample(history: list[Visit], current: Visit) -> Sample:
    return Sample("p:%d" % len(history), "p", "test", (*history, current))


def test_template(titles):
    s = sample([Visit(("4019",), ("3893",), ("N02B", "B01A"))], Visit(("42731", "5849"), (), ("N02B", "C07A")))
    n = render(s, titles, token_budget=1000, instruction="Predict.")
    assert n.text == EXPECTED
    assert n.prompt + n.output == n.text
    assert n.prompt.endswith("Recommended medications:\n")
    assert n.input.startswith("Patient History:\nVisit 1:\n") and "Current Visit:" in n.input
    assert n.output == "C07A (BETA BLOCKING AGENTS), N02B (OTHER ANALGESICS AND ANTIPYRETICS)"
    assert n.n_tokens == len(EXPECTED.split())
    assert (n.n_history_kept, n.n_history_dropped, n.truncated, n.over_budget) == (1, 0, False, False)


def test_first_visit_and_empty_target(titles):
    n = render(sample([], Visit(("4019",), (), ())), titles, token_budget=1000, instruction="Predict.")
    assert "Patient History:\nNo previous visits.\nCurrent Visit:" in n.prompt
    assert n.output == "none"


def test_deterministic_whatever_the_medication_order(titles):
    a = sample([Visit(("4019",), (), ("N02B", "B01A", "C07A"))], Visit(("4019",), (), ("C07A", "B01A")))
    b = sample([Visit(("4019",), (), ("C07A", "N02B", "B01A"))], Visit(("4019",), (), ("B01A", "C07A")))
    assert render(a, titles, token_budget=500, instruction="x").text == render(b, titles, token_budget=500, instruction="x").text


def test_budget_drops_the_oldest_history_visits_first(titles):
    history = [Visit((d,), (), ("N02B",)) for d in ("4019", "42731", "5849")]
    s = sample(history, Visit(("2724",), (), ("B01A",)))
    full = render(s, titles, token_budget=10_000, instruction="Predict.")
    alone = render(sample([], s.current), titles, token_budget=10_000, instruction="Predict.")
    n = render(s, titles, token_budget=full.n_tokens - 1, instruction="Predict.")
    assert n.n_history_dropped == 1 and n.n_history_kept == 2
    assert "Unspecified essential hypertension" not in n.input          # visit 1 (the oldest) went
    assert "Visit 2:" in n.input and "Visit 3:" in n.input and "Visit 1:" not in n.input
    assert "(1 earlier visit omitted)" in n.input
    assert n.n_tokens <= full.n_tokens - 1 and not n.truncated
    # "(3 earlier visits omitted)" is one word longer than "No previous visits."
    tiny = render(s, titles, token_budget=alone.n_tokens + 1, instruction="Predict.")
    assert tiny.n_history_kept == 0 and "(3 earlier visits omitted)" in tiny.input
    assert "Diagnoses: Other and unspecified hyperlipidemia" in tiny.input        # the current visit stays whole
    assert not tiny.truncated


def test_current_visit_is_cut_deterministically_when_alone_too_long(titles):
    current = Visit(("4019", "42731", "5849", "2724"), ("3893",), ("N02B",))
    s = sample([Visit(("4019",), (), ())], current)
    whole = render(sample([], current), titles, token_budget=10_000, instruction="Predict.")
    n = render(s, titles, token_budget=whole.n_tokens - 4, instruction="Predict.")
    assert n.truncated and n.n_history_kept == 0 and not n.over_budget
    assert n.n_tokens <= whole.n_tokens - 4
    assert "Other and unspecified hyperlipidemia" not in n.input                  # the last diagnosis went first
    assert "Unspecified essential hypertension" in n.input
    assert n == render(s, titles, token_budget=whole.n_tokens - 4, instruction="Predict.")
    hopeless = render(s, titles, token_budget=3, instruction="Predict.")
    assert hopeless.over_budget and "Diagnoses: none" in hopeless.input


def test_custom_token_counter(titles):
    s = sample([Visit(("4019",), (), ("N02B",))] * 2, Visit(("4019",), (), ("N02B",)))
    chars = render(s, titles, token_budget=10_000, instruction="x", count_tokens=len)
    assert chars.n_tokens == len(chars.text)
    assert render(s, titles, token_budget=chars.n_tokens - 1, instruction="x", count_tokens=len).n_history_dropped == 1


def test_dataset_samples_render_in_order(tmp_path, titles):
    vocab = {"diag": ["4019", "42731"], "proc": ["3893"], "med": ["B01A", "N02B"]}
    visits = [
        {"patient_id": "a", "visit_order": 0, "split": "train", "diag": ["4019"], "proc": [], "med": ["N02B"]},
        {"patient_id": "a", "visit_order": 1, "split": "train", "diag": ["42731"], "proc": ["3893"], "med": ["B01A"]},
        {"patient_id": "b", "visit_order": 0, "split": "test", "diag": ["4019"], "proc": [], "med": ["B01A", "N02B"]},
    ]
    ds = Dataset(make_dataset_dir(tmp_path / "ds", visits, vocab))
    cfg = TextConfig()
    rendered = [render(s, titles, token_budget=cfg.token_budget, instruction=cfg.instruction) for s in ds.samples()]
    assert [s.visit_key for s in ds.samples()] == ["a:0", "a:1", "b:0"]
    assert rendered[1].output == "B01A (ANTITHROMBOTIC AGENTS)"
    assert "Visit 1:" in rendered[1].prompt and "Visit 1:" not in rendered[0].prompt
    assert all(n.prompt.startswith("Instruction: ") for n in rendered)


@pytest.mark.parametrize("override", ["text.token_budget=0", "text.instruction=' '"])
def test_bad_text_config(override):
    from trixmed.config import load_config
    from trixmed.errors import TrixmedError

    with pytest.raises(TrixmedError, match=override.split("=")[0]):
        load_config(None, [override])
