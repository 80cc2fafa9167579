from pathlib import Path

import pytest

from trixmed.config import Config, apply_override, load_config, to_dict
from trixmed.errors import TrixmedError


def test_defaults_validate():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.model.moe.num_experts == 8 and cfg.model.moe.top_n == 2
    assert cfg.warmup.fraction == pytest.approx(0.3)


def test_overrides_are_typed(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: out\nmodel:\n  moe:\n    top_n: 1\n")
    cfg = load_config(path, ["experts.lr=1e-3", "model.lora.targets=[q_proj]", "data.split.kind=random"])
    assert cfg.run_dir == "out"
    assert cfg.model.moe.top_n == 1
    assert cfg.experts.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string; it is coerced
    assert cfg.model.lora.targets == ["q_proj"]
    assert cfg.data.split.kind == "random"


@pytest.mark.parametrize(
    ("text", "override", "needle"),
    [
        ("model:\n  moe:\n    bogus: 1\n", None, "model.moe.bogus: unknown key"),
        ("experts:\n  epochs: three\n", None, "experts.epochs: expected int"),
        ("", "model.moe.top_n=9", "top_n"),
        ("", "model.moe.ep_size=3", "ep_size"),
        ("", "data.split.ratios=[0.5,0.5,0.5]", "ratios"),
        ("", "data.source=mimic4", "data.path"),
        ("model: [1, 2]\n", None, "model: expected a mapping"),
        ("", "distributed.zero_stage=4", "zero_stage"),
        ("distributed: {zero_stage: 3}\n", "model.moe.ep_size=2", "ZeRO-3"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path: Path, text, override, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TrixmedError) as info:
        load_config(path, [override] if override else [])
    message = str(info.value)
    assert str(path) in message and needle in message
    assert "\n" not in message


def test_missing_and_unparseable_config(tmp_path: Path):
    with pytest.raises(TrixmedError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed\n")
    with pytest.raises(TrixmedError, match="not valid YAML"):
        load_config(bad)


def test_override_syntax_errors():
    with pytest.raises(TrixmedError, match="key=value"):
        apply_override({}, "no-equals")
    with pytest.raises(TrixmedError, match="empty key"):
        apply_override({}, "a..b=1")


def test_round_trip_to_dict():
    cfg = load_config(None, ["model.backbone=codes"])
    raw = to_dict(cfg)
    assert raw["model"]["moe"]["router"] == "triage"
    again = load_config(None, [f"seed={raw['seed']}"])
    assert to_dict(again) == raw


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # the experts phase has no patient fraction and no LM/medication weights: refused, not ignored
        ("experts.fraction=0.5", "experts.fraction: unknown key"),
        ("experts.lm_weight=1.0", "experts.lm_weight: unknown key"),
        ("experts.med_weight=2.0", "experts.med_weight: unknown key"),
        # test hooks and plan-only keys left the run settings
        ("distributed.fail_at_step=3", "distributed.fail_at_step: unknown key"),
        ("distributed.gpus_per_node=8", "distributed.gpus_per_node: unknown key"),
        ("distributed.estimate_from=x.json", "distributed.estimate_from: unknown key"),
        ("plan.gpus_per_node=0", "plan.gpus_per_node: must be >= 1, got 0"),
        ("tune.trainer=torch", "tune.trainer: must be one of workers, ray_train, got 'torch'"),
    ],
)
def test_no_key_is_accepted_and_ignored(override, message):
    with pytest.raises(TrixmedError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_phase_sections_hold_their_own_keys():
    cfg = load_config(None, ["warmup.lm_weight=0.5", "test_hooks.fail_at_step=4", "plan.arch_config=a.json"])
    assert cfg.warmup.lm_weight == 0.5 and not hasattr(cfg.experts, "lm_weight")
    assert cfg.test_hooks.fail_at_step == 4 and cfg.plan.arch_config == "a.json"
