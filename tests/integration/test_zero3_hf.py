"""ZeRO-3 over 2 Ray workers with the tiny `hf` backbone: partitioned training, then the adapters
gathered on rank 0, exported and reloaded (trixmed and plain transformers + peft)."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.tinydata import TINY_OVERRIDES, make_tiny_dataset
from trixmed.config import load_config
from trixmed.pipeline.stages import run_stage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Based on the patient's historical medical records, predict the medications",
                             "Visit diagnoses procedures medications unknown code D01 P02 M03"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 bos_token_id=0, eos_token_id=1)).save_pretrained(path)
    return path


def test_zero3_hf_warmup_exports_reloadable_adapters(ray_session, llama_dir, tmp_path):
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from trixmed.data.dataset import Dataset
    from trixmed.models import load_model

    make_tiny_dataset(tmp_path, patients=30)
    cfg = load_config(None, [
        *TINY_OVERRIDES, f"run_dir={tmp_path}", "model.backbone=hf", f"model.hf.path={llama_dir}",
        "model.hf.max_length=256", "text.token_budget=200", "warmup.epochs=2", "warmup.lr=0.005",
        "warmup.lm_weight=0.5", "distributed.zero_stage=3", "distributed.stage3_param_persistence_threshold=0",
    ])
    run_stage(cfg, "warmup", log=lambda _: None)
    history = json.loads((tmp_path / "warmup" / "history.json").read_text())
    assert history["zero_stage"] == 3 and history["world_size"] == 2
    model_dir = tmp_path / "warmup" / "model"
    saved = load_file(str(model_dir / "model.safetensors"))
    lora_b = [k for k in saved if "lora_B" in k]
    # gathered full tensors, not ZeRO-3 placeholders, and trained (LoRA B starts at zero)
    assert lora_b and all(saved[k].size > 0 for k in saved)
    assert any(abs(saved[k]).max() > 0 for k in lora_b)

    ds = Dataset(tmp_path / "dataset")
    model = load_model(model_dir, cfg, ds.vocab)
    reloaded = {k: v.detach().numpy() for k, v in model.state_dict().items() if k in saved}
    for k in lora_b:
        assert (reloaded[k] == saved[k]).all()
    # the exported peft adapter loads into plain transformers + peft
    base = AutoModelForCausalLM.from_pretrained(llama_dir, local_files_only=True)
    peft_model = PeftModel.from_pretrained(base, model_dir / "adapter")
    peft_b = {k: v for k, v in peft_model.state_dict().items() if "lora_B" in k}
    assert peft_b and any(v.abs().max() > 0 for v in peft_b.values())
