"""The package's layering, checked on the source: lower layers never import higher ones, and the
model code holds nothing distributed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trixmed"

# each package (or base module) → the trixmed packages it may import from
ALLOWED = {
    "errors": set(), "paths": set(), "io": set(), "console": set(),
    "config": {"errors"}, "run_dir": {"io"}, "ray_resources": {"errors"},
    "run_lock": {"errors", "io", "console", "run_dir"},
    "data": {"errors", "paths", "io", "config", "run_dir", "data"},
    "text": {"errors", "paths", "io", "config", "data", "text"},
    "models": {"errors", "paths", "io", "config", "data", "text", "models"},
    "cluster": {"errors", "io", "config", "ray_resources", "data", "text", "cluster"},
    "eval": {"errors", "io", "config", "data", "eval"},
    "baselines": {"errors", "io", "console", "config", "run_dir", "data", "eval", "baselines"},
    "parallel": {"errors", "models", "parallel"},
    # a sweep's trials run pipeline stages; the command line calls the sweep, never the reverse
    "tune": {"errors", "paths", "io", "console", "config", "run_dir", "data", "text", "models", "cluster", "eval",
             "parallel", "train", "pipeline", "tune"},
    # explanations and reports read a trained run through the pipeline, a sweep through its
    # summary; never the command line
    "report": {"errors", "paths", "io", "console", "config", "run_dir", "data", "text", "models", "cluster", "eval",
               "parallel", "train", "pipeline", "tune", "report"},
}


def _imports(path: Path) -> set[str]:
    """First component under `trixmed.` of every import in the file, lazy ones included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        out |= {n.split(".")[1] for n in names if n.startswith("trixmed.")}
    return out


def _files(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py")) if (PACKAGE / layer).is_dir() else [PACKAGE / f"{layer}.py"]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_lower_layers_do_not_import_higher_ones(layer):
    for path in _files(layer):
        reached = _imports(path) - ALLOWED[layer]
        assert not reached, f"{path.relative_to(PACKAGE.parent)} imports trixmed.{sorted(reached)[0]}"


def test_model_code_knows_nothing_distributed():
    for path in _files("models"):
        text = path.read_text(encoding="utf-8")
        for word in ("expert_parallel", "torch.distributed", "deepspeed", "import ray"):
            assert word not in text, f"{path.name} mentions {word}"


def test_the_k_means_numerics_know_nothing_of_ray():
    """cluster/lloyd.py and cluster/shards.py are plain numpy / pyarrow; cluster/distributed.py runs them on Ray."""
    for name in ("lloyd.py", "shards.py"):
        imported = {n.split(".")[0] for node in ast.walk(ast.parse((PACKAGE / "cluster" / name).read_text(encoding="utf-8")))
                    for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else
                              [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])}
        assert not imported & {"ray", "torch"}, f"cluster/{name} imports {sorted(imported & {'ray', 'torch'})}"
        assert "trixmed" not in imported or _imports(PACKAGE / "cluster" / name) <= {"errors"}


def test_the_rule_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from trixmed.pipeline.stages import STAGES\n")
    assert _imports(bad) == {"pipeline"}
