"""Tiny vocabularies, samples and configs for the model tests."""

from __future__ import annotations

import random

from trixmed.config import Config, load_config
from trixmed.data.dataset import Sample, Visit, Vocab


class FakeTitles:
    """Titles with shared words so title-word enrichment has something to share."""

    def title_words(self, kind: str, code: str) -> list[str]:
        return [] if code.endswith("9") else [kind, f"w{code[-1]}", "common"]

    def title(self, kind: str, code: str) -> str:
        return " ".join(self.title_words(kind, code)) or code

    def diag(self, code: str) -> str:
        return self.title("diag", code)

    def proc(self, code: str) -> str:
        return self.title("proc", code)

    def med(self, code: str) -> str:
        return self.title("med", code)


def make_vocab() -> Vocab:
    return Vocab(diag=[f"D{i}" for i in range(12)], proc=[f"P{i}" for i in range(7)], med=[f"M{i}" for i in range(10)])


def make_samples(vocab: Vocab, n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        visits = tuple(
            Visit(tuple(rng.sample(vocab.diag, rng.randint(1, 4))), tuple(rng.sample(vocab.proc, rng.randint(0, 3))),
                  tuple(rng.sample(vocab.med, rng.randint(1, 4))))
            for _ in range(rng.randint(1, 4))
        )
        out.append(Sample(f"p{i}:{len(visits) - 1}", f"p{i}", "train", visits))
    return out


def tiny_config(*overrides: str) -> Config:
    base = ["model.codes.d_model=16", "model.codes.n_heads=2", "model.codes.dropout=0.0", "model.lora.rank=2",
            "model.moe.num_experts=4", "model.moe.top_n=2"]
    return load_config(None, base + list(overrides))
