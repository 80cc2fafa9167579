"""One sample → the paper's instruction / input / output narrative (appendix A.2).

    Instruction: Based on the patient's historical medical records, predict the medications ...
    Input:
    Patient History:
    Visit 1:
    Diagnoses: Unspecified essential hypertension; Atrial fibrillation
    Procedures: none
    Medications: B01A (ANTITHROMBOTIC AGENTS), C07A (BETA BLOCKING AGENTS)
    Current Visit:
    Diagnoses: ...
    Procedures: ...
    Output:
    Recommended medications:
    B01A (ANTITHROMBOTIC AGENTS), N02B (OTHER ANALGESICS AND ANTIPYRETICS)

Rendering is deterministic: diagnoses and procedures keep their recorded order (MIMIC sequence
priority); medications are sorted by ATC code. Titles are joined with "; " because titles contain
commas; medications are `ATC (name)` joined with ", " since the code prefix keeps them apart.

`token_budget` bounds the whole text (prompt + output). Over budget, the oldest history visits
go first (history visits keep their original numbers, and a line says how many were omitted);
if the current visit alone is still too long, its diagnosis/procedure lists are cut from the end,
longest list first, and `Narrative.truncated` is set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from trixmed.data.dataset import Sample, Visit
from trixmed.text.titles import CodeTitles

OUTPUT_CUE = "Output:\nRecommended medications:\n"
NONE = "none"


@dataclass(frozen=True)
class Narrative:
    instruction: str
    input: str
    output: str
    prompt: str               # instruction + input + output cue: what the LM is conditioned on
    text: str                 # prompt + output: the supervised fine-tuning text
    n_tokens: int             # count_tokens(text)
    n_history_kept: int
    n_history_dropped: int
    truncated: bool           # the current visit's code lists were cut to fit the budget
    over_budget: bool         # still over budget (current visit emptied, output alone too long)


def whitespace_tokens(text: str) -> int:
    return len(text.split())


def render(
    sample: Sample,
    titles: CodeTitles,
    *,
    token_budget: int,
    instruction: str,
    count_tokens: Callable[[str], int] | None = None,
) -> Narrative:
    """Render one sample; see the module docstring for the template and the budget rules."""
    count = count_tokens or whitespace_tokens
    history = [_history_block(i + 1, v, titles) for i, v in enumerate(sample.history)]
    output = medications(sample.target, titles)
    diag = [titles.diag(c) for c in sample.current.diag]
    proc = [titles.proc(c) for c in sample.current.proc]

    def build(n_drop: int, d: list[str], p: list[str]) -> tuple[str, str, str, int]:
        inp = _input_text(history[n_drop:], n_drop, d, p)
        prompt = f"Instruction: {instruction}\nInput:\n{inp}{OUTPUT_CUE}"
        text = prompt + output
        return inp, prompt, text, count(text)

    n_drop = 0
    inp, prompt, text, n = build(0, diag, proc)
    while n > token_budget and n_drop < len(history):
        n_drop += 1
        inp, prompt, text, n = build(n_drop, diag, proc)
    truncated = False
    while n > token_budget and (diag or proc):
        # cut the longer list so both kinds of evidence survive as long as possible
        if len(diag) >= len(proc):
            diag = diag[:-1]
        else:
            proc = proc[:-1]
        truncated = True
        inp, prompt, text, n = build(n_drop, diag, proc)
    return Narrative(
        instruction=instruction,
        input=inp,
        output=output,
        prompt=prompt,
        text=text,
        n_tokens=n,
        n_history_kept=len(history) - n_drop,
        n_history_dropped=n_drop,
        truncated=truncated,
        over_budget=n > token_budget,
    )


def medications(codes: Sequence[str], titles: CodeTitles) -> str:
    """`ATC (name)` for each code, sorted by code, comma-separated; "none" for an empty set."""
    return ", ".join(f"{c} ({titles.med(c)})" for c in sorted(set(codes))) or NONE


# --------------------------------------------------------------------------------------------


def _history_block(number: int, visit: Visit, titles: CodeTitles) -> str:
    return (
        f"Visit {number}:\n"
        f"Diagnoses: {_join(titles.diag(c) for c in visit.diag)}\n"
        f"Procedures: {_join(titles.proc(c) for c in visit.proc)}\n"
        f"Medications: {medications(visit.med, titles)}\n"
    )


def _input_text(blocks: list[str], n_dropped: int, diag: list[str], proc: list[str]) -> str:
    parts = ["Patient History:\n"]
    if n_dropped:
        parts.append(f"({n_dropped} earlier visit{'s' if n_dropped > 1 else ''} omitted)\n")
    parts.extend(blocks if blocks or n_dropped else ["No previous visits.\n"])
    parts.append(f"Current Visit:\nDiagnoses: {_join(diag)}\nProcedures: {_join(proc)}\n")
    return "".join(parts)


def _join(items: Iterable[str]) -> str:
    return "; ".join(items) or NONE
