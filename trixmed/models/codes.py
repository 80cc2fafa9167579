"""The `codes` backbone: code embeddings → Transformer encoder over visits (fast on CPU).

Visit t of a sample is  v_t = W_in [mean E_d(d_t), mean E_p(p_t), mean E_m(m_t)] + P(T - t)
(the current visit's medication part is empty, so zero: it is the target). With title words on,
every code embedding also gets the mean of learnable embeddings of the words of its title, so rare
codes share meaning with common ones. Linear layers are named like Llama's (q/k/v/o_proj,
up/down_proj) so one LoRA target list serves both backbones. Pooled = masked mean over visits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trixmed.config import CodesBackboneConfig
from trixmed.data.dataset import Vocab

KINDS = ("diag", "proc", "med")
MAX_TITLE_WORDS = 16


class Attention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))
        self.dropout = dropout

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :],
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.up_proj = nn.Linear(d, 4 * d)
        self.down_proj = nn.Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.self_attn = Attention(d, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = MLP(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = x + self.drop(self.self_attn(self.ln_1(x), keep))
        return x + self.drop(self.mlp(self.ln_2(x)))


class CodesBackbone(nn.Module):
    def __init__(self, cfg: CodesBackboneConfig, sizes: dict[str, int],
                 title_words: dict[str, Tensor] | None = None, num_words: int = 0):
        super().__init__()
        d = cfg.d_model
        self.hidden_size = d
        self.sizes = dict(sizes)
        # index n (one past the vocabulary) pads the code lists; embedding_bag leaves it out of the mean
        self.code_emb = nn.ModuleDict({k: nn.Embedding(sizes[k] + 1, d, padding_idx=sizes[k]) for k in KINDS})
        self.word_emb = nn.Embedding(num_words + 1, d, padding_idx=num_words) if title_words else None
        for k in KINDS:
            # [n_codes, MAX_TITLE_WORDS] word ids of each code's title (pad = num_words); saved with the model
            self.register_buffer(f"title_words_{k}", title_words[k] if title_words else torch.empty(0, dtype=torch.long))
        self.visit_proj = nn.Linear(3 * d, d)
        self.pos_emb = nn.Embedding(cfg.max_visits, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)

    def embedding_modules(self) -> list[nn.Module]:
        """Everything before the encoder: what turns codes into visit vectors."""
        return [m for m in (self.code_emb, self.word_emb, self.visit_proj, self.pos_emb) if m is not None]

    def title_embedding(self, kind: str) -> Tensor:
        """[n_codes, d]: the mean embedding of each code's title words (zero for a title without any)."""
        words = getattr(self, f"title_words_{kind}")
        return F.embedding_bag(words, self.word_emb.weight, mode="mean", padding_idx=self.word_emb.padding_idx)

    def _table(self, kind: str) -> Tensor:
        weight = self.code_emb[kind].weight
        if self.word_emb is None:
            return weight
        return torch.cat([weight[:-1] + self.title_embedding(kind), weight[-1:]])

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """Visit vectors [B, V, d] (before the encoder)."""
        parts = []
        for kind in KINDS:
            codes = batch[kind]                                  # [B, V, L]
            if codes.shape[-1] == 0:
                # An all-padding slot embeds to zero like the empty list, but keeps this table in the
                # graph: otherwise its weight gets no gradient on this rank only and ZeRO's gradient
                # reductions disagree across ranks (gloo aborts).
                codes = codes.new_full((*codes.shape[:-1], 1), self.sizes[kind])
            b, v, length = codes.shape
            bag = F.embedding_bag(codes.reshape(b * v, length), self._table(kind), mode="mean",
                                  padding_idx=self.sizes[kind])
            parts.append(bag.view(b, v, -1))
        x = self.visit_proj(torch.cat(parts, dim=-1)) + self.pos_emb(batch["visit_pos"])
        return self.drop(x)

    def input_features(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean visit embedding: what the learned (Std. MoE) router sees."""
        return masked_mean(self.embed(batch), batch["visit_mask"])

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, None]:
        """→ (hidden [B, V, d], visit mask [B, V], lm_loss None)."""
        keep = batch["visit_mask"]
        x = self.embed(batch)
        for layer in self.layers:
            x = layer(x, keep)
        return self.norm(x), keep, None


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def build_title_words(vocab: Vocab, titles: Any) -> tuple[dict[str, Tensor], list[str]]:
    """code → word-id table of each vocabulary, from `titles.title_words(kind, code)` (trixmed.text)."""
    per_kind = {k: [list(titles.title_words(k, c))[:MAX_TITLE_WORDS] for c in getattr(vocab, k)] for k in KINDS}
    words = sorted({w for rows in per_kind.values() for row in rows for w in row})
    index = {w: i for i, w in enumerate(words)}
    pad = len(words)
    tables = {}
    for k, rows in per_kind.items():
        t = torch.full((len(rows), MAX_TITLE_WORDS), pad, dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                t[i, : len(row)] = torch.tensor([index[w] for w in row])
        tables[k] = t
    return tables, words
