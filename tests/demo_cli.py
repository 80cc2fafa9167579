"""The bundled demo through `trixmed run` as a user runs it, for the end-to-end tests of a model option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def demo_args(run_dir: Path, *overrides: str) -> list[str]:
    """A trixmed command's arguments for the bundled demo, one epoch a phase."""
    return ["--config", str(REPO / "configs" / "demo_cpu.yaml"), f"run_dir={run_dir}",
            "warmup.epochs=1", "experts.epochs=1", "eval.bootstrap_rounds=3", *overrides]


def run_demo(run_dir: Path, *overrides: str, timeout: int = 550) -> subprocess.CompletedProcess:
    """`trixmed run` of the bundled demo, one epoch a phase, in a fresh process (its own Ray, not the
    session's), as a user runs it; fails the test with the output's tail unless it succeeds."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "trixmed.cli", "run", *demo_args(run_dir, *overrides)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=run_dir.parent,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def check_new_patient(run_dir: Path, tmp_path: Path, capsys, n_drugs: int) -> None:
    """A new patient through a trained run: `predict` ranks every drug, `explain` recommends."""
    from trixmed.cli import main

    patient = tmp_path / "patient.json"
    patient.write_text(json.dumps({"visits": [{"diag": ["4019", "42731"], "proc": [], "med": ["A02B"]},
                                              {"diag": ["4280"], "proc": []}]}))
    capsys.readouterr()
    assert main(["predict", "--input", str(patient), "--top", "0", f"run_dir={run_dir}"]) == 0
    probs = [m["probability"] for m in json.loads(capsys.readouterr().out)["medications"]]
    assert len(probs) == n_drugs and probs == sorted(probs, reverse=True)
    assert main(["explain", "--patient", str(patient), "--run", str(run_dir)]) == 0
    assert "Recommended medications" in capsys.readouterr().out
