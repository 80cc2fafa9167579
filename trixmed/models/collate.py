"""Samples → tensors, for either backbone.

codes batch:  diag / proc / med [B, V, L] long code ids (pad = vocabulary size; the current visit's
              med row is all padding: it is the target), visit_pos [B, V] (0 = current visit),
              visit_mask [B, V] bool; the `max_visits` most recent visits are kept.
hf batch:     input_ids / attention_mask / prompt_mask [B, L], and lm_labels [B, L] (-100 outside the
              output tokens) when the output text is appended for the warm-up LM loss.
both:         labels [B, n_med] float, multi_hot_<input> [B, vocabulary] for each `model.direct`
              input (prev_med, hist_med, diag, proc, hist_diag), and cluster [B] long when cluster ids are given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from trixmed.config import DIRECT_INPUTS, Config
from trixmed.data.dataset import Sample, Vocab
from trixmed.errors import TrixmedError

Collator = Callable[..., dict[str, Tensor]]


def build_collator(cfg: Config, vocab: Vocab, *, tokenizer: Any = None, titles: Any = None,
                   with_output: bool | None = None) -> Collator:
    """`collate(samples, clusters=None)`. hf: `with_output` (default: warmup.lm_weight > 0) appends the
    medication text after the prompt for the LM loss; prompt states are unaffected (causal)."""
    if cfg.model.backbone == "codes":
        return _CodesCollator(vocab, cfg.model.codes.max_visits, tuple(cfg.model.direct))
    if tokenizer is None:
        raise ValueError("build_collator: backbone=hf needs the model's tokenizer")
    if titles is None:
        from trixmed.text.titles import CodeTitles

        titles = CodeTitles.default()
    if with_output is None:
        with_output = cfg.warmup.lm_weight > 0
    return _TextCollator(cfg, vocab, tokenizer, titles, with_output)


def _multi_hot(samples: list[Sample], vocab: Vocab, kind: str, visits: slice) -> Tensor:
    """Multi-hot union of the `kind` codes of each sample's `visits` (none → zeros)."""
    index = vocab.index(kind)
    out = torch.zeros(len(samples), len(index))
    for r, s in enumerate(samples):
        for c in {c for v in s.visits[visits] for c in getattr(v, kind)}:
            if c not in index:
                raise TrixmedError(f"sample {s.visit_key}", f"{kind} code {c!r} is not in the dataset vocabulary")
            out[r, index[c]] = 1.0
    return out


def _finish(batch: dict[str, Tensor], samples: list[Sample], vocab: Vocab, clusters: list[int] | None,
            direct: tuple[str, ...]) -> dict[str, Tensor]:
    batch["labels"] = _multi_hot(samples, vocab, "med", slice(-1, None))
    for name in direct:
        batch[f"multi_hot_{name}"] = _multi_hot(samples, vocab, *DIRECT_INPUTS[name])
    if clusters is not None:
        if len(clusters) != len(samples):
            raise ValueError(f"collate: {len(clusters)} cluster ids for {len(samples)} samples")
        batch["cluster"] = torch.as_tensor(clusters, dtype=torch.long)
    return batch


class _CodesCollator:
    def __init__(self, vocab: Vocab, max_visits: int, direct: tuple[str, ...]):
        self.vocab, self.max_visits, self.direct = vocab, max_visits, direct
        self.index = {k: vocab.index(k) for k in ("diag", "proc", "med")}

    def __call__(self, samples: list[Sample], clusters: list[int] | None = None) -> dict[str, Tensor]:
        visits = [s.visits[-self.max_visits:] for s in samples]
        b, v = len(samples), max(len(x) for x in visits)
        batch: dict[str, Tensor] = {}
        for kind, index in self.index.items():
            rows = [[() if (kind == "med" and t == len(vs) - 1) else getattr(vis, kind) for t, vis in enumerate(vs)]
                    for vs in visits]
            length = max((len(codes) for r in rows for codes in r), default=0)
            out = torch.full((b, v, length), len(index), dtype=torch.long)
            for i, (s, r) in enumerate(zip(samples, rows)):
                for t, codes in enumerate(r):
                    try:
                        ids = [index[c] for c in codes]
                    except KeyError as exc:
                        raise TrixmedError(f"sample {s.visit_key}", f"{kind} code {exc.args[0]!r} is not in the dataset vocabulary") from None
                    out[i, t, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            batch[kind] = out
        mask = torch.zeros(b, v, dtype=torch.bool)
        pos = torch.zeros(b, v, dtype=torch.long)
        for i, vs in enumerate(visits):
            mask[i, : len(vs)] = True
            pos[i, : len(vs)] = torch.arange(len(vs) - 1, -1, -1)
        batch["visit_mask"], batch["visit_pos"] = mask, pos
        return _finish(batch, samples, self.vocab, clusters, self.direct)


class _TextCollator:
    def __init__(self, cfg: Config, vocab: Vocab, tokenizer: Any, titles: Any, with_output: bool):
        self.cfg, self.vocab, self.tok, self.titles, self.with_output = cfg, vocab, tokenizer, titles, with_output
        self.direct = tuple(cfg.model.direct)
        self.max_length = cfg.model.hf.max_length

    def _count(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def __call__(self, samples: list[Sample], clusters: list[int] | None = None) -> dict[str, Tensor]:
        from trixmed.text.narrative import render

        rows = []
        for s in samples:
            n = render(s, self.titles, token_budget=self.cfg.text.token_budget,
                       instruction=self.cfg.text.instruction, count_tokens=self._count)
            prompt = self.tok(n.prompt, add_special_tokens=True)["input_ids"]
            output = self.tok(n.output, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id] if self.with_output else []
            # keep the end of the prompt (the current visit) when the budget is exceeded
            prompt = prompt[-max(1, self.max_length - len(output)):]
            rows.append((prompt, output[: self.max_length - len(prompt)]))
        length = max(len(p) + len(o) for p, o in rows)
        ids = torch.full((len(rows), length), self.tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros(len(rows), length, dtype=torch.long)
        prompt_mask = torch.zeros(len(rows), length, dtype=torch.bool)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        for i, (p, o) in enumerate(rows):
            ids[i, : len(p) + len(o)] = torch.as_tensor(p + o, dtype=torch.long)
            attn[i, : len(p) + len(o)] = 1
            prompt_mask[i, : len(p)] = True
            labels[i, len(p): len(p) + len(o)] = torch.as_tensor(o, dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": attn, "prompt_mask": prompt_mask}
        if self.with_output:
            batch["lm_labels"] = labels
        return _finish(batch, samples, self.vocab, clusters, self.direct)
