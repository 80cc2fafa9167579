"""The NLA-MMR drug-side head (`model.head: drug_tower`): patients and drugs in one d-dim space.

    logit_j = (W_p · patient) · drug_j + b_j
    drug_j  = MLP([title_j ; (1 - m_j) · W_f · fingerprint_j ; m_j])

title_j is the drug's description read by the backbone's own language: on `codes`, the mean of
the backbone's title-word embeddings over the drug's ATC title (the words diagnoses and
procedures share); on `hf`, the frozen LM's mean-pooled last hidden state over the title text,
computed once when the model is built. fingerprint_j is the mean RDKit Morgan fingerprint of the
molecules of the drug's ATC class (trixmed/data/drugs.py); a drug without one has m_j = 1 and a
zero molecular part. Instead of a free output vector per drug, every drug vector is a function
of what is known of the drug, so drugs with similar titles or structures start out alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trixmed.config import DrugTowerConfig


@dataclass(frozen=True)
class DrugInputs:
    """What a fresh tower is filled from, per drug in vocabulary order."""

    smiles: list[list[str]]
    titles: list[str]   # title texts (read by the hf backbone's LM; codes reads title words)


class DrugTower(nn.Module):
    """`title_dim`: the width of a title embedding. `fixed_titles` (hf): the title embeddings are a
    buffer filled by `set_drugs`; otherwise (codes) `forward` is given them."""

    def __init__(self, patient_dim: int, title_dim: int, n_med: int, cfg: DrugTowerConfig, *, fixed_titles: bool):
        super().__init__()
        d = cfg.dim
        self.patient = nn.Linear(patient_dim, d)
        self.fingerprint = nn.Linear(cfg.fingerprint_bits, d)
        self.drug = nn.Sequential(nn.Linear(title_dim + d + 1, d), nn.GELU(), nn.Linear(d, d))
        self.bias = nn.Parameter(torch.zeros(n_med))
        # filled by `set_drugs` in a fresh model, by the saved state in a loaded one
        self.register_buffer("fingerprints", torch.zeros(n_med, cfg.fingerprint_bits))
        self.register_buffer("missing", torch.ones(n_med))
        self.register_buffer("titles", torch.zeros(n_med, title_dim) if fixed_titles else torch.zeros(0))

    def set_drugs(self, fingerprints: Tensor, missing: Tensor, titles: Tensor | None = None) -> None:
        self.fingerprints.copy_(fingerprints)
        self.missing.copy_(missing)
        if titles is not None:
            self.titles.copy_(titles)

    def molecular(self) -> Tensor:
        """[n_med, d]: each drug's projected fingerprint, zero for a drug without molecules."""
        return self.fingerprint(self.fingerprints) * (1 - self.missing)[:, None]

    def drugs(self, titles: Tensor | None = None) -> Tensor:
        """[n_med, d]: every drug's vector in the shared space."""
        titles = self.titles if titles is None else titles
        return self.drug(torch.cat([titles.to(self.bias.dtype), self.molecular(), self.missing[:, None]], dim=-1))

    def forward(self, patient: Tensor, titles: Tensor | None = None) -> Tensor:
        return self.patient(patient) @ self.drugs(titles).T + self.bias
