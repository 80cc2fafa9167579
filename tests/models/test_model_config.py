import pytest

from trixmed.config import load_config
from trixmed.errors import TrixmedError


@pytest.mark.parametrize("override, key", [
    ("model.codes.n_heads=3", "model.codes.n_heads"),
    ("model.lora.rank=0", "model.lora.rank"),
    ("model.lora.alpha=0", "model.lora.alpha"),
    ("model.codes.dropout=1.5", "model.codes.dropout"),
    ("model.lora.targets=[]", "model.lora.targets"),
    ("model.moe.top_n=9", "model.moe.top_n"),
    ("model.moe.ep_size=3", "model.moe.ep_size"),
    ("model.hf.torch_dtype=float8", "model.hf.torch_dtype"),
])
def test_model_config_rejects_bad_values(override, key):
    with pytest.raises(TrixmedError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_model_config_defaults_are_valid():
    cfg = load_config(None)
    assert cfg.model.backbone == "codes" and cfg.model.moe.num_experts == 8 and cfg.model.moe.top_n == 2
