"""Zero-shot transfer's code mapping: by string, never by index; what the source cannot see is
counted, not dropped silently."""

from __future__ import annotations

from trixmed.data.dataset import Sample, Visit, Vocab
from trixmed.pipeline.transfer import map_samples, medication_columns


def test_codes_map_by_string_and_unseen_ones_are_counted() -> None:
    source = Vocab(diag=["D1", "D2", "D3"], proc=["P1"], med=["M1", "M2", "M3"])
    samples = [
        Sample("a:1", "a", "test", (Visit(("D3", "X9"), ("P1",), ("M3", "MX")), Visit(("D1", "X9", "X8"), ("PX",), ("M1",)))),
        Sample("b:0", "b", "test", (Visit(("D2",), (), ("M2",)),)),
    ]
    mapped, cov = map_samples(samples, source)
    assert [v.diag for v in mapped[0].visits] == [("D3",), ("D1",)]
    assert [v.proc for v in mapped[0].visits] == [("P1",), ()]
    assert [v.med for v in mapped[0].visits] == [("M3",), ("M1",)]
    assert mapped[1] == samples[1] and mapped[0].visit_key == "a:1"
    assert cov["diag"] == {"occurrences": 6, "unseen": 3, "unseen_share": 0.5, "unseen_codes": 2,
                           "top_unseen": [("X9", 2), ("X8", 1)]}
    assert cov["proc"]["unseen"] == 1 and cov["proc"]["occurrences"] == 2
    assert cov["med"]["top_unseen"] == [("MX", 1)]


def test_medication_columns_follow_the_strings() -> None:
    assert medication_columns(["M1", "M2", "M3"], ["M3", "MX", "M1"]).tolist() == [2, -1, 0]
