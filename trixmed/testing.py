"""Tiny stand-ins for real models, for tests and benchmarks (nothing is ever downloaded)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def save_tiny_llama(
    path: str | Path,
    corpus: Iterable[str],
    *,
    vocab_size: int = 320,
    hidden_size: int = 32,
    num_layers: int = 2,
    max_positions: int = 1024,
    seed: int = 0,
) -> Path:
    """A random-weight `LlamaForCausalLM` and a byte-level BPE tokenizer trained on `corpus`,
    saved with `save_pretrained` so they load through the same `from_pretrained` path as LLaMA."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(path)
    return path
