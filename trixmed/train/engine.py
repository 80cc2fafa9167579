"""The per-worker training loop: one DeepSpeed engine per Ray Train worker.

Launched by `launch.fit`, which passes `spec` (plain data). Each worker loads the dataset from
the run directory (shared filesystem), builds the model through `trixmed.models`, wraps it in
DeepSpeed (ZeRO stage, precision, accumulation, clipping and lr warm-up from the config), and per
epoch: trains on its shard of the deterministic global batches, scores validation Jaccard, keeps
the best weights, and reports metrics + a checkpoint to Ray. A restarted worker group resumes
from `ray.train.get_checkpoint()`.

`spec` keys: config (dict), phase ("warmup"|"experts"), run_dir, out_dir (the stage's staging
directory; rank 0 writes model/ and history.json there), tensorboard_dir, fail_marker.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trixmed.cluster import load_assignments
from trixmed.config import Config, PhaseConfig, from_dict
from trixmed.data.dataset import Dataset, Sample
from trixmed.train.deepspeed_config import build_deepspeed_config, grad_accumulation_steps, linear_warmup
from trixmed.train.inference import collator_for
from trixmed.train.sampling import epoch_micro_batches, patient_fraction, shard_for_eval

STATE_FILE = "trainer_state.json"
BEST_DIR = "best_model"
DS_TAG = "engine"   # DeepSpeed also writes a file named "latest" beside the tag directory


def phase_samples(cfg: Config, ds: Dataset, phase: str) -> tuple[list[Sample], list[Sample]]:
    """(train, val) samples of a phase: warm-up trains on a seeded share of the train patients."""
    train, val = ds.samples("train"), ds.samples("val")
    if phase == "warmup":
        train = patient_fraction(train, cfg.warmup.fraction, cfg.seed)
    return train, val


def phase_config(cfg: Config, phase: str) -> PhaseConfig:
    return cfg.warmup if phase == "warmup" else cfg.experts


def build_phase_model(cfg: Config, ds: Dataset, phase: str, run_dir: Path) -> torch.nn.Module:
    """The model a phase trains; the experts start from the saved warm-up model."""
    from trixmed.models import build_model, load_model

    if phase == "warmup":
        return build_model(cfg, ds.vocab, phase="warmup")
    from trixmed.cluster import ClusterTransform

    k = ClusterTransform.load(run_dir / "clusters").num_clusters
    model = build_model(cfg, ds.vocab, phase="experts", num_clusters=k)
    warm = load_model(run_dir / "warmup" / "model", cfg, ds.vocab)
    model.init_experts_from_warmup(warm.state_dict())
    return model


def to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    """Move tensors; floating inputs follow the engine's precision (labels too: the loss upcasts)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def train_worker(spec: dict[str, Any]) -> None:
    import deepspeed
    import ray.train
    import torch.distributed as dist
    from tqdm.auto import tqdm

    # The shared-memory comm op is not used over gloo; building it costs 20-30 s (STACK.md).
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None

    cfg: Config = from_dict(Config, spec["config"], "<engine>", "")
    phase: str = spec["phase"]
    pcfg = phase_config(cfg, phase)
    run_dir = Path(spec["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = cfg.distributed.use_gpu
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
    device = torch.device("cuda", ctx.get_local_rank()) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)

    torch.manual_seed(cfg.seed)   # identical initial weights on every rank
    ds = Dataset(run_dir / "dataset")
    train, val = phase_samples(cfg, ds, phase)
    clusters = load_assignments(run_dir / "clusters") if phase == "experts" else None
    collate = collator_for(cfg, ds.vocab, phase)
    model = build_phase_model(cfg, ds, phase, run_dir)

    accum = grad_accumulation_steps(pcfg, world, phase)
    ds_config = build_deepspeed_config(pcfg, cfg.distributed, world, phase)
    params = _param_groups(model, cfg, pcfg)
    optimizer = torch.optim.AdamW(params, lr=pcfg.lr, weight_decay=pcfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup(pcfg.warmup_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.distributed.precision)

    scratch = Path(tempfile.mkdtemp(prefix="trixmed-best-"))
    state = {"epoch": 0, "global_step": 0, "best_jaccard": -1.0, "best_epoch": -1, "bad_epochs": 0,
             "stopped": False, "history": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=DS_TAG)
            state = json.loads((Path(d) / STATE_FILE).read_text())
            if rank == 0 and (Path(d) / BEST_DIR).is_dir():
                shutil.copytree(Path(d) / BEST_DIR, scratch / BEST_DIR)

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(spec["tensorboard_dir"])
        if checkpoint is not None:
            print(f"[{phase}] resumed from checkpoint after epoch {state['epoch']} (step {state['global_step']})", flush=True)

    def collate_at(samples: list[Sample], idx: np.ndarray) -> dict[str, Any]:
        chosen = [samples[i] for i in idx]
        cl = [clusters[s.visit_key] for s in chosen] if clusters is not None else None
        return to_device(collate(chosen, cl), device, dtype)

    for epoch in range(state["epoch"], 0 if state["stopped"] else pcfg.epochs):
        # reseed per epoch so dropout replays identically after a restore from this epoch's start
        torch.manual_seed(cfg.seed + 1000 * epoch + rank)
        engine.train()
        steps = epoch_micro_batches(len(train), epoch=epoch, seed=cfg.seed, micro=pcfg.micro_batch_size,
                                    world=world, accum=accum, rank=rank)
        t0 = time.perf_counter()
        local_losses: list[float] = []
        bar = tqdm(steps, desc=f"{phase} epoch {epoch + 1}/{pcfg.epochs}", disable=rank != 0, mininterval=5)
        for micro_batches in bar:
            _maybe_fail(spec, cfg, state["global_step"], rank, world)
            loss_sum = 0.0
            for idx in micro_batches:
                batch = collate_at(train, idx)
                out = engine(batch)
                loss, _ = engine.module.loss(batch, out, pcfg)
                engine.backward(loss)
                engine.step()
                loss_sum += float(loss.detach())
            local_losses.append(loss_sum / accum)
            state["global_step"] += 1
            if rank == 0:
                bar.set_postfix(loss=f"{local_losses[-1]:.4f}")
        # one collective per epoch, not per step: a step's loss = mean over every micro-batch of
        # every rank = the loss of the global batch
        summed = torch.tensor(local_losses, dtype=torch.float64)
        dist.all_reduce(summed)
        step_losses = (summed / world).tolist()
        if writer is not None:
            first = state["global_step"] - len(step_losses)
            for i, value in enumerate(step_losses):
                writer.add_scalar(f"{phase}/train_loss", value, first + i + 1)
            writer.add_scalar(f"{phase}/lr", engine.get_lr()[0], state["global_step"])
        train_s = time.perf_counter() - t0

        val_jaccard = _validate(engine, val, collate_at, pcfg, ds, rank, world)
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(step_losses)),
            "step_losses": step_losses,
            "val_jaccard": val_jaccard,
            "lr": float(engine.get_lr()[0]),
            "samples_per_s": len(steps) * pcfg.effective_batch_size / train_s,
            "train_s": train_s,
        }
        # without validation visits the last epoch is kept and early stopping is off
        improved = not val or val_jaccard > state["best_jaccard"]
        if improved:
            state.update(best_jaccard=val_jaccard if val else state["best_jaccard"], best_epoch=epoch + 1, bad_epochs=0)
            _export(engine, scratch / BEST_DIR, rank)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["history"].append(record)
        state["stopped"] = stop = 0 < pcfg.early_stopping_patience <= state["bad_epochs"]
        if rank == 0:
            print(f"[{phase}] epoch {epoch + 1}: loss {record['train_loss']:.4f}  val jaccard {val_jaccard:.4f}"
                  f"  {record['samples_per_s']:.1f} samples/s" + ("  (best)" if improved else ""), flush=True)
            writer.add_scalar(f"{phase}/val_jaccard", val_jaccard, epoch + 1)
            writer.add_scalar(f"{phase}/samples_per_s", record["samples_per_s"], epoch + 1)
            writer.flush()
        _report(engine, state, record, scratch, rank)
        if stop:
            if rank == 0:
                print(f"[{phase}] early stop: no validation gain for {state['bad_epochs']} epochs", flush=True)
            break

    if rank == 0:
        out = Path(spec["out_dir"])
        shutil.copytree(scratch / BEST_DIR, out / "model", dirs_exist_ok=True)
        (out / "history.json").write_text(json.dumps({
            "phase": phase, "world_size": world, "zero_stage": cfg.distributed.zero_stage,
            "grad_accumulation": accum, "train_samples": len(train), "val_samples": len(val),
            "best_epoch": state["best_epoch"], "best_val_jaccard": state["best_jaccard"],
            "epochs": state["history"],
        }, indent=2))
        writer.close()
    shutil.rmtree(scratch, ignore_errors=True)
    dist.barrier()


def _param_groups(model: torch.nn.Module, cfg: Config, pcfg: PhaseConfig) -> Any:
    if cfg.model.moe.ep_size > 1 and getattr(model, "phase", "experts") != "warmup":
        from trixmed.parallel import optimizer_param_groups, setup_expert_parallel

        setup_expert_parallel(model, cfg.model.moe.ep_size)
        return optimizer_param_groups(model, pcfg.lr, pcfg.weight_decay)
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def _validate(engine, val: list[Sample], collate_at, pcfg: PhaseConfig, ds: Dataset, rank: int, world: int) -> float:
    """Mean validation Jaccard at `pcfg.val_threshold`, scored on all ranks' shards gathered."""
    import torch.distributed as dist

    from trixmed.eval.metrics import multilabel_metrics

    if not val:
        return float("nan")
    engine.eval()
    idx = shard_for_eval(len(val), rank, world)
    probs = []
    for start in range(0, len(idx), pcfg.micro_batch_size):
        out = engine(collate_at(val, idx[start:start + pcfg.micro_batch_size]))
        probs.append(torch.sigmoid(out.logits.float()).cpu())
    local = torch.cat(probs)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    # row j of rank r is sample j*world + r
    full = torch.stack(gathered, 1).reshape(-1, local.shape[1])[: len(val)].numpy()
    y_true = ds.multi_hot([s.target for s in val])
    y_pred = (full >= pcfg.val_threshold).astype(np.float32)
    scores = multilabel_metrics(y_true, y_pred, None, ds.ddi)
    engine.train()
    return float(np.mean(scores["jaccard"]))


def _export(engine, directory: Path, rank: int) -> None:
    """Gather the (possibly ZeRO-3 partitioned) weights and save them on rank 0."""
    import deepspeed

    from trixmed.models import save_model

    # with experts partitioned over ranks every rank takes part (save_model gathers the shards)
    every_rank = getattr(engine.module, "expert_parallel", None) is not None
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        if rank == 0 or every_rank:
            save_model(engine.module, directory)


def _report(engine, state: dict, record: dict, scratch: Path, rank: int) -> None:
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="trixmed-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=DS_TAG)
        if rank == 0:
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
            if (scratch / BEST_DIR).is_dir():
                shutil.copytree(scratch / BEST_DIR, Path(tmp) / BEST_DIR)
        metrics = {k: v for k, v in record.items() if k != "step_losses" and not (isinstance(v, float) and math.isnan(v))}
        metrics["best_val_jaccard"] = state["best_jaccard"]
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def _maybe_fail(spec: dict, cfg: Config, step: int, rank: int, world: int) -> None:
    """Test hook `distributed.fail_at_step`: the last rank dies once, as a lost worker would."""
    if cfg.distributed.fail_at_step < 0 or step != cfg.distributed.fail_at_step or rank != world - 1:
        return
    marker = Path(spec["fail_marker"])
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"rank {rank} exited at step {step}\n")
    print(f"[test hook] rank {rank} exits at step {step} (distributed.fail_at_step)", flush=True)
    os._exit(1)
