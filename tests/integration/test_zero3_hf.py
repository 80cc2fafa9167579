"""ZeRO-3 over 2 Ray workers with the tiny `hf` backbone: partitioned training, then the adapters
gathered on rank 0, exported and reloaded (trixmed and plain transformers + peft)."""

from __future__ import annotations

import json

import pytest

from trixmed.testing import TINY_OVERRIDES, make_tiny_dataset
from trixmed.config import load_config
from trixmed.pipeline.stages import run_stage
from trixmed.testing import save_tiny_llama

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"),
                           ["Based on the patient's historical medical records, predict the medications",
                            "Visit diagnoses procedures medications unknown code D01 P02 M03"], vocab_size=300, max_positions=512)


# plain peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` alias (not our code)
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
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
    run_stage(cfg, "warmup")
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
