"""The real stack end to end: Ray Train, DeepSpeed over gloo, 2 CPU workers, a tiny dataset.

One uninterrupted run of the whole pipeline (module fixture) is the reference for the
fault-tolerance, 1-vs-2-worker and resume tests.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from trixmed.testing import TINY_OVERRIDES, make_tiny_dataset
from trixmed.config import load_config
from trixmed.pipeline import stages as stages_mod
from trixmed.pipeline.stages import run_pipeline, run_stage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TRAIN_STAGES = ["warmup", "extract", "stratify", "experts", "evaluate"]


def tiny_cfg(root: Path, *extra: str):
    return load_config(None, [*TINY_OVERRIDES, f"run_dir={root}", *extra])


def weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


def assert_same_warmup(got: Path, ref: Path, atol: float) -> None:
    """The warm-up of run directory `got` trained as `ref`'s: step losses, validation, weights."""
    a_history, b_history = (json.loads((root / "warmup" / "history.json").read_text()) for root in (got, ref))
    for a, b in zip(a_history["epochs"], b_history["epochs"], strict=True):
        np.testing.assert_allclose(a["step_losses"], b["step_losses"], atol=atol)
        assert abs(a["val_jaccard"] - b["val_jaccard"]) <= atol
    w_got, w_ref = weights(got / "warmup" / "model"), weights(ref / "warmup" / "model")
    for k in w_ref:
        np.testing.assert_allclose(w_got[k], w_ref[k], atol=atol)


def actor_classes(ray, state: str | None = None) -> dict[str, str]:
    """Every actor this Ray has run (in `state` if given, e.g. "ALIVE"), by id: its class name
    (GCS's actor table; the shared session has no dashboard for the public state API)."""
    return {k: a["ActorClassName"] for k, a in ray._private.state.actors(actor_state_name=state).items()}


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory):
    """The uninterrupted run: its directory, stage results and the classes of the actors it started."""
    root = tmp_path_factory.mktemp("reference")
    make_tiny_dataset(root)
    before = actor_classes(ray_session)
    results = run_pipeline(tiny_cfg(root), stages=TRAIN_STAGES)
    started = [c for k, c in actor_classes(ray_session).items() if k not in before]
    return root, results, started


def test_pipeline_zero2_trains_checkpoints_and_scores(reference):
    root, results, started = reference
    assert [r.status for r in results] == ["ran"] * 5
    # each phase's Ray Train run: a controller and two workers, without the dataset manager and the
    # placement-group cleaner that a command's runs do not use (ray_fit._trainer_class)
    assert started.count("TrainController") == 2 and started.count("RayTrainWorker") == 4, started
    assert "DatasetManager" not in started and "PlacementGroupCleaner" not in started, started
    for phase in ("warmup", "experts"):
        history = json.loads((root / phase / "history.json").read_text())
        assert history["world_size"] == 2 and history["zero_stage"] == 2
        epochs = history["epochs"]
        assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
        assert (root / phase / "model" / "model.safetensors").is_file()
        # a Ray Train checkpoint per epoch (the last one kept) holding DeepSpeed state + best model
        ckpts = sorted(p for p in (root / ".ray").glob(f"{phase}-*/checkpoint_*") if p.is_dir())
        assert ckpts, f"no Ray checkpoint for {phase}"
        assert (ckpts[-1] / "engine").is_dir() and (ckpts[-1] / "best_model" / "model.safetensors").is_file()
        assert list((root / "tensorboard" / phase).glob("events.out.tfevents.*"))
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert 0.05 <= metrics["threshold"] <= 0.95 and metrics["threshold_chosen_on"] == "val"
    assert metrics["split"] == "test" and metrics["bootstrap"]["rounds"] == 3
    assert 0 < metrics["metrics"]["jaccard"]["mean"] <= 1
    assert (root / "eval" / "predictions_test.jsonl").is_file()


def test_ray_trains_autoscaling_coordinator_is_started_by_the_run_and_only_once(ray_session):
    """`ray_fit.fit` starts the coordinator that Ray Train's controller waits for, so that the two
    start side by side; a second call finds it running (Ray Train and Ray Data share one)."""
    from trixmed.train.ray_fit import start_autoscaling_coordinator

    start_autoscaling_coordinator()
    start_autoscaling_coordinator()
    actor = ray_session.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    ray_session.get(actor.__ray_ready__.remote(), timeout=60)
    assert list(actor_classes(ray_session, "ALIVE").values()).count("_AutoscalingCoordinatorActor") == 1


def test_predict_routes_a_new_patient(reference, tmp_path, capsys):
    from trixmed.cli import main

    root, _, _ = reference
    patient = tmp_path / "patient.json"
    patient.write_text(json.dumps({"visits": [
        {"diag": ["D01", "D03"], "proc": ["P00"], "med": ["M01", "M03", "M09"]},
        {"diag": ["D02"], "proc": []},
    ]}))
    assert main(["predict", "--input", str(patient), "--top", "0", *TINY_OVERRIDES, f"run_dir={root}"]) == 0
    out = json.loads(capsys.readouterr().out)
    probs = [m["probability"] for m in out["medications"]]
    assert len(probs) == 10 and probs == sorted(probs, reverse=True)
    assert 0 <= out["cluster"] < 3
    assert len(out["expert_weights"]) == 4 and sum(out["expert_weights"]) == pytest.approx(1, abs=1e-4)
    top = [e["weight"] for e in out["experts"]]
    assert len(top) == 2 and top == sorted(out["expert_weights"], reverse=True)[:2]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"visits": [{"diag": ["NOPE"]}]}))
    assert main(["predict", "--input", str(bad), *TINY_OVERRIDES, f"run_dir={root}"]) == 2
    assert "visits[0].diag[0]: code 'NOPE' is not in the model's diag vocabulary" in capsys.readouterr().err


def test_evaluate_command_scores_the_run_and_its_predictions_file(reference, capsys):
    from trixmed.cli import main

    root, _, _ = reference
    stored = json.loads((root / "eval" / "metrics.json").read_text())
    assert main(["evaluate", *TINY_OVERRIDES, f"run_dir={root}"]) == 0   # up to date: the stored result
    assert "Jaccard" in capsys.readouterr().out
    # the written predictions file scores to the same point estimate through the public harness
    out = root / "rescored.json"
    assert main(["evaluate", "--dataset", str(root / "dataset"), "--predictions", str(root / "eval" / "predictions_test.jsonl"),
                 "--out", str(out), *TINY_OVERRIDES]) == 0
    rescored = json.loads(out.read_text())
    assert rescored["metrics"]["jaccard"]["point"] == pytest.approx(stored["metrics"]["jaccard"]["point"], abs=1e-9)


def test_killed_worker_restores_and_matches_uninterrupted_run(reference, tmp_path):
    ref_root, _, _ = reference
    shutil.copytree(ref_root / "dataset", tmp_path / "dataset")
    ref = json.loads((ref_root / "warmup" / "history.json").read_text())
    steps_per_epoch = len(ref["epochs"][0]["step_losses"])
    # the last rank dies mid-epoch 2, after epoch 1's checkpoint
    cfg = tiny_cfg(tmp_path, f"test_hooks.fail_at_step={steps_per_epoch + 2}")
    run_stage(cfg, "warmup")
    assert (tmp_path / ".ray" / "fail_hook_fired").is_file()
    assert_same_warmup(tmp_path, ref_root, atol=1e-4)


def test_one_worker_follows_the_two_worker_loss_curve(reference, tmp_path):
    ref_root, _, _ = reference
    shutil.copytree(ref_root / "dataset", tmp_path / "dataset")
    run_stage(tiny_cfg(tmp_path, "distributed.num_workers=1"), "warmup")
    one = json.loads((tmp_path / "warmup" / "history.json").read_text())
    two = json.loads((ref_root / "warmup" / "history.json").read_text())
    assert one["world_size"] == 1 and one["grad_accumulation"] == 2 and two["grad_accumulation"] == 1
    np.testing.assert_allclose(
        [l for e in one["epochs"] for l in e["step_losses"]],
        [l for e in two["epochs"] for l in e["step_losses"]], atol=1e-4)


def test_zero0_averages_gradients_through_shared_memory_and_trains_as_zero2(reference, tmp_path):
    ref_root, _, _ = reference
    shutil.copytree(ref_root / "dataset", tmp_path / "dataset")
    run_stage(tiny_cfg(tmp_path, "distributed.zero_stage=0"), "warmup")
    for rank in (0, 1):
        log = (tmp_path / "logs" / f"warmup-rank{rank}.log").read_text()
        # once: Ray Train's print patch would log it a second time into the same file
        assert log.count("[warmup] gradients averaged over 2 ranks through shared memory") == 1
    # ZeRO-2 flattens, reduces and clips its partitions in its own order: the same training to
    # rounding (tests/parallel/test_shared_memory.py shows ZeRO-0's two ways bit-identical)
    assert_same_warmup(tmp_path, ref_root, atol=1e-3)


def test_run_resumes_after_an_interruption_between_stages(reference, tmp_path, monkeypatch):
    ref_root, _, _ = reference
    for d in ("dataset", "warmup", "features", "clusters"):
        shutil.copytree(ref_root / d, tmp_path / d)
    state = json.loads((ref_root / "run.json").read_text())
    state["stages"] = {k: v for k, v in state["stages"].items() if k in ("warmup", "extract", "stratify")}
    (tmp_path / "run.json").write_text(json.dumps(state))
    real = stages_mod.STAGES["experts"]

    def interrupted(cfg, rd, out, ihash, console):
        (out / "partial").write_text("x")
        raise KeyboardInterrupt

    monkeypatch.setitem(stages_mod.STAGES, "experts", dataclasses.replace(real, run=interrupted))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(tiny_cfg(tmp_path), stages=TRAIN_STAGES)
    assert not (tmp_path / "experts").exists() and not list(tmp_path.glob(".experts*"))
    monkeypatch.setitem(stages_mod.STAGES, "experts", real)
    results = run_pipeline(tiny_cfg(tmp_path), stages=TRAIN_STAGES)
    assert [r.status for r in results] == ["skipped", "skipped", "skipped", "ran", "ran"]
    ref = json.loads((ref_root / "eval" / "metrics.json").read_text())
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert got["metrics"]["jaccard"]["point"] == pytest.approx(ref["metrics"]["jaccard"]["point"], abs=1e-4)


def test_expert_parallel_experts_match_replicated_experts(reference, tmp_path):
    """ep_size=2 (each rank holds 2 of the 4 experts, all-to-all dispatch) under ZeRO-2 trains like
    ep_size=1 (every rank holds all experts)."""
    ref_root, _, _ = reference
    for d in ("dataset", "warmup", "clusters"):
        shutil.copytree(ref_root / d, tmp_path / d)
    run_stage(tiny_cfg(tmp_path, "model.moe.ep_size=2"), "experts")
    got = json.loads((tmp_path / "experts" / "history.json").read_text())
    ref = json.loads((ref_root / "experts" / "history.json").read_text())
    np.testing.assert_allclose([l for e in got["epochs"] for l in e["step_losses"]],
                               [l for e in ref["epochs"] for l in e["step_losses"]], atol=1e-4)
    w_got, w_ref = weights(tmp_path / "experts" / "model"), weights(ref_root / "experts" / "model")
    assert w_got.keys() == w_ref.keys()
    for k in w_ref:
        np.testing.assert_allclose(w_got[k], w_ref[k], atol=1e-4)


def test_a_worker_group_trains_run_after_run_like_ray_train(reference, tmp_path):
    """The long-lived worker group of a sweep (`tune.trainer: workers`) runs the same trainer as
    Ray Train: two experts runs in a row on one group each match the Ray Train reference."""
    import io

    from trixmed.console import Console
    from trixmed.train.worker_group import WorkerGroup

    ref_root, _, _ = reference
    for d in ("dataset", "warmup", "clusters"):
        shutil.copytree(ref_root / d, tmp_path / d)
    cfg = tiny_cfg(tmp_path)
    group = WorkerGroup.start(cfg.distributed, str(tmp_path / "group-logs"), slot=0)
    ref = json.loads((ref_root / "experts" / "history.json").read_text())
    w_ref = weights(ref_root / "experts" / "model")
    try:
        for run in ("a", "b"):
            reported = []
            history = group.fit(cfg, "experts", tmp_path / run, run_name="experts-test",
                                console=Console(stream=io.StringIO()), on_epoch=reported.append)
            assert history["world_size"] == 2 and len(reported) == len(history["epochs"])
            np.testing.assert_allclose([l for e in history["epochs"] for l in e["step_losses"]],
                                       [l for e in ref["epochs"] for l in e["step_losses"]], atol=1e-4)
            w_got = weights(tmp_path / run / "model")
            assert w_got.keys() == w_ref.keys()
            for k in w_ref:
                np.testing.assert_allclose(w_got[k], w_ref[k], atol=1e-4)
        assert not group.broken
    finally:
        group.close()


def test_a_stop_request_mid_epoch_checkpoints_the_step_and_resumes_it_exactly(reference, tmp_path):
    """A preempted job's stop: the run directory's stop request, seen after an optimizer step in the
    middle of an epoch and agreed by the ranks during the next step, ends the phase with a
    checkpoint of that next step; running it again trains the rest of that epoch from there and
    ends exactly where an uninterrupted run ends. Dropout is on, so the per-rank random state has
    to be restored too."""
    from trixmed.errors import TrainingStopped

    ref_root, _, _ = reference
    dropout = "model.codes.dropout=0.3"
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    for root in (straight, stopped):
        shutil.copytree(ref_root / "dataset", root / "dataset")
    run_stage(tiny_cfg(straight, dropout), "warmup")
    ref = json.loads((straight / "warmup" / "history.json").read_text())
    per_epoch = len(ref["epochs"][0]["step_losses"])
    assert per_epoch >= 3
    asked = per_epoch + 1   # the first step of epoch 2 of 2 …
    stop_at = asked + 1     # … and the step the ranks stop after: neither is an epoch's end
    with pytest.raises(TrainingStopped, match="warmup: stopped on request"):
        run_stage(tiny_cfg(stopped, dropout, f"test_hooks.stop_at_step={asked}"), "warmup")
    assert not (stopped / "warmup").exists()
    (state,) = [json.loads(p.read_text()) for p in stopped.glob(".ray/warmup-*/checkpoint_*/trainer_state.json")]
    assert state["global_step"] == stop_at and state["epoch"] == 1 and len(state["partial"]["step_losses"]) == 2
    run_stage(tiny_cfg(stopped, dropout), "warmup")
    progress = (stopped / "logs" / "warmup-progress.jsonl").read_text()
    assert f"resumed from its checkpoint at step {stop_at} (epoch 2, step 2 of {per_epoch})" in progress
    assert_same_warmup(stopped, straight, atol=1e-6)
