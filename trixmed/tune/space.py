"""Search spaces (tune_spaces/*.yaml), written as dotted config keys:

    name: paper_grid                       # the experiment's name (default: the file's stem)
    grid:                                  # every combination is one trial
      stratify.num_clusters: [4, 8, 16, 20]
      model.moe.top_n: [1, 2, 4]
    follow:                                # keys that copy another key of the same trial
      model.moe.num_experts: stratify.num_clusters
    sample:                                # drawn num_samples times per grid combination (seeded)
      experts.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.moe.aux_weight: {choice: [0.0, 0.01, 0.1]}
    num_samples: 1

Every key is checked by the config loader before a sweep launches: each grid combination, and
each sampled key at the ends of its range, must make a valid config on top of the base config.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trixmed.config import Config, read_yaml_mapping, replace_key
from trixmed.errors import TrixmedError

SAMPLERS = ("uniform", "loguniform", "choice", "randint")
_TOP_KEYS = {"name", "description", "grid", "follow", "sample", "num_samples"}


@dataclass
class SearchSpace:
    name: str
    path: str
    grid: dict[str, list[Any]] = field(default_factory=dict)
    follow: dict[str, str] = field(default_factory=dict)
    sample: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    num_samples: int = 1
    description: str = ""

    @property
    def size(self) -> int:
        """Trials in one pass over the space (before ASHA stops any)."""
        return math.prod(len(v) for v in self.grid.values()) * self.num_samples

    def grid_points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    def complete(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's parameters with the `follow` keys filled in."""
        out = {k: params[k] for k in (*self.grid, *self.sample) if k in params}
        for key, source in self.follow.items():
            out[key] = out[source]
        return out

    def apply(self, base: Config, params: dict[str, Any]) -> Config:
        """`base` with a trial's parameters (and the keys that follow them) set, validated."""
        full = self.complete(params)
        where = f"{self.path}: {', '.join(f'{k}={v}' for k, v in full.items())}"
        cfg = base
        for key, value in full.items():
            cfg = replace_key(cfg, key, value, where)
        try:
            cfg.validate()
        except TrixmedError as exc:
            raise TrixmedError(where, f"{exc.where}: {exc.problem}") from None
        return cfg

    def check(self, base: Config) -> list[Config]:
        """Validate every grid combination (with each sampled key at its extremes) on `base`;
        returns the configs of the grid combinations."""
        configs = []
        ends = {key: _extremes(spec) for key, spec in self.sample.items()}
        for point in self.grid_points():
            configs.append(self.apply(base, {**point, **{k: v[0] for k, v in ends.items()}}))
            for key, values in ends.items():
                for value in values[1:]:
                    self.apply(base, {**point, **{k: v[0] for k, v in ends.items()}, key: value})
        return configs

    def param_space(self) -> dict[str, Any]:
        """Ray Tune's `param_space`: grid keys as grid searches, sampled keys as its samplers."""
        from ray import tune

        space: dict[str, Any] = {key: tune.grid_search(values) for key, values in self.grid.items()}
        for key, spec in self.sample.items():
            (kind, args), = spec.items()
            space[key] = getattr(tune, kind)(args) if kind == "choice" else getattr(tune, kind)(*args)
        return space

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "description": self.description, "grid": self.grid,
                "follow": self.follow, "sample": self.sample, "num_samples": self.num_samples}


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a search-space file; errors name the file and the key."""
    p = Path(path)
    raw = read_yaml_mapping(p, "search space not found")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise TrixmedError(p, f"{unknown[0]}: unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    grid = _mapping(p, raw, "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise TrixmedError(p, f"grid.{key}: expected a non-empty list of values, got {values!r}")
    follow = _mapping(p, raw, "follow")
    sample = _mapping(p, raw, "sample")
    for key, spec in sample.items():
        _check_sampler(p, key, spec)
    for key, source in follow.items():
        if source not in grid and source not in sample:
            raise TrixmedError(p, f"follow.{key}: {source!r} is not a grid or sample key of this space")
    both = sorted(set(grid) & set(sample) | (set(follow) & (set(grid) | set(sample))))
    if both:
        raise TrixmedError(p, f"{both[0]}: set twice (grid, sample and follow keys must differ)")
    if not grid and not sample:
        raise TrixmedError(p, "varies nothing: give `grid` or `sample` keys")
    num_samples = raw.get("num_samples", 1)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise TrixmedError(p, f"num_samples: must be an integer >= 1, got {num_samples!r}")
    name = raw.get("name", p.stem)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise TrixmedError(p, f"name: must be a plain directory name, got {name!r}")
    return SearchSpace(name=name, path=str(p), grid=grid, follow=follow, sample=sample, num_samples=num_samples,
                       description=str(raw.get("description", "")))


def _mapping(p: Path, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise TrixmedError(p, f"{key}: expected a mapping of dotted config keys, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _check_sampler(p: Path, key: str, spec: Any) -> None:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
        raise TrixmedError(p, f"sample.{key}: expected one of {{{', '.join(f'{s}: [...]' for s in SAMPLERS)}}}, got {spec!r}")
    (kind, args), = spec.items()
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise TrixmedError(p, f"sample.{key}.choice: expected a non-empty list, got {args!r}")
        return
    numbers = isinstance(args, list) and len(args) == 2 and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if not numbers or not args[0] < args[1]:
        raise TrixmedError(p, f"sample.{key}.{kind}: expected [low, high] with low < high, got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise TrixmedError(p, f"sample.{key}.loguniform: low must be > 0, got {args[0]}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise TrixmedError(p, f"sample.{key}.randint: expected integers, got {args!r}")


def _extremes(spec: dict[str, list[Any]]) -> list[Any]:
    (kind, args), = spec.items()
    if kind == "choice":
        return list(args)
    # randint's upper bound is exclusive in Ray Tune
    return [args[0], args[1] - 1] if kind == "randint" else [float(args[0]), float(args[1])]
