"""The images' build context: what `docker build .` would send, and so what `COPY . .` can put in an
image. No Docker engine runs here, so the context is computed from .dockerignore with Docker's
documented matching rules (docs.docker.com/build/concepts/context/#dockerignore-files):

- one pattern a line; `#` lines and blank lines are skipped; surrounding spaces are trimmed;
- a pattern is cleaned like a path (Go's filepath.Clean), a leading `/` dropped: paths are relative
  to the context's root;
- Go's filepath.Match syntax (`*` and `?` stop at `/`, `[…]` classes, `\\` escapes), and `**`
  matching any number of directories, none included;
- a pattern that matches a directory matches everything below it;
- `!` makes an exception; of the patterns that match a path, the last decides.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """One .dockerignore pattern (without its `!`) as a regular expression over a relative path,
    following moby/patternmatcher's translation."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise ValueError(f"{pattern!r}: unterminated character class")
            out += "[" + pattern[i + 1:end] + "]"   # Go's [^…] negation reads the same in Python
            i = end
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def read_patterns(dockerignore: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) for each line of the file, in order."""
    patterns = []
    for line in dockerignore.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        line = posixpath.normpath(line.removeprefix("!").strip())
        if len(line) > 1 and line.startswith("/"):
            line = line[1:]
        patterns.append((exception, compile_pattern(line)))
    return patterns


def ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the context leaves `path` out: the last pattern matching it or one of its parent
    directories decides."""
    parts = path.split("/")
    candidates = [path] + ["/".join(parts[:k]) for k in range(1, len(parts))]
    result = False
    for exception, regex in patterns:
        if any(regex.match(c) for c in candidates):
            result = not exception
    return result


def build_context(root: Path) -> set[str]:
    """The files under `root` that `docker build root` sends, as paths relative to it."""
    patterns = read_patterns(root / ".dockerignore")
    files = set()
    for folder, _, names in os.walk(root):
        for name in names:
            rel = (Path(folder) / name).relative_to(root).as_posix()
            if not ignored(rel, patterns):
                files.add(rel)
    return files


# --------------------------------------------------------------------------------------------
# the matcher against the examples of Docker's documentation


@pytest.mark.parametrize("lines,path,expected", [
    (["*/temp*"], "somedir/temporary.txt", True),
    (["*/temp*"], "somedir/sub/temporary.txt", False),
    (["*/temp*"], "temp.txt", False),
    (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
    (["temp?"], "tempa", True),
    (["temp?"], "tempa/x", True),          # a matched directory takes everything below it
    (["temp?"], "tempab", False),
    (["**/*.go"], "a/b/c.go", True),
    (["**/*.go"], "c.go", True),
    (["/runs"], "runs/demo/x.parquet", True),
    (["runs"], "data/runs", False),
    (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
    (["*.md", "!README*.md", "README-secret.md"], "README.md", False),
    (["*.md", "README-secret.md", "!README*.md"], "README-secret.md", False),
    (["*.md"], "docs/cluster.md", False),
    (["file[0-9].txt"], "file7.txt", True),
    (["file[^0-9].txt"], "file7.txt", False),
    (["\\*.txt"], "a.txt", False),
])
def test_the_matcher_follows_dockers_documented_rules(tmp_path, lines, path, expected):
    (tmp_path / ".dockerignore").write_text("\n".join(lines) + "\n")
    assert ignored(path, read_patterns(tmp_path / ".dockerignore")) is expected


# --------------------------------------------------------------------------------------------
# the project's .dockerignore

KEPT = ["pyproject.toml", "README.md", "requirements-cuda.txt", "Makefile", ".ci/run", "logs/.gitignore",
        "trixmed/__init__.py", "trixmed/resources/descriptions/icd10cm_cms2025.parquet",
        "trixmed/resources/mimic3_demo/ADMISSIONS.csv", "configs/demo_cpu.yaml", "slurm/job.sh",
        "launch/__init__.py", "tests/test_cli.py", "benchmarks/results/pipeline.json", "docker/Dockerfile"]
LEFT_OUT = [".git/HEAD", ".git/objects/ab/cdef", ".venv/bin/python", ".venv/lib/python3.11/site-packages/torch/x.py",
            "runs/demo/dataset/visits.parquet", "runs/demo/experts/model.safetensors", "runs/demo/.ray/ckpt/state.pt",
            "runs/demo/eval/metrics.json", "logs/trixmed-train-7/job.log", "logs/trixmed-train-7.out",
            "shared/data/benchmark/mimic3/records.pkl", "features.parquet", "benchmarks/scratch/part-0.parquet",
            "benchmarks/results/stratify.json.tmp", "trixmed/__pycache__/cli.cpython-311.pyc", "trixmed.egg-info/PKG-INFO",
            ".pytest_cache/v/cache/nodeids", "models/llama/pytorch_model.bin"]


def test_the_build_context_holds_no_repository_environment_logs_or_data(tmp_path):
    """A checkout with a venv, run directories, job logs and data in it: the context keeps the
    sources and the package's own resources, and none of the rest."""
    (tmp_path / ".dockerignore").write_text((REPO / ".dockerignore").read_text())
    for rel in KEPT + LEFT_OUT:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert build_context(tmp_path) == {".dockerignore", *KEPT}


def test_every_file_the_dockerfiles_copy_by_name_is_in_the_context():
    patterns = read_patterns(REPO / ".dockerignore")
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        for copy in re.findall(r"^COPY (.+) \S+$", (REPO / "docker" / dockerfile).read_text(), flags=re.M):
            for source in copy.split():
                if source != ".":
                    assert not ignored(source.rstrip("/"), patterns), f"docker/{dockerfile} copies {source}"
    resources = [p.relative_to(REPO).as_posix() for p in (REPO / "trixmed" / "resources").rglob("*") if p.is_file()]
    assert resources and not [r for r in resources if ignored(r, patterns)]
