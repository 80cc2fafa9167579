"""The `extract` stage on Ray Data: pooled warm-up features of every sample, in Parquet shards.

The samples are cut into fixed shards (`extract.shard_size`); Ray Data schedules the shards on an
actor pool (`extract.actors`, each holding the frozen warm-up model once, on its GPU when
`extract.gpus_per_actor` > 0), and each actor writes its shard atomically. A shard's content is a
function of its sample range and the model only (fixed batches inside it), so the output is the
same whatever the number of actors. Finished shards wait in a hidden directory named by the
stage's input and config hash: an interrupted extraction resumes from them, a changed one
starts afresh.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trixmed.cluster.features import feature_dim, shard_name, write_feature_shard
from trixmed.config import Config
from trixmed.console import Console
from trixmed.run_dir import RunDir, hash_json

if TYPE_CHECKING:   # for annotations only: torch is imported where a model runs, not with this module
    import torch

    from trixmed.data.dataset import Dataset


class ShardExtractor:
    """A Ray Data actor: loads the warm-up model once, then turns shard specs into shard files."""

    def __init__(self, cfg: Config, run_dir: str, out_dir: str):
        import torch

        from trixmed.data.dataset import Dataset
        from trixmed.models import load_model
        from trixmed.train.inference import collator_for

        rd = RunDir(run_dir)
        self.dataset = dataset = Dataset(rd.dataset)
        self.batch_size = cfg.extract.batch_size
        self.device = torch.device("cuda") if cfg.extract.gpus_per_actor > 0 else torch.device("cpu")
        self.model = load_model(rd.model("warmup"), cfg, dataset.vocab).to(self.device)
        self.collate = collator_for(cfg, dataset.vocab)
        self.out_dir = Path(out_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [extract_shard(self.model, self.collate, self.dataset, (int(shard), int(start), int(end)), self.out_dir,
                              batch_size=self.batch_size, device=self.device)
                for shard, start, end in zip(batch["shard"], batch["start"], batch["end"])]
        return {"shard": np.asarray(batch["shard"]), "rows": np.asarray(rows)}


def extract_shard(model: torch.nn.Module, collate: Callable[..., dict[str, Any]], dataset: Dataset,
                  shard: tuple[int, int, int], out_dir: Path, *, batch_size: int, device: torch.device | None = None) -> int:
    """Write shard (index, start, end): the pooled features of samples start..end-1, in fixed
    batches (so its content depends on its range and the model only); returns its row count."""
    from trixmed.train.inference import infer

    index, start, end = shard
    chunk = dataset.samples(rows=range(start, end))   # only this shard's visits
    pooled = infer(model, collate, chunk, batch_size=batch_size, device=device)["pooled"]
    write_feature_shard(out_dir / shard_name(index), [s.visit_key for s in chunk], [s.patient_id for s in chunk],
                        [s.split for s in chunk], pooled)
    return len(chunk)


def extract_features(cfg: Config, rd: RunDir, out: Path, partial: Path, console: Console) -> dict[str, Any]:
    """Write every sample's features as shards into `out`; `partial` keeps finished shards across
    interruptions (removed once all are in `out`)."""
    from trixmed.data.dataset import Dataset

    n = len(Dataset(rd.dataset).visits)   # one sample per visit
    shards = shard_ranges(n, cfg.extract.shard_size)
    partial.mkdir(parents=True, exist_ok=True)
    todo = [s for s in shards if not (partial / shard_name(s[0])).is_file()]
    if len(todo) < len(shards):
        console.line(f"[extract] resuming: {len(shards) - len(todo)} of {len(shards)} shards already written")
    if todo:
        _run_actor_pool(cfg, rd, todo, partial, console, done_before=len(shards) - len(todo), total=len(shards))
    for i, _, _ in shards:
        os.replace(partial / shard_name(i), out / shard_name(i))
    shutil.rmtree(partial, ignore_errors=True)
    dim = feature_dim(out / shard_name(0)) if shards else 0
    return {"samples": n, "dim": dim, "shards": len(shards), "resumed_shards": len(shards) - len(todo)}


def shard_ranges(n: int, size: int) -> list[tuple[int, int, int]]:
    """(index, start, end) of the fewest equal shards of at most `size` samples: equal, so that a
    short last shard does not leave the pool's actors unevenly loaded."""
    count = -(-n // size)
    per = -(-n // count) if count else 0
    return [(i, i * per, min((i + 1) * per, n)) for i in range(count)]


def partial_key(cfg: Config, input_hash: str, config_hash: str) -> str:
    """Names the directory of an interrupted extraction's finished shards: the stage's inputs and
    hashed config, and the shard size, which is not hashed (it does not change the features) but
    sets which samples a shard index holds."""
    return hash_json([input_hash, config_hash, cfg.extract.shard_size])[:12]


def _run_actor_pool(cfg: Config, rd: RunDir, todo: list[tuple[int, int, int]], partial: Path, console: Console,
                    *, done_before: int, total: int) -> None:
    import ray.data

    from trixmed.ray_resources import wait_for_resources
    from trixmed.train.ray_session import ensure_ray, quiet_library_logger

    ensure_ray(cfg)
    quiet_library_logger("ray.data")
    context = ray.data.DataContext.get_current()   # created quietly by ensure_ray
    context.enable_progress_bars = False      # the console draws one bar for the stage itself
    context.print_on_execution_start = False
    e = cfg.extract
    # Ray Data waits for its actor pool without limit (DataContext.wait_for_min_actors_s is -1)
    wait_for_resources([{"GPU": e.gpus_per_actor, "CPU": e.cpus_per_actor}] * min(e.actors, len(todo)), "extract.actors")
    specs = ray.data.from_items([{"shard": i, "start": a, "end": b} for i, a, b in todo], override_num_blocks=len(todo))
    with warnings.catch_warnings():
        # `max_restarts` reaches Ray Data's actors only through its deprecated **ray_remote_args (no
        # named parameter yet in Ray 2.60); revisit before Ray 2.64 removes them
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        results = specs.map_batches(
            ShardExtractor,
            fn_constructor_kwargs={"cfg": cfg, "run_dir": str(rd.root.resolve()), "out_dir": str(partial.resolve())},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(e.actors, len(todo))),
            num_cpus=e.cpus_per_actor,
            num_gpus=e.gpus_per_actor or None,
            # a lost actor fails the stage instead of restarting, and re-running resumes from the
            # finished shards: Ray Data's restartable actors keep their constructor arguments in the
            # object store, which makes Ray's core worker print an error on the console at creation
            max_restarts=0,
        )
    console.start_bar("extract", total=total, initial=done_before)
    done = done_before
    for batch in results.iter_batches(batch_size=None):
        done += len(batch["shard"])
        console.advance_bar(done)
    console.close_bar()
