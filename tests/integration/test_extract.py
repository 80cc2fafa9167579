"""`extract` on Ray Data: an actor pool holding the warm-up model writes Parquet feature shards;
the output does not depend on the number of actors, and an interrupted extraction resumes."""

from __future__ import annotations

import numpy as np
import pytest

from trixmed.cluster.features import feature_shards, read_feature_shard, shard_name, write_feature_shard
from trixmed.config import load_config
from trixmed.data.dataset import Dataset
from trixmed.pipeline.extract import partial_key, shard_ranges
from trixmed.pipeline.stages import STAGES, config_hash, input_hash, run_stage
from trixmed.run_dir import RunDir
from trixmed.testing import TINY_OVERRIDES, make_tiny_dataset, save_tiny_llama, save_untrained_warmup
from trixmed.train.inference import collator_for, infer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _run_dir(root, *extra):
    """A prepared tiny dataset and an (untrained, seeded) warm-up model: all extraction needs."""
    make_tiny_dataset(root, patients=45)
    cfg = load_config(None, [*TINY_OVERRIDES, f"run_dir={root}", "extract.shard_size=16", "extract.batch_size=8", *extra])
    save_untrained_warmup(cfg)
    return cfg, Dataset(RunDir(root).dataset)


def _features(root) -> tuple[list[str], np.ndarray]:
    keys, xs = [], []
    for path in feature_shards(RunDir(root).features):
        cols, x = read_feature_shard(path)
        keys += cols["visit_key"]
        xs.append(x)
    return keys, np.concatenate(xs)


def test_output_is_the_same_for_one_and_two_actors_and_equals_a_plain_loop(ray_session, tmp_path):
    out = {}
    for actors in (1, 2):
        cfg, ds = _run_dir(tmp_path / f"a{actors}", f"extract.actors={actors}")
        result = run_stage(cfg, "extract")
        assert result.summary["shards"] == -(-len(ds.samples()) // 16) and result.summary["resumed_shards"] == 0
        out[actors] = _features(tmp_path / f"a{actors}")
    (keys1, x1), (keys2, x2) = out[1], out[2]
    assert keys1 == keys2 == [s.visit_key for s in ds.samples()]
    np.testing.assert_array_equal(x1, x2)
    assert x1.dtype == np.float32 and x1.shape[1] == 32
    # the same numbers as one process running the model over every sample
    from trixmed.models import load_model

    model = load_model(RunDir(tmp_path / "a1").model("warmup"), cfg, ds.vocab)
    plain = infer(model, collator_for(cfg, ds.vocab), ds.samples(), batch_size=8)["pooled"]
    np.testing.assert_allclose(x1, plain, rtol=1e-5, atol=1e-6)


def test_an_interrupted_extraction_resumes_from_its_finished_shards(ray_session, tmp_path):
    cfg, ds = _run_dir(tmp_path)
    rd = RunDir(tmp_path)
    samples = ds.samples()
    shards = shard_ranges(len(samples), 16)
    # the shards an interrupted run left behind, marked so that reuse (not recomputation) shows
    partial = rd.partial("extract-" + partial_key(cfg, input_hash(cfg, rd, STAGES["extract"]),
                                                  config_hash(cfg, STAGES["extract"].keys(cfg))))
    partial.mkdir(parents=True)
    for i in (0, 2):
        _, a, b = shards[i]
        write_feature_shard(partial / shard_name(i), [s.visit_key for s in samples[a:b]],
                            [s.patient_id for s in samples[a:b]], [s.split for s in samples[a:b]],
                            np.full((b - a, 32), 7.0, np.float32))
    result = run_stage(cfg, "extract")
    assert result.summary["resumed_shards"] == 2
    keys, x = _features(tmp_path)
    assert keys == [s.visit_key for s in samples]
    marked = np.zeros(len(samples), bool)
    for i in (0, 2):
        marked[shards[i][1]:shards[i][2]] = True
    assert (x[marked] == 7.0).all() and not (x[~marked] == 7.0).any()
    assert not partial.exists()   # moved into features/, nothing left behind


def test_a_resumed_extraction_with_another_shard_size_starts_afresh(ray_session, tmp_path):
    """The shard size is not hashed (it does not change the features), but a shard index means
    other samples under another size: finished shards are reused only under the same size."""
    cfg, ds = _run_dir(tmp_path)
    rd = RunDir(tmp_path)
    ihash, chash = input_hash(cfg, rd, STAGES["extract"]), config_hash(cfg, STAGES["extract"].keys(cfg))
    other = load_config(None, [*TINY_OVERRIDES, f"run_dir={tmp_path}", "extract.shard_size=10", "extract.batch_size=8"])
    assert config_hash(other, STAGES["extract"].keys(other)) == chash
    assert partial_key(other, ihash, chash) != partial_key(cfg, ihash, chash)
    partial = rd.partial("extract-" + partial_key(cfg, ihash, chash))
    partial.mkdir(parents=True)
    samples = ds.samples()
    write_feature_shard(partial / shard_name(0), [s.visit_key for s in samples[:16]], [s.patient_id for s in samples[:16]],
                        [s.split for s in samples[:16]], np.full((16, 32), 7.0, np.float32))
    result = run_stage(other, "extract")
    assert result.summary["resumed_shards"] == 0 and result.summary["shards"] == len(shard_ranges(len(samples), 10))
    keys, x = _features(tmp_path)
    assert keys == [s.visit_key for s in samples] and not (x == 7.0).any()


def test_hf_backbone_extracts_with_the_tiny_llama(ray_session, tmp_path):
    llama = save_tiny_llama(tmp_path / "llama", ["Based on the patient's historical medical records",
                                                 "Visit diagnoses procedures medications D01 P02 M03"],
                            vocab_size=300, max_positions=512)
    cfg, ds = _run_dir(tmp_path / "run", "model.backbone=hf", f"model.hf.path={llama}", "model.hf.max_length=256",
                       "text.token_budget=200")
    run_stage(cfg, "extract")
    keys, x = _features(tmp_path / "run")
    assert keys == [s.visit_key for s in ds.samples()] and x.shape == (len(keys), 32) and np.isfinite(x).all()
