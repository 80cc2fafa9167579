"""The `hf` backbone: a local Hugging Face causal LM (LLaMA-3.1-8B in production) with peft LoRA.

Input is the narrative prompt (trixmed.text.narrative), optionally followed by the output text
(the medication list) for the warm-up LM loss. Features are the last-layer hidden states
mean-pooled over the *prompt* tokens only: a causal LM's prompt states never see the output, so
the medication head cannot peek at its own target. LM logits are computed only at output
positions (a 128k-word lm_head over every token would dominate the cost).
"""

from __future__ import annotations

import warnings

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trixmed.config import HFBackboneConfig, LoraConfig
from trixmed.errors import TrixmedError


def load_causal_lm(cfg: HFBackboneConfig) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(cfg.path, local_files_only=True, dtype=_dtype(cfg))
    except (OSError, ValueError) as exc:
        raise TrixmedError(cfg.path, f"cannot load a causal LM from this directory: {' '.join(str(exc).split())[:300]}") from None


def load_tokenizer(cfg: HFBackboneConfig) -> Any:
    """The backbone's tokenizer, with a pad token (Llama has none: reuse EOS)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(cfg.path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TrixmedError(cfg.path, f"cannot load a tokenizer from this directory: {' '.join(str(exc).split())[:300]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _dtype(cfg: HFBackboneConfig) -> torch.dtype:
    dtype = getattr(torch, cfg.torch_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise TrixmedError("model.hf.torch_dtype", f"not a torch dtype: {cfg.torch_dtype!r}")
    return dtype


class HFBackbone(nn.Module):
    def __init__(self, cfg: HFBackboneConfig, lora: LoraConfig):
        super().__init__()
        from peft import LoraConfig as PeftLoraConfig, get_peft_model

        lm = load_causal_lm(cfg)
        if cfg.gradient_checkpointing:
            lm.activation_checkpointing_enable()
            lm.enable_input_require_grads()  # checkpointed blocks need a grad-requiring input with a frozen base
        self.hidden_size = lm.config.hidden_size
        peft_cfg = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                  target_modules=list(lora.targets), task_type="CAUSAL_LM")
        try:
            with warnings.catch_warnings():
                # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` alias; the
                # checkpointing it would set up is already done above
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
                self.peft = get_peft_model(lm, peft_cfg)
        except ValueError as exc:
            raise TrixmedError("model.lora.targets", f"{lora.targets} match no layer of {cfg.path}: {exc}") from None

    @property
    def lm(self) -> nn.Module:
        return self.peft.get_base_model()

    def input_features(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean prompt-token embedding: what the learned (Std. MoE) router sees."""
        from trixmed.models.codes import masked_mean

        emb = self.lm.get_input_embeddings()(batch["input_ids"])
        return masked_mean(emb.float(), batch["prompt_mask"])

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """→ (last hidden states [B, L, H], prompt mask [B, L], LM loss on the output tokens or None)."""
        hidden = self.lm.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        lm_loss = None
        labels = batch.get("lm_labels")
        if labels is not None:
            nxt = labels[:, 1:]
            where = nxt != -100
            logits = self.lm.get_output_embeddings()(hidden[:, :-1][where])
            lm_loss = F.cross_entropy(logits.float(), nxt[where])
        return hidden, batch["prompt_mask"], lm_loss
