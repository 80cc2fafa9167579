"""Content-hash stage skipping, atomic stage outputs and checks before work, on the stratify stage
with its body replaced by a cheap stand-in (no Ray: the real body runs in tests/integration)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from trixmed.cluster.features import feature_shards, read_feature_shard, shard_name, write_feature_shard
from trixmed.config import load_config
from trixmed.data.dataset import Dataset
from trixmed.errors import TrixmedError
from trixmed.io import write_json
from trixmed.pipeline import stages as stages_mod
from trixmed.pipeline.stages import run_stage
from trixmed.run_dir import RunDir, hash_paths
from trixmed.testing import make_tiny_dataset


def write_features(root, seed=0, n=60):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, 0.3, size=(n // 3, 8)) for c in (-3, 0, 3)]).astype(np.float32)
    split = ["train", "val", "test"] * (n // 3)
    (root / "features").mkdir(parents=True, exist_ok=True)
    write_feature_shard(root / "features" / shard_name(0), [f"p{i}:0" for i in range(n)], [f"p{i}" for i in range(n)], split, x)


@pytest.fixture
def stand_in(monkeypatch):
    """The stratify stage with a cheap body: counts the feature rows it reads."""
    calls = []

    def body(cfg, rd, out, ihash, ctx):
        rows = sum(len(read_feature_shard(p)[1]) for p in feature_shards(rd.features))
        write_json(out / "rows.json", {"rows": rows})
        calls.append(rows)
        return {"num_clusters": cfg.stratify.num_clusters}

    monkeypatch.setitem(stages_mod.STAGES, "stratify", dataclasses.replace(stages_mod.STAGES["stratify"], run=body))
    return calls


def cfg_for(root, *extra):
    return load_config(None, [f"run_dir={root}", "stratify.pca_components=4", "stratify.num_clusters=3", *extra])


def test_stage_runs_once_then_skips_until_inputs_or_config_change(tmp_path, stand_in):
    make_tiny_dataset(tmp_path)
    write_features(tmp_path)
    assert run_stage(cfg_for(tmp_path), "stratify").status == "ran"
    assert stand_in == [60] and (tmp_path / "clusters" / "rows.json").is_file()
    assert run_stage(cfg_for(tmp_path), "stratify").status == "skipped"
    # an unrelated config section, or how many workers compute it, does not invalidate the stage
    assert run_stage(cfg_for(tmp_path, "experts.lr=0.5"), "stratify").status == "skipped"
    assert run_stage(cfg_for(tmp_path, "stratify.num_workers=1"), "stratify").status == "skipped"
    assert run_stage(cfg_for(tmp_path, "stratify.num_clusters=2"), "stratify").status == "ran"
    assert run_stage(cfg_for(tmp_path, "stratify.num_clusters=2"), "stratify").status == "skipped"
    write_features(tmp_path, seed=1)   # new content → re-run
    assert run_stage(cfg_for(tmp_path, "stratify.num_clusters=2"), "stratify").status == "ran"
    assert run_stage(cfg_for(tmp_path, "stratify.num_clusters=2"), "stratify", force=True).status == "ran"
    state = RunDir(tmp_path).state()["stages"]["stratify"]
    assert state["input_hash"] == hash_paths([tmp_path / "dataset", tmp_path / "features"])
    assert state["summary"]["num_clusters"] == 2 and len(stand_in) == 4


def test_too_many_clusters_for_the_dataset_stop_before_the_warmup(tmp_path, capsys):
    from trixmed.cli import main

    make_tiny_dataset(tmp_path, patients=6)   # 4 training patients, a handful of visits
    train_visits = len(Dataset(tmp_path / "dataset").samples("train"))
    code = main(["warmup", f"run_dir={tmp_path}", f"stratify.num_clusters={train_visits + 1}"])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"trixmed warmup: error: stratify.num_clusters: {train_visits + 1} clusters "
                                 f"need at least as many training samples; {tmp_path}/dataset has {train_visits}\n")
    assert not (tmp_path / "warmup").exists() and not (tmp_path / ".ray").exists()


def test_moe_settings_do_not_invalidate_the_warmup_or_features():
    from trixmed.pipeline.stages import STAGES, config_hash

    base, sweep = load_config(None), load_config(None, ["model.moe.top_n=1", "model.moe.num_experts=4", "stratify.num_clusters=4"])
    for name in ("warmup", "extract"):
        assert config_hash(base, STAGES[name].config_keys) == config_hash(sweep, STAGES[name].config_keys)
    assert config_hash(base, STAGES["experts"].config_keys) != config_hash(sweep, STAGES["experts"].config_keys)
    lora = load_config(None, ["model.lora.rank=4"])
    assert config_hash(base, STAGES["warmup"].config_keys) != config_hash(lora, STAGES["warmup"].config_keys)


def test_interrupted_stage_leaves_no_output_and_reruns(tmp_path, monkeypatch, stand_in):
    make_tiny_dataset(tmp_path)
    write_features(tmp_path)
    real = stages_mod.STAGES["stratify"]

    def interrupted(cfg, rd, out, ihash, console):
        (out / "assignments.parquet").write_text("half written")
        raise KeyboardInterrupt

    monkeypatch.setitem(stages_mod.STAGES, "stratify", dataclasses.replace(real, run=interrupted))
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg_for(tmp_path), "stratify")
    assert not (tmp_path / "clusters").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "features"]   # no temp dir, no run.json entry
    monkeypatch.setitem(stages_mod.STAGES, "stratify", real)
    assert run_stage(cfg_for(tmp_path), "stratify").status == "ran"


def test_missing_input_names_the_directory(tmp_path):
    make_tiny_dataset(tmp_path)
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


def test_drug_groups_change_the_warmup_and_every_stage_after_it():
    from trixmed.pipeline.stages import STAGES, config_hash

    plain, grouped = load_config(None, []), load_config(None, ["model.drug_groups.by=atc"])
    for name in ("warmup", "extract", "experts", "evaluate"):
        assert config_hash(plain, STAGES[name].keys(plain)) != config_hash(grouped, STAGES[name].keys(grouped)), name
    assert config_hash(plain, STAGES["prepare"].keys(plain)) == config_hash(grouped, STAGES["prepare"].keys(grouped))
