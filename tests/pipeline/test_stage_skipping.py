"""Content-hash stage skipping and atomic stage outputs, on the cheap stratify stage (no Ray)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from trixmed.config import load_config
from trixmed.errors import TrixmedError
from trixmed.pipeline import stages as stages_mod
from trixmed.run_dir import RunDir, hash_paths
from trixmed.pipeline.stages import run_stage


def write_features(root, seed=0, n=60):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, 0.3, size=(n // 3, 8)) for c in (-3, 0, 3)]).astype(np.float32)
    split = np.array(["train", "val", "test"] * (n // 3))
    (root / "features").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "visit_key": [f"p{i}:0" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
        "split": split, "features": list(x),
    }).to_parquet(root / "features" / "features.parquet", index=False)


def cfg_for(root, *extra):
    return load_config(None, [f"run_dir={root}", "stratify.pca_components=4", "stratify.num_clusters=3", *extra])


def test_stage_runs_once_then_skips_until_inputs_or_config_change(tmp_path):
    write_features(tmp_path)
    assert run_stage(cfg_for(tmp_path), "stratify").status == "ran"
    assign = pd.read_parquet(tmp_path / "clusters" / "assignments.parquet")
    assert len(assign) == 60 and set(assign["cluster"]) == {0, 1, 2}
    assert run_stage(cfg_for(tmp_path), "stratify").status == "skipped"
    # an unrelated config section does not invalidate the stage
    assert run_stage(cfg_for(tmp_path, "experts.lr=0.5"), "stratify").status == "skipped"
    assert run_stage(cfg_for(tmp_path, "stratify.num_clusters=2"), "stratify").status == "ran"
    assert run_stage(cfg_for(tmp_path, "stratify.num_clusters=2"), "stratify").status == "skipped"
    write_features(tmp_path, seed=1)   # new content → re-run
    assert run_stage(cfg_for(tmp_path, "stratify.num_clusters=2"), "stratify").status == "ran"
    assert run_stage(cfg_for(tmp_path, "stratify.num_clusters=2"), "stratify", force=True).status == "ran"
    state = RunDir(tmp_path).state()["stages"]["stratify"]
    assert state["input_hash"] == hash_paths([tmp_path / "features"])
    assert state["summary"]["num_clusters"] == 2


def test_moe_settings_do_not_invalidate_the_warmup_or_features():
    from trixmed.pipeline.stages import STAGES, config_hash

    base, sweep = load_config(None), load_config(None, ["model.moe.top_n=1", "model.moe.num_experts=4", "stratify.num_clusters=4"])
    for name in ("warmup", "extract"):
        assert config_hash(base, STAGES[name].config_keys) == config_hash(sweep, STAGES[name].config_keys)
    assert config_hash(base, STAGES["experts"].config_keys) != config_hash(sweep, STAGES["experts"].config_keys)
    lora = load_config(None, ["model.lora.rank=4"])
    assert config_hash(base, STAGES["warmup"].config_keys) != config_hash(lora, STAGES["warmup"].config_keys)


def test_interrupted_stage_leaves_no_output_and_reruns(tmp_path, monkeypatch):
    write_features(tmp_path)
    real = stages_mod.STAGES["stratify"]

    def interrupted(cfg, rd, out, ihash, console):
        (out / "assignments.parquet").write_text("half written")
        raise KeyboardInterrupt

    monkeypatch.setitem(stages_mod.STAGES, "stratify", dataclasses.replace(real, run=interrupted))
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg_for(tmp_path), "stratify")
    assert not (tmp_path / "clusters").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["features"]   # no temp dir, no run.json entry
    monkeypatch.setitem(stages_mod.STAGES, "stratify", real)
    assert run_stage(cfg_for(tmp_path), "stratify").status == "ran"


def test_missing_input_names_the_directory(tmp_path):
    with pytest.raises(TrixmedError, match=r"features: missing; stage stratify needs it"):
        run_stage(cfg_for(tmp_path), "stratify")


def test_hash_ignores_hidden_entries_but_not_content(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x")
    h = hash_paths([tmp_path / "d"])
    (tmp_path / "d" / ".tmp-partial").mkdir()
    (tmp_path / "d" / ".tmp-partial" / "b").write_text("y")
    assert hash_paths([tmp_path / "d"]) == h
    (tmp_path / "d" / "a.txt").write_text("z")
    assert hash_paths([tmp_path / "d"]) != h


def test_text_settings_matter_only_where_narratives_are_rendered():
    from trixmed.pipeline.stages import STAGES, config_hash

    codes, codes_text = load_config(None), load_config(None, ["text.token_budget=64"])
    hf = ["model.backbone=hf", "model.hf.path=/models/llama"]
    hf_base, hf_text = load_config(None, hf), load_config(None, [*hf, "text.token_budget=64"])
    for name in ("prepare", "warmup", "extract", "experts", "evaluate"):
        stage = STAGES[name]
        assert config_hash(codes, stage.keys(codes)) == config_hash(codes_text, stage.keys(codes_text)), name
    for name in ("warmup", "extract", "experts", "evaluate"):
        stage = STAGES[name]
        assert config_hash(hf_base, stage.keys(hf_base)) != config_hash(hf_text, stage.keys(hf_text)), name
    assert config_hash(hf_base, STAGES["prepare"].keys(hf_base)) == config_hash(hf_text, STAGES["prepare"].keys(hf_text))
