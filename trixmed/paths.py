"""Where bundled resources and the (optional, credentialed) shared data live."""

from __future__ import annotations

import os
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent / "resources"


def resource_path(*parts: str) -> Path:
    """A file shipped inside the package (demo data, code titles, mappings, DDI pairs)."""
    return RESOURCES.joinpath(*parts)


def shared_data_dir() -> Path | None:
    """The processed-benchmark data folder, or None when this machine does not have it.

    `TRIXMED_SHARED_DATA` wins; otherwise `../shared/data` beside the repository checkout.
    The processed MIMIC benchmarks are derived from credentialed data and are read in place,
    never copied into the repository.
    """
    env = os.environ.get("TRIXMED_SHARED_DATA")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parent.parent
    candidates += [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if (c / "benchmark").is_dir():
            return c
    return None


def cache_dir() -> Path:
    """Where derived, re-creatable files live (GGUF checkpoints dequantised to safetensors).

    `TRIXMED_CACHE` wins (point it at a shared filesystem on a cluster, so one node converts for
    all), then `$XDG_CACHE_HOME/trixmed`, then `~/.cache/trixmed`.
    """
    env = os.environ.get("TRIXMED_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trixmed"
