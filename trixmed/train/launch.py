"""Ray wiring: connect to (or start) Ray and run one training phase with a `TorchTrainer`.

Checkpoints live under `<run_dir>/.ray/<phase>-<hash>`: the name carries the content hash of the
stage's inputs and config, so running the stage again after an interruption resumes from its
latest checkpoint, while a changed config starts fresh instead of resuming stale weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trixmed.config import Config, to_dict
from trixmed.errors import TrixmedError


_started_here = False


def ensure_ray(cfg: Config, *, dashboard: bool = False) -> None:
    """Connect to Ray unless already connected: `distributed.ray_address`, else $RAY_ADDRESS, else
    a local instance on this machine's cores (`release_ray` stops only a local one we started)."""
    global _started_here
    import ray

    if ray.is_initialized():
        return
    address = cfg.distributed.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=dashboard, log_to_driver=True)
        _started_here = True


def release_ray() -> None:
    global _started_here
    if _started_here:
        import ray

        ray.shutdown()
        _started_here = False


def fit(cfg: Config, run_dir: Path, phase: str, out_dir: Path, *, run_name: str) -> dict[str, Any]:
    """Train `phase` ("warmup" | "experts") on Ray workers; rank 0 writes `out_dir/model` and
    `out_dir/history.json`. Returns the history."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trixmed.train.engine import train_worker

    ensure_ray(cfg)
    run_dir = Path(run_dir).resolve()
    d = cfg.distributed
    spec = {
        "config": to_dict(cfg),
        "phase": phase,
        "run_dir": str(run_dir),
        "out_dir": str(Path(out_dir).resolve()),
        "tensorboard_dir": str(run_dir / "tensorboard" / phase),
        "fail_marker": str(run_dir / ".ray" / "fail_hook_fired"),
    }
    resources = {"GPU": 1, "CPU": d.cpus_per_worker} if d.use_gpu else {"CPU": d.cpus_per_worker}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=spec,
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=d.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(run_dir / ".ray"),
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()
    history_path = Path(out_dir) / "history.json"
    if not history_path.is_file():
        raise TrixmedError(history_path, f"{phase} training finished without writing its history")
    return json.loads(history_path.read_text())
