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

from trixmed.config import LoraConfig
from trixmed.errors import TrixmedError
from trixmed.models.lora import mask_rank


class HFBackbone(nn.Module):
    """A causal LM (loaded by trixmed.models.checkpoint, or built by the caller: random weights for
    a GPU check) with peft LoRA on the `lora.targets` linears; the base stays frozen."""

    def __init__(self, lm: nn.Module, lora: LoraConfig, *, gradient_checkpointing: bool = False, name: str = "the model"):
        super().__init__()
        from peft import LoraConfig as PeftLoraConfig, get_peft_model

        if gradient_checkpointing:
            # transformers 5.20 renamed it; the bare-GPU check (benchmarks/gpu_check.py) runs on
            # whatever transformers a GPU machine has (5.17 on the lent H200)
            enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
            enable()
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
            raise TrixmedError("model.lora.targets", f"{lora.targets} match no layer of {name}: {exc}") from None
        # drug groups (model.drug_groups): set per forward by MedRecModel; peft's layers are not ours,
        # so the mask reaches their low-rank activations through a hook on each lora_A
        self.rank_mask: Tensor | None = None
        from peft.tuners.lora import LoraLayer

        for m in self.peft.modules():
            if isinstance(m, LoraLayer):
                for lora_A in m.lora_A.values():
                    lora_A.register_forward_hook(self._mask_ranks)

    def _mask_ranks(self, module: nn.Module, inputs: Any, h: Tensor) -> Tensor:
        return mask_rank(h, self.rank_mask)

    @property
    def lm(self) -> nn.Module:
        return self.peft.get_base_model()

    @torch.no_grad()
    def text_embeddings(self, tokenizer: Any, texts: list[str], batch_size: int = 32) -> Tensor:
        """[len(texts), H] float32: the frozen base LM's (adapters off) last hidden states, mean-pooled
        over each text's tokens."""
        from trixmed.models.codes import masked_mean

        device = next(self.lm.parameters()).device
        out = []
        with self.peft.disable_adapter():
            for i in range(0, len(texts), batch_size):
                enc = tokenizer(texts[i:i + batch_size], padding=True, return_tensors="pt").to(device)
                hidden = self.lm.get_decoder()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                out.append(masked_mean(hidden.float(), enc["attention_mask"]).cpu())
        return torch.cat(out)

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
