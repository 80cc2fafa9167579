"""The pipeline stages over a run directory, and `run_pipeline` that chains them.

Each stage reads earlier stages' outputs, writes its own output directory through `atomic_dir`
(nothing half-written survives an interruption) and is recorded in run.json with the content
hash of its inputs and of the config keys it depends on. A stage whose output exists with the
same hashes is skipped, so `trixmed run` after an interruption continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trixmed.config import Config, to_dict
from trixmed.console import Console
from trixmed.errors import TrixmedError
from trixmed.io import atomic_dir, read_json, write_json
from trixmed.run_dir import MODEL_DIR, RunDir, fingerprint_paths, hash_json, hash_paths
from trixmed.train.session import Fit

# distributed settings that change what is trained (not how failures or plans are handled)
_DIST_KEYS = tuple(f"distributed.{k}" for k in ("num_workers", "use_gpu", "zero_stage", "precision"))
# what the warm-up model and its features depend on: not the MoE section, so a sweep over the
# number of clusters, experts or top-n reuses one warm-up and one feature extraction
_BACKBONE_KEYS = ("model.backbone", "model.codes", "model.hf", "model.lora", "model.pool", "model.direct",
                  "model.head", "model.drug_tower", "model.margin_weight", "model.drug_groups")
# what the clusters depend on: not the number of workers that computed them
_STRATIFY_KEYS = tuple(f"stratify.{k}" for k in ("pca_components", "num_clusters", "kmeans_iters", "kmeans_tol",
                                                  "kmeans_init", "kmeans_n_init", "profile_top"))


@dataclass(frozen=True)
class StageContext:
    """What a stage body gets besides the config and the run directory."""

    console: Console
    # what trains a phase; None: a Ray Train run of its own (`ray_fit.fit`). A Tune trial passes
    # its own, which reports each epoch to its scheduler.
    fit: Fit | None = None
    # prefix of training run names, so a sweep's training runs are recognisable on the dashboard
    run_prefix: str = ""


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]       # stages whose outputs are read (their content is hashed)
    config_keys: tuple[str, ...]  # dotted config keys the result depends on
    run: Callable[[Config, RunDir, Path, str, StageContext], dict[str, Any]]  # (cfg, run dir, staging dir, input hash, context) → summary
    reads_text: bool = False      # renders narratives (hf backbone): the `text` section matters too
    # whether `trixmed run` runs it for this config (an optional stage is off unless its config says so)
    enabled: Callable[[Config], bool] = lambda cfg: True

    def keys(self, cfg: Config) -> tuple[str, ...]:
        """The config keys of this stage for this config: `text` only where narratives are rendered."""
        return (*self.config_keys, "text") if self.reads_text and cfg.model.backbone == "hf" else self.config_keys


def config_hash(cfg: Config, keys: tuple[str, ...]) -> str:
    raw = to_dict(cfg)
    picked = {}
    for key in keys:
        node = raw
        for part in key.split("."):
            node = node[part]
        picked[key] = node
    return hash_json(picked)


def input_hash(cfg: Config, rd: RunDir, stage: Stage) -> str:
    if stage.name == "prepare":
        src = [Path(cfg.data.path)] if cfg.data.path else []
        return fingerprint_paths([p for p in src if p.exists()])
    missing = [rd.stage_dir(name) for name in stage.inputs if not rd.stage_dir(name).is_dir()]
    if missing:
        raise TrixmedError(missing[0], f"missing; stage {stage.name} needs it (run the earlier stages or `trixmed run`)")
    return hash_paths([rd.stage_dir(name) for name in stage.inputs])


# --------------------------------------------------------------------------------------------
# Stage bodies


def _prepare(cfg: Config, rd: RunDir, out: Path, _: str, ctx: StageContext) -> dict[str, Any]:
    from trixmed.data.dataset import Dataset
    from trixmed.data.prepare import prepare

    # prepare writes <run_dir>/dataset atomically itself; `out` stays unused
    ds = Dataset(prepare(cfg))
    return {k: ds.card.get(k) for k in ("patients", "visits") if k in ds.card}


def _train(phase: str) -> Callable[[Config, RunDir, Path, str, StageContext], dict[str, Any]]:
    def body(cfg: Config, rd: RunDir, out: Path, ihash: str, ctx: StageContext) -> dict[str, Any]:
        from trixmed.train.ray_fit import fit

        if phase == "warmup" and cfg.model.head == "drug_tower":
            from trixmed.data.dataset import Dataset
            from trixmed.data.drugs import molecule_counts, molecules_line

            ctx.console.line(f"[warmup] drug tower: {molecules_line(molecule_counts(Dataset(rd.dataset).drugs))}")
        name = f"{ctx.run_prefix}{phase}-{hash_json([ihash, config_hash(cfg, STAGES[phase].keys(cfg))])[:12]}"
        history = (ctx.fit or fit)(cfg, phase, out, run_name=name, console=ctx.console)
        if phase == "warmup" and cfg.model.drug_groups.by != "none":
            from trixmed.cluster.drug_groups import groups_line
            from trixmed.models.model import saved_drug_groups

            groups = np.array(saved_drug_groups(out / MODEL_DIR))
            ctx.console.line(f"[warmup] drug groups: {groups_line(cfg.model.drug_groups.by, groups)}")
        epochs = history["epochs"]
        return {
            "best_val_jaccard": history["best_val_jaccard"],
            "best_epoch": history["best_epoch"],
            "epochs": len(epochs),
            "first_loss": epochs[0]["train_loss"],
            "last_loss": epochs[-1]["train_loss"],
            "samples_per_s": float(np.mean([e["samples_per_s"] for e in epochs])),
        }

    return body


def _extract(cfg: Config, rd: RunDir, out: Path, ihash: str, ctx: StageContext) -> dict[str, Any]:
    from trixmed.pipeline.extract import extract_features, partial_key

    key = partial_key(cfg, ihash, config_hash(cfg, STAGES["extract"].keys(cfg)))
    return extract_features(cfg, rd, out, rd.partial(f"extract-{key}"), ctx.console)


def _stratify(cfg: Config, rd: RunDir, out: Path, _: str, ctx: StageContext) -> dict[str, Any]:
    import pandas as pd

    from trixmed.cluster import cluster_profiles, fit_clusters_distributed, format_profiles
    from trixmed.cluster.features import feature_shards, iter_feature_shards
    from trixmed.data.dataset import Dataset
    from trixmed.train.ray_session import ensure_ray

    s = cfg.stratify
    ensure_ray(cfg)
    transform = fit_clusters_distributed(feature_shards(rd.features), s, cfg.seed,
                                         num_workers=s.num_workers, cpus_per_worker=s.cpus_per_worker)
    transform.save(out)
    # every visit of every split, routed shard by shard through the saved transform
    frames = []
    for _, keys, x in iter_feature_shards(rd.features):
        labels, dist = transform.assign(x)
        frames.append(pd.DataFrame({**keys, "cluster": labels, "distance": dist}))
    assignments = pd.concat(frames, ignore_index=True)
    assignments.to_parquet(out / rd.assignments.name, index=False)
    profiles = cluster_profiles(Dataset(rd.dataset), dict(zip(assignments["visit_key"], assignments["cluster"])),
                                transform.num_clusters, top=s.profile_top)
    write_json(out / rd.cluster_profile.name, profiles)
    ctx.console.line(format_profiles(profiles))
    sizes = [c["size"] for c in profiles["clusters"]]
    return {"num_clusters": transform.num_clusters, "train_cluster_sizes": sizes, "inertia": round(transform.inertia, 4)}


def _evaluate(cfg: Config, rd: RunDir, out: Path, _: str, ctx: StageContext) -> dict[str, Any]:
    from trixmed.data.dataset import Dataset
    from trixmed.eval.selection import SPLITS, select_and_score
    from trixmed.pipeline.predict import model_predictions

    ds = Dataset(rd.dataset)
    preds = {split: model_predictions(cfg, rd, ds, split) for split in SPLITS}
    # the threshold and the safety weight are chosen on validation only; test is scored once
    result = select_and_score(ds, cfg.eval, {split: (p.samples, p.probs) for split, p in preds.items()}, out,
                              {split: rd.predictions(split).name for split in SPLITS}, rd.metrics.name, rd.metrics_table.name,
                              best_epoch=read_json(rd.history("experts"))["best_epoch"])
    return {"threshold": result["threshold"], "ddi_alpha": result["ddi_alpha"],
            **{k: v["mean"] for k, v in result["metrics"].items()}}


def _edit(cfg: Config, rd: RunDir, out: Path, _: str, ctx: StageContext) -> dict[str, Any]:
    from trixmed.pipeline.edit import run_edit

    return run_edit(cfg, rd, out, ctx.console)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("prepare", (), ("data",), _prepare),
        Stage("warmup", ("prepare",), ("seed", *_BACKBONE_KEYS, "warmup", *_DIST_KEYS), _train("warmup"), reads_text=True),
        Stage("extract", ("prepare", "warmup"), _BACKBONE_KEYS, _extract, reads_text=True),
        Stage("stratify", ("prepare", "extract"), ("seed", *_STRATIFY_KEYS), _stratify),
        Stage("experts", ("prepare", "warmup", "stratify"), ("seed", "model", "experts", *_DIST_KEYS), _train("experts"),
              reads_text=True),
        Stage("evaluate", ("prepare", "experts", "stratify"), ("model", "eval"), _evaluate, reads_text=True),
        # FLAME's editor over the evaluated run: it starts from the sets evaluate decided (eval/ is an input)
        Stage("edit", ("prepare", "experts", "stratify", "evaluate"), ("seed", "model", "eval", "editor"), _edit,
              reads_text=True, enabled=lambda cfg: cfg.editor.enabled),
    )
}


@dataclass
class StageResult:
    name: str
    status: str          # "ran" | "skipped"
    wall_s: float
    summary: dict[str, Any]


def check_dataset_fits(cfg: Config, rd: RunDir) -> None:
    """What the prepared dataset alone can refute, checked before any stage after `prepare` works:
    K-means needs at least as many training samples as clusters."""
    from trixmed.data.dataset import Dataset

    if not rd.dataset.is_dir():
        return
    train = int((Dataset(rd.dataset).visits["split"] == "train").sum())   # one sample per visit
    if train < cfg.stratify.num_clusters:
        raise TrixmedError("stratify.num_clusters", f"{cfg.stratify.num_clusters} clusters need at least as many "
                           f"training samples; {rd.dataset} has {train}")


def run_stage(cfg: Config, name: str, *, force: bool = False, console: Console | None = None,
              fit: Fit | None = None, run_prefix: str = "") -> StageResult:
    """Run one stage over `cfg.run_dir` unless it is already complete for these inputs and config."""
    console = console or Console()
    ctx = StageContext(console, fit, run_prefix)
    stage = STAGES[name]
    if not stage.enabled(cfg):
        raise TrixmedError("editor.enabled", f"is false: stage {name} has nothing to do (set editor.enabled=true)")
    rd = RunDir(cfg.run_dir)
    output = rd.stage_dir(name)
    ihash = input_hash(cfg, rd, stage)
    if name != "prepare":
        check_dataset_fits(cfg, rd)
    chash = config_hash(cfg, stage.keys(cfg))
    if not force and rd.is_complete(name, ihash, chash):
        entry = rd.state()["stages"][name]
        console.line(f"[{name}] up to date, skipped ({output})")
        return StageResult(name, "skipped", 0.0, entry.get("summary", {}))
    console.line(f"[{name}] running → {output}")
    t0 = time.perf_counter()
    if name == "prepare":
        summary = stage.run(cfg, rd, output, ihash, ctx)
    else:
        with atomic_dir(output) as tmp:
            summary = stage.run(cfg, rd, tmp, ihash, ctx)
    wall = time.perf_counter() - t0
    rd.mark_complete(name, ihash, chash, wall, summary=summary)
    console.line(f"[{name}] done in {wall:.1f} s")
    return StageResult(name, "ran", wall, summary)


def run_pipeline(cfg: Config, *, stages: list[str] | None = None, force: bool = False,
                 console: Console | None = None) -> list[StageResult]:
    """Run `stages` (default: every stage the config enables) in order."""
    console = console or Console()
    names = stages or [name for name, stage in STAGES.items() if stage.enabled(cfg)]
    return [run_stage(cfg, name, force=force, console=console) for name in names]
