"""One training phase on one Ray Train worker, in named steps:

    trainer = Trainer(spec)
    trainer.setup()                 # process group, data, model, DeepSpeed engine, resume
    for epoch in trainer.epochs():
        losses = trainer.train_epoch(epoch)
        val = trainer.validate()
        trainer.save_checkpoint(...)   # report metrics + checkpoint to the session
    trainer.export()                # best weights + history.json into the stage's staging directory

`Trainer.fit` runs that loop under Ray Train (`RayTrainSession`); a sweep's long-lived workers
drive the same steps one epoch at a time (`worker_group.py`, `GroupSession`): both sessions keep
the checkpoints a later run of the phase resumes from (`session.py`). DeepSpeed and
expert parallelism are the strategy's business (`deepspeed_strategy.py`), the model knows
nothing of them. `spec` is built by `ray_fit.trainer_spec`: config (the `Config`), phase, run_dir,
out_dir (staging directory), log_dir (None = print to the worker's stdout), progress (the
progress file rank 0 appends to), stop_file (`RunDir.stop_request`), fail_marker.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trixmed.config import Config, PhaseConfig
from trixmed.console import redirect_output
from trixmed.data.dataset import Dataset, Sample
from trixmed.run_dir import CHECKPOINT_STATE, HISTORY_FILE, MODEL_DIR, STOP_AT_STEP, RunDir
from trixmed.train.deepspeed_config import grad_accumulation_steps
from trixmed.train.deepspeed_strategy import DeepSpeedStrategy
from trixmed.train.inference import collator_for
from trixmed.train.progress import ProgressReporter
from trixmed.train.sampling import epoch_micro_batches, patient_fraction, shard_for_eval, steps_per_epoch
from trixmed.train.session import RayTrainSession, Session

BEST_DIR = "best_model"
RNG_FILE = "rng-rank{rank}.pt"   # a step checkpoint's per-rank random state (dropout, noise)


def phase_samples(cfg: Config, ds: Dataset, phase: str) -> tuple[list[Sample], list[Sample]]:
    """(train, val) samples of a phase: warm-up trains on a seeded share of the train patients."""
    train, val = ds.samples("train"), ds.samples("val")
    if phase == "warmup":
        train = patient_fraction(train, cfg.warmup.fraction, cfg.seed)
    return train, val


def phase_config(cfg: Config, phase: str) -> PhaseConfig:
    return cfg.warmup if phase == "warmup" else cfg.experts


def build_phase_model(cfg: Config, ds: Dataset, phase: str, rd: RunDir) -> torch.nn.Module:
    """The model a phase trains; the experts start from the saved warm-up model."""
    from trixmed.cluster import ClusterTransform
    from trixmed.models import build_model, load_model
    from trixmed.models.model import set_backbone_trainable

    drugs = ds.drugs if cfg.model.head == "drug_tower" else None
    if phase == "warmup":
        groups = None
        if cfg.model.drug_groups.by != "none":
            from trixmed.cluster.drug_groups import dataset_drug_groups

            # computed on every rank from the same files by a seeded, deterministic procedure: the
            # ranks agree, and the warm-up saves the result with the model for every later stage
            groups = dataset_drug_groups(cfg, ds)
        return build_model(cfg, ds.vocab, phase="warmup", drugs=drugs, drug_groups=groups)
    k = ClusterTransform.load(rd.clusters).num_clusters
    model = build_model(cfg, ds.vocab, phase="experts", num_clusters=k, drugs=drugs)
    warm = load_model(rd.model("warmup"), cfg, ds.vocab)
    model.init_experts_from_warmup(warm.state_dict())
    set_backbone_trainable(model, cfg.experts.train_backbone)
    return model


def train_worker(spec: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point."""
    Trainer(spec, RayTrainSession()).fit()


def epoch_metrics(record: dict[str, Any], best_jaccard: float) -> dict[str, Any]:
    """What a report says of an epoch: its record without the step losses and undefined values, and
    the best validation Jaccard so far."""
    metrics = {k: v for k, v in record.items() if k != "step_losses" and not (isinstance(v, float) and math.isnan(v))}
    return {**metrics, "best_val_jaccard": best_jaccard}


class Trainer:
    def __init__(self, spec: dict[str, Any], session: Session):
        self.spec = spec
        self.session = session
        self.cfg: Config = spec["config"]
        self.phase: str = spec["phase"]
        self.pcfg = phase_config(self.cfg, self.phase)
        self.rd = RunDir(spec["run_dir"])
        self.strategy = DeepSpeedStrategy(self.cfg.distributed, self.cfg.model.moe)
        self.scratch = Path(tempfile.mkdtemp(prefix="trixmed-best-"))
        self.writer: Any = None   # rank 0's TensorBoard writer, opened by setup
        self.epoch_tokens = 0.0   # tokens the last epoch fed the model, summed over ranks (hf backbone)
        self.rng: dict[str, Any] = {}   # this rank's random state where a step checkpoint stopped
        self._collator = ThreadPoolExecutor(1, thread_name_prefix="trixmed-collate")   # `_collated_ahead`
        # "epoch": epochs finished; "partial": the steps of the next epoch already trained, when a
        # stop request ended the run in its middle (global step losses, tokens, seconds)
        self.state: dict[str, Any] = {"epoch": 0, "global_step": 0, "best_jaccard": -1.0, "best_epoch": -1,
                                      "bad_epochs": 0, "stopped": False, "history": [], "partial": None}

    # ---------------------------------------------------------------------------------------
    # setup

    def setup(self) -> None:
        self.rank, self.world = self.session.rank, self.session.world
        if self.spec.get("log_dir"):
            redirect_output(Path(self.spec["log_dir"]) / f"{self.phase}-rank{self.rank}.log")
        self.strategy.setup_distributed(self.rank, self.world, self.session.local_rank)
        self.progress = ProgressReporter(self.spec.get("progress") if self.rank == 0 else None)

        torch.manual_seed(self.cfg.seed)   # identical initial weights on every rank
        self.ds = Dataset(self.rd.dataset)
        self.train_samples, self.val_samples = phase_samples(self.cfg, self.ds, self.phase)
        from trixmed.cluster import load_assignments

        self.clusters = load_assignments(self.rd.assignments) if self.phase == "experts" else None
        self.collate = collator_for(self.cfg, self.ds.vocab, self.phase)
        self.accum = grad_accumulation_steps(self.pcfg, self.world, self.phase)
        self.engine = self.strategy.prepare(build_phase_model(self.cfg, self.ds, self.phase, self.rd), self.pcfg, self.phase)
        self.steps_per_epoch = steps_per_epoch(len(self.train_samples), self.pcfg.effective_batch_size, self.phase)
        self._resume()
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.rd.tensorboard(self.phase)))
        total = self.steps_per_epoch * self.pcfg.epochs
        self.progress.event("phase", phase=self.phase, total_steps=total, position=self.state["global_step"])
        self.pace = Pace(self.phase, (total - self.state["global_step"]) * self.accum, self.world,
                         str(self.strategy.device.type), self.progress if self.cfg.model.backbone == "hf" else None)

    def _resume(self) -> None:
        checkpoint = self.session.checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as d:
            self.strategy.load_checkpoint(self.engine, d)
            self.state = {"partial": None, **json.loads((Path(d) / CHECKPOINT_STATE).read_text())}
            if self.state["partial"]:
                self.rng = torch.load(Path(d) / RNG_FILE.format(rank=self.rank), weights_only=True)
            if self.rank == 0 and (Path(d) / BEST_DIR).is_dir():
                shutil.copytree(Path(d) / BEST_DIR, self.scratch / BEST_DIR)
        partial = self.state["partial"]
        where = (f"at step {self.state['global_step']} (epoch {self.state['epoch'] + 1}, step "
                 f"{len(partial['step_losses'])} of {self.steps_per_epoch})" if partial else
                 f"after epoch {self.state['epoch']} (step {self.state['global_step']})")
        self.progress.event("message", text=f"[{self.phase}] resumed from its checkpoint {where}")
        # the epochs before it, reported again (without a checkpoint): whoever keeps the reports may
        # have started its record over, as Tune does for a trial restored with its sweep
        best = -1.0
        for record in self.state["history"]:
            best = max(best, record["val_jaccard"])   # a NaN (no validation visits) leaves it
            self.session.report(epoch_metrics(record, best), None)

    # ---------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> None:
        self.setup()
        for epoch in self.epochs():
            if self.run_epoch(epoch) is None:
                self.progress.event("message", text=f"[{self.phase}] stop requested: stopped at step "
                                                    f"{self.state['global_step']}, resumable from its checkpoint")
                self.close()
                return   # unexported, as below
            if self.stop_requested():
                self.progress.event("message", text=f"[{self.phase}] stop requested: ends after epoch {epoch + 1}, "
                                                    "resumable from its checkpoint")
                self.close()
                return   # unexported: the stage stays incomplete and resumes when run again
            if self.state["stopped"]:
                break
        self.export()

    def run_epoch(self, epoch: int) -> dict[str, Any] | None:
        """Train, validate, keep the best weights, checkpoint and report: one epoch, on every rank.
        None: a stop request ended it at a step, whose checkpoint has been reported instead."""
        trained = self.train_epoch(epoch)
        if trained is None:
            return None
        step_losses, train_s = trained
        t0 = time.perf_counter()
        val_jaccard = self.validate()
        record = self.end_epoch(epoch, step_losses, train_s, val_jaccard, time.perf_counter() - t0)
        self.save_checkpoint(record)
        if self.state["stopped"]:
            self.progress.event("message", text=f"[{self.phase}] early stop: no validation gain for "
                                                f"{self.state['bad_epochs']} epochs")
        return record

    def stop_requested(self, at_step: bool = False) -> bool:
        """Whether the run directory's stop request exists (`at_step`: one that asks for a stop at an
        optimizer step), agreed by every rank (one collective)."""
        return self.stop_poll(at_step)() > 0

    def stop_poll(self, at_step: bool) -> Callable[[], float]:
        """`stop_requested`'s collective, started now: the returned function waits for the number
        of ranks that saw a request."""
        path = self.spec.get("stop_file")
        try:
            request = Path(path).read_text() if path else None
        except FileNotFoundError:
            request = None
        seen = request is not None and (not at_step or request.strip() == STOP_AT_STEP)
        answer = self.strategy.all_reduce_sum_started([float(seen)])
        return lambda: answer()[0]

    def epochs(self) -> range:
        return range(self.state["epoch"], 0 if self.state["stopped"] else self.pcfg.epochs)

    def _micro_batches(self, epoch: int) -> list[list[np.ndarray]]:
        return epoch_micro_batches(len(self.train_samples), epoch=epoch, seed=self.cfg.seed,
                                   micro=self.pcfg.micro_batch_size, world=self.world, accum=self.accum, rank=self.rank)

    def _collate(self, samples: list[Sample], idx: np.ndarray) -> dict[str, Any]:
        return self.strategy.to_device(self._collate_host(samples, idx))

    def _collate_host(self, samples: list[Sample], idx: np.ndarray) -> dict[str, Any]:
        chosen = [samples[i] for i in idx]
        cl = [self.clusters[s.visit_key] for s in chosen] if self.clusters is not None else None
        return self.collate(chosen, cl)

    def _collated_ahead(self, micro_batches: list[np.ndarray]) -> Iterator[dict[str, Any]]:
        """The training micro-batches in order, each collated on a helper thread while the one
        before it trains. A data-parallel rank waits in the gradient all-reduce for its slowest
        peer every step (on 2 CPU ranks ~15 % of its time, its core idle): the next collation fills
        that wait. Collation draws no random numbers, so the batches are the same."""
        if not micro_batches:
            return
        pending = self._collator.submit(self._collate_host, self.train_samples, micro_batches[0])
        for idx in micro_batches[1:]:
            batch, pending = pending.result(), self._collator.submit(self._collate_host, self.train_samples, idx)
            yield self.strategy.to_device(batch)
        yield self.strategy.to_device(pending.result())

    def train_epoch(self, epoch: int) -> tuple[list[float], float] | None:
        """One epoch of optimizer steps; returns each step's global-batch loss and the seconds spent.
        After every step it looks for a step stop request, which the ranks agree on during the next
        step: on one, it reports a checkpoint of that next step and returns None."""
        # an epoch a stop request ended in its middle goes on from its next step, with the random
        # state it had there; otherwise reseed per epoch so dropout replays identically after a
        # restore from this epoch's start
        done = self.state["partial"] or {"step_losses": [], "tokens": 0.0, "train_s": 0.0}
        self.state["partial"] = None
        if done["step_losses"]:
            torch.set_rng_state(self.rng["cpu"])
            if self.rng["cuda"] is not None:
                torch.cuda.set_rng_state(self.rng["cuda"], self.strategy.device)
        else:
            torch.manual_seed(self.cfg.seed + 1000 * epoch + self.rank)
        engine = self.engine
        engine.train()
        t0 = time.perf_counter()
        local_losses: list[float] = []
        local_tokens = 0
        # The step stop request's collective runs during the next step: awaited right after its
        # own step, it held every rank there each step. So a request seen after step s stops the
        # phase after step s + 1, on every rank alike.
        poll: Callable[[], float] | None = None
        steps = self._micro_batches(epoch)[len(done["step_losses"]):]
        batches = self._collated_ahead([idx for micro_batches in steps for idx in micro_batches])
        for micro_batches in steps:
            self._maybe_fail()
            loss_sum, tokens = 0.0, 0
            for _ in micro_batches:
                batch = next(batches)
                out = engine(batch)
                loss, _ = engine.module.loss(batch, out, self.pcfg)
                engine.backward(loss)
                self.strategy.step(engine)
                loss_sum += float(loss.detach())
                n = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
                tokens += n
                self.pace.micro_batch(n)
            local_losses.append(loss_sum / self.accum)
            local_tokens += tokens
            self.state["global_step"] += 1
            self.progress.step(self.state["global_step"], epoch=epoch + 1, loss=f"{local_losses[-1]:.4f}")
            self._test_hooks_after_step()
            if poll is not None and poll() > 0:
                self.state["partial"] = self._reduce_steps(done, local_losses, local_tokens, t0)
                self.save_step_checkpoint()
                return None
            poll = self.stop_poll(at_step=True)
        if poll is not None:
            poll()   # a request it saw is for the epoch's end to act on (`fit` asks again)
        part = self._reduce_steps(done, local_losses, local_tokens, t0)
        self.epoch_tokens = part["tokens"]
        return part["step_losses"], part["train_s"]

    def _reduce_steps(self, done: dict[str, Any], local_losses: list[float], local_tokens: int,
                      t0: float) -> dict[str, Any]:
        """The epoch's steps so far, every rank's: those of an earlier attempt (`done`) and these.
        One collective for all the steps, not one per step: a step's loss = mean over every
        micro-batch of every rank = the loss of the global batch; the token count rides along."""
        *sums, tokens = self.strategy.all_reduce_sum([*local_losses, float(local_tokens)])
        return {"step_losses": done["step_losses"] + [v / self.world for v in sums], "tokens": done["tokens"] + tokens,
                "train_s": done["train_s"] + time.perf_counter() - t0}

    @torch.no_grad()
    def validate(self) -> float:
        """Mean validation Jaccard at `val_threshold`, scored on all ranks' shards gathered."""
        from trixmed.eval.metrics import multilabel_metrics

        val = self.val_samples
        if not val:
            return float("nan")
        self.engine.eval()
        idx = shard_for_eval(len(val), self.rank, self.world)
        probs = []
        for start in range(0, len(idx), self.pcfg.micro_batch_size):
            out = self.engine(self._collate(val, idx[start:start + self.pcfg.micro_batch_size]))
            probs.append(torch.sigmoid(out.logits.float()).cpu())
        full = self.strategy.gather_rows(torch.cat(probs))[: len(val)].numpy()
        y_true = self.ds.multi_hot([s.target for s in val])
        y_pred = (full >= self.pcfg.val_threshold).astype(np.float32)
        self.engine.train()
        return float(np.mean(multilabel_metrics(y_true, y_pred, None, self.ds.ddi)["jaccard"]))

    def end_epoch(self, epoch: int, step_losses: list[float], train_s: float, val_jaccard: float,
                  val_s: float) -> dict[str, Any]:
        """Book-keeping after an epoch: best weights, early stopping, TensorBoard, the console line."""
        state, phase = self.state, self.phase
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(step_losses)),
            "step_losses": step_losses,
            "val_jaccard": val_jaccard,
            "lr": float(self.engine.get_lr()[0]),
            "samples_per_s": len(step_losses) * self.pcfg.effective_batch_size / train_s,
            "train_s": train_s,
            "val_s": val_s,
        }
        if self.epoch_tokens:   # hf: tokens through the model, every rank's
            record["tokens_per_s"] = self.epoch_tokens / train_s
        if self.strategy.device.type == "cuda":
            record["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.strategy.device) / 2**30
        # without validation visits the last epoch is kept and early stopping is off
        improved = not self.val_samples or val_jaccard > state["best_jaccard"]
        if improved:
            state.update(best_jaccard=val_jaccard if self.val_samples else state["best_jaccard"],
                         best_epoch=epoch + 1, bad_epochs=0)
            self.strategy.export(self.engine, self.scratch / BEST_DIR)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["history"].append(record)
        state["stopped"] = 0 < self.pcfg.early_stopping_patience <= state["bad_epochs"]
        if self.writer is not None:
            first = state["global_step"] - len(step_losses)
            for i, value in enumerate(step_losses):
                self.writer.add_scalar(f"{phase}/train_loss", value, first + i + 1)
            self.writer.add_scalar(f"{phase}/lr", record["lr"], state["global_step"])
            self.writer.add_scalar(f"{phase}/val_jaccard", val_jaccard, epoch + 1)
            self.writer.add_scalar(f"{phase}/samples_per_s", record["samples_per_s"], epoch + 1)
            self.writer.flush()
        self.progress.event("epoch", position=state["global_step"],
                            text=f"[{phase}] epoch {epoch + 1}/{self.pcfg.epochs}: loss {record['train_loss']:.4f}  "
                                 f"val jaccard {val_jaccard:.4f}  {record['samples_per_s']:.1f} samples/s"
                                 + ("  (best)" if improved else ""))
        return record

    def save_checkpoint(self, record: dict[str, Any]) -> None:
        """Report the epoch's metrics to the session with a checkpoint: DeepSpeed state of every rank,
        the trainer state and the best weights so far."""
        self._report_checkpoint(epoch_metrics(record, self.state["best_jaccard"]))

    def save_step_checkpoint(self) -> None:
        """A checkpoint in the middle of an epoch (a stop request): what `save_checkpoint` keeps, the
        epoch's steps so far (`state["partial"]`) and each rank's random state, so the rest of the
        epoch replays as it would have. The report's metrics say where it stopped."""
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.strategy.device) if self.strategy.device.type == "cuda" else None}
        self._report_checkpoint({"epoch": self.state["epoch"], "global_step": self.state["global_step"],
                                 "step_in_epoch": len(self.state["partial"]["step_losses"])},
                                {RNG_FILE.format(rank=self.rank): rng})

    def _report_checkpoint(self, metrics: dict[str, Any], rank_files: dict[str, Any] | None = None) -> None:
        """Report `metrics` with a checkpoint: DeepSpeed state of every rank, `rank_files` of this
        rank (torch.save), and from rank 0 the trainer state and the best weights so far."""
        with tempfile.TemporaryDirectory(prefix="trixmed-ckpt-") as tmp:
            self.strategy.save_checkpoint(self.engine, tmp)
            for name, value in (rank_files or {}).items():
                torch.save(value, Path(tmp) / name)
            if self.rank == 0:
                (Path(tmp) / CHECKPOINT_STATE).write_text(json.dumps(self.state))
                if (self.scratch / BEST_DIR).is_dir():
                    shutil.copytree(self.scratch / BEST_DIR, Path(tmp) / BEST_DIR)
            self.session.report(metrics, tmp)

    def export(self) -> None:
        """Rank 0 writes the best weights and history.json into the stage's staging directory."""
        if self.rank == 0:
            out = Path(self.spec["out_dir"])
            shutil.copytree(self.scratch / BEST_DIR, out / MODEL_DIR, dirs_exist_ok=True)
            (out / HISTORY_FILE).write_text(json.dumps({
                "phase": self.phase, "world_size": self.world, "zero_stage": self.cfg.distributed.zero_stage,
                "grad_accumulation": self.accum, "train_samples": len(self.train_samples),
                "val_samples": len(self.val_samples), "best_epoch": self.state["best_epoch"],
                "best_val_jaccard": self.state["best_jaccard"], "epochs": self.state["history"],
            }, indent=2))
        self.close()
        self.strategy.barrier()

    def close(self) -> None:
        """Release what the run holds outside its outputs: the TensorBoard writer and the scratch copy
        of the best weights (a long-lived worker runs many trainers)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        shutil.rmtree(self.scratch, ignore_errors=True)
        self._collator.shutdown(cancel_futures=True)

    def _test_hooks_after_step(self) -> None:
        """Test hooks `test_hooks.step_delay_s` (a slow step) and `test_hooks.stop_at_step` (rank 0
        asks for a stop at this step, as job.sh does on a signal)."""
        hooks = self.cfg.test_hooks
        if hooks.step_delay_s:
            time.sleep(hooks.step_delay_s)
        if hooks.stop_at_step == self.state["global_step"] and self.rank == 0:
            Path(self.spec["stop_file"]).parent.mkdir(parents=True, exist_ok=True)
            Path(self.spec["stop_file"]).write_text(STOP_AT_STEP)

    def _maybe_fail(self) -> None:
        """Test hook `test_hooks.fail_at_step`: the last rank dies once, as a lost worker would."""
        step = self.state["global_step"]
        if self.cfg.test_hooks.fail_at_step != step or self.rank != self.world - 1:
            return
        marker = Path(self.spec["fail_marker"])
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"rank {self.rank} exited at step {step}\n")
        print(f"[test hook] rank {self.rank} exits at step {step} (test_hooks.fail_at_step)", flush=True)
        os._exit(1)


class Pace:
    """The phase's measured pace, said once on the console after its first micro-batches: a language
    model on a CPU can need hours, and the user should know before waiting for them (no run is
    silently shortened). Rank 0's tokens/s × world is the phase's rate; the first micro-batch
    (allocation, caches) is not timed."""

    MEASURED = 3   # micro-batches timed

    def __init__(self, phase: str, remaining_micro_batches: int, world: int, device: str, progress: ProgressReporter | None):
        self.phase, self.remaining, self.world, self.device, self.progress = phase, remaining_micro_batches, world, device, progress
        self.seen, self.tokens, self.t0 = 0, 0, 0.0

    def micro_batch(self, tokens: int) -> None:
        if self.progress is None:
            return
        self.seen += 1
        if self.seen == 1:
            self.t0 = time.perf_counter()
            return
        self.tokens += tokens
        if self.seen == 1 + self.MEASURED:
            per_micro = (time.perf_counter() - self.t0) / self.MEASURED
            left = per_micro * (self.remaining - self.seen)
            rate = self.tokens / (per_micro * self.MEASURED)
            note = "  (a GPU cluster is the place for this run: docs/model.md)" if self.device == "cpu" and left > 3600 else ""
            self.progress.event("message", text=f"[{self.phase}] measured {rate:,.0f} tokens/s per worker on {self.world} "
                                                f"{self.device} worker(s): about {format_duration(left)} of training left{note}")
            self.progress = None


def format_duration(seconds: float) -> str:
    """`2 h 05 min`, `14 min`, `40 s`."""
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds:.0f} s"
