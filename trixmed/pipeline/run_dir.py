"""The run directory and its `run.json`: which stages are complete, for which inputs and config.

    <run_dir>/
        dataset/  warmup/  features/  clusters/  experts/  eval/    stage outputs (atomic)
        run.json        per stage: input hash, config hash, wall time, finish time
        tensorboard/    event files of the training phases
        .ray/           Ray Train storage: per-phase checkpoints used to resume

A stage is skipped when its output directory exists and run.json records the same input and
config hashes; anything else re-runs it. Hashes are of content (file bytes), so touching a file
changes nothing and editing one does.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from trixmed.io import read_json, write_json

RUN_FILE = "run.json"


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def hash_paths(paths: list[Path]) -> str:
    """Content hash of files and directory trees (hidden entries, e.g. temp dirs, are skipped)."""
    h = hashlib.sha256()
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        h.update(f"<{root.name}>".encode())
        for f in files:
            h.update(str(f.relative_to(root) if f != root else f.name).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def fingerprint_paths(paths: list[Path]) -> str:
    """Cheap fingerprint (name, size, mtime) for large external inputs such as raw MIMIC CSVs."""
    items = []
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        items += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hash_json(items)


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def state(self) -> dict[str, Any]:
        path = self.root / RUN_FILE
        return read_json(path) if path.is_file() else {"stages": {}}

    def is_complete(self, stage: str, output: str, input_hash: str, config_hash: str) -> bool:
        entry = self.state()["stages"].get(stage)
        return (
            entry is not None
            and (self.root / output).is_dir()
            and entry.get("input_hash") == input_hash
            and entry.get("config_hash") == config_hash
        )

    def mark_complete(self, stage: str, input_hash: str, config_hash: str, wall_s: float, **extra: Any) -> None:
        state = self.state()
        state["stages"][stage] = {
            "input_hash": input_hash,
            "config_hash": config_hash,
            "wall_s": round(wall_s, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        write_json(self.root / RUN_FILE, state)
