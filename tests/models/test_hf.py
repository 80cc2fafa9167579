"""The `hf` backbone on a tiny random Llama and a locally trained tokenizer (no downloads)."""

import pytest
import torch

from trixmed.testing import FakeTitles, make_samples, tiny_config
from trixmed.models import build_collator, build_model, load_model, save_model
from trixmed.models.checkpoint import load_tokenizer
from trixmed.testing import save_tiny_llama


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"),
                           ["Instruction: predict the medications", "Input: visit diag proc med common"])


def _cfg(llama_dir, *extra):
    return tiny_config("model.backbone=hf", f"model.hf.path={llama_dir}", "warmup.lm_weight=0.5",
                       "text.token_budget=200", *extra)


def _trained_warmup(cfg, vocab):
    torch.manual_seed(0)
    model = build_model(cfg, vocab, phase="warmup")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.2)
    return model.eval()


def test_hf_warmup_forward_and_loss(llama_dir, vocab):
    cfg = _cfg(llama_dir)
    model = build_model(cfg, vocab, phase="warmup")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    tok = load_tokenizer(cfg.model.hf)
    batch = build_collator(cfg, vocab, tokenizer=tok, titles=FakeTitles())(make_samples(vocab, 3))
    assert (batch["lm_labels"][batch["prompt_mask"]] == -100).all()
    out = model(batch)
    assert out.logits.shape == (3, len(vocab.med)) and out.pooled.shape == (3, 32)
    loss, parts = model.loss(batch, out, cfg.warmup)
    assert loss.item() == pytest.approx(0.5 * parts["lm"] + parts["bce"], rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)


def test_hf_pooling_ignores_the_output_text(llama_dir, vocab):
    cfg = _cfg(llama_dir)
    model = _trained_warmup(cfg, vocab)
    tok = load_tokenizer(cfg.model.hf)
    samples = make_samples(vocab, 3, seed=2)
    with_out = build_collator(cfg, vocab, tokenizer=tok, titles=FakeTitles())(samples)
    without = build_collator(cfg, vocab, tokenizer=tok, titles=FakeTitles(), with_output=False)(samples)
    assert "lm_labels" not in without
    torch.testing.assert_close(model(with_out).logits, model(without).logits, atol=1e-5, rtol=1e-5)


# plain peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` alias (not our code)
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_hf_adapter_round_trip_through_plain_peft(llama_dir, vocab, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = _cfg(llama_dir)
    model = _trained_warmup(cfg, vocab)
    save_model(model, tmp_path / "warm")
    tok = load_tokenizer(cfg.model.hf)
    batch = build_collator(cfg, vocab, tokenizer=tok, titles=FakeTitles())(make_samples(vocab, 2))
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir, local_files_only=True),
                                      tmp_path / "warm" / "adapter").eval()
    with torch.no_grad():
        ours = model.backbone.peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        theirs = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(theirs, ours)
        again = load_model(tmp_path / "warm", cfg, vocab).eval()
        torch.testing.assert_close(again(batch).logits, model(batch).logits)


def test_hf_experts_start_from_the_warmup_adapter(llama_dir, vocab, tmp_path):
    cfg = _cfg(llama_dir, "model.moe.renormalize=true")
    warm = _trained_warmup(cfg, vocab)
    exp = build_model(cfg, vocab, phase="experts", num_clusters=3).eval()
    exp.init_experts_from_warmup(warm.trainable_state_dict())
    assert exp.moe_layers and not any("lora_" in n for n, _ in exp.named_parameters())
    tok = load_tokenizer(cfg.model.hf)
    batch = build_collator(cfg, vocab, tokenizer=tok, titles=FakeTitles(), with_output=False)(make_samples(vocab, 4), [0, 1, 2, 0])
    with torch.no_grad():
        torch.testing.assert_close(exp(batch).logits, warm(batch).logits, atol=1e-5, rtol=1e-5)
    out = exp(batch)
    exp.loss(batch, out, cfg.experts)[0].backward()
    assert exp.router.W_e.grad is not None
    save_model(exp, tmp_path / "experts")   # experts are not peft adapters: safetensors only, no base weights
    assert not (tmp_path / "experts" / "adapter").exists()
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "experts", cfg, vocab).eval()(batch).logits, exp(batch).logits)


def test_hf_experts_with_gradient_checkpointing_and_bf16_base(llama_dir, vocab):
    cfg = _cfg(llama_dir, "model.hf.gradient_checkpointing=true", "model.hf.torch_dtype=bfloat16")
    exp = build_model(cfg, vocab, phase="experts", num_clusters=3).train()
    tok = load_tokenizer(cfg.model.hf)
    batch = build_collator(cfg, vocab, tokenizer=tok, titles=FakeTitles(), with_output=False)(make_samples(vocab, 2), [0, 2])
    out = exp(batch)
    exp.loss(batch, out, cfg.experts)[0].backward()   # checkpointed blocks re-run the MoE layers in backward
    grads = [layer.experts_A.grad for layer in exp.moe_layers]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
