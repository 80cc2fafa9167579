"""The run directory: its layout, defined once, and `run.json` (which stages are complete).

    <run_dir>/
        dataset/        prepare: visits.parquet, vocab.json, ddi.npz, drugs.parquet (each drug's
                        molecules, for the drug tower), card                      (stage outputs are
        warmup/         phase 1: model/ (safetensors), history.json              written atomically)
        features/       extract: shard-00000.parquet, ... (pooled warm-up states, trixmed/cluster/features.py)
        clusters/       stratify: transform (safetensors + JSON), assignments.parquet, profile.json
        experts/        phase 3: model/, history.json
        eval/           evaluate: metrics.json, metrics.md, predictions_{val,test}.jsonl
                        (+ ablations.json, optional rows for the report)
        editor/         edit (only with editor.enabled): model/ (safetensors), editor.json (history, the
                        epoch kept), the edited sets' predictions_{val,test}.jsonl, metrics.json, metrics.md
        baselines/<name>/ `trixmed baseline lr|mlp`: model.safetensors, baseline.json (training history),
                        predictions_{val,test}.jsonl, metrics.json, metrics.md (the same harness as eval/)
        transfer/<source>/ `trixmed transfer --from SOURCE`: predictions_test.jsonl, metrics.json (with the
                        code coverage), metrics.md of another run applied zero-shot to this dataset
        report/         `trixmed report`: report.html, report.md, figures/, report.json, coherence.json
        run.json        per stage: input hash, config hash, wall time, finish time, summary
        logs/           Ray's, DeepSpeed's and the workers' own output (the console stays quiet),
                        and rank 0's progress events of each training phase
        tensorboard/    event files of the training phases
        tune/<space>/   `trixmed tune`: one Ray Tune experiment per search space (`ExperimentDir`)
        .ray/<run>/     one training run's checkpoints, used to resume it (`run_storage`): Ray Train's
                        storage, or a sweep worker group's latest checkpoint; <run> is <phase>-<hash>
                        of the stage's inputs and config (a trial's prefixed with its name)
        .lock           the command writing into this directory: its host, pid, start, SLURM job (JSON);
                        one writer at a time (trixmed/run_lock.py); .lock.guard is flocked to take over a stale one

Every path into a run directory comes from `RunDir`; no other module spells these names.
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
MODEL_DIR = "model"          # inside a training phase's output
HISTORY_FILE = "history.json"
CHECKPOINT_STATE = "trainer_state.json"   # inside each training checkpoint
DRUGS_FILE = "drugs.parquet"   # inside dataset/: each medication's molecules (trixmed/data/drugs.py)
STOP_AT_STEP = "step"   # the content of a stop request that should not wait for the epoch's end
LOCK_FILE = ".lock"


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
    """Paths into one run directory. Stage outputs are named by `STAGE_DIRS`."""

    # stage name → its output directory
    STAGE_DIRS = {"prepare": "dataset", "warmup": "warmup", "extract": "features", "stratify": "clusters",
                  "experts": "experts", "evaluate": "eval", "edit": "editor"}
    PHASES = ("warmup", "experts")

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def stage_dir(self, stage: str) -> Path:
        return self.root / self.STAGE_DIRS[stage]

    @property
    def dataset(self) -> Path:
        return self.stage_dir("prepare")

    @property
    def features(self) -> Path:
        return self.stage_dir("extract")

    @property
    def clusters(self) -> Path:
        return self.stage_dir("stratify")

    @property
    def assignments(self) -> Path:
        """visit_key → cluster of every visit, as the stratify stage assigned them."""
        return self.clusters / "assignments.parquet"

    @property
    def cluster_profile(self) -> Path:
        return self.clusters / "profile.json"

    @property
    def eval(self) -> Path:
        return self.stage_dir("evaluate")

    @property
    def metrics(self) -> Path:
        return self.eval / "metrics.json"

    @property
    def metrics_table(self) -> Path:
        return self.eval / "metrics.md"

    def predictions(self, split: str) -> Path:
        return self.eval / f"predictions_{split}.jsonl"

    @property
    def editor(self) -> Path:
        """The edit stage's output (editor.enabled): model/, editor.json, and the edited sets'
        predictions_{val,test}.jsonl, metrics.json, metrics.md under the names eval/ uses."""
        return self.stage_dir("edit")

    @property
    def editor_model(self) -> Path:
        return self.editor / MODEL_DIR

    def transfer(self, source: str) -> Path:
        """`trixmed transfer --from SOURCE`: that run's zero-shot scores on this run's test split."""
        return self.root / "transfer" / source

    def baseline(self, name: str) -> Path:
        """`trixmed baseline NAME`: model, predictions, metrics and table of one baseline."""
        return self.root / "baselines" / name

    @property
    def ablations(self) -> Path:
        """Optional ablation rows shown next to the run's metrics in its report (trixmed/report/run_report.py)."""
        return self.eval / "ablations.json"

    @property
    def report(self) -> Path:
        """`trixmed report`'s output (not a stage: never part of a content hash or of run.json)."""
        return self.root / "report"

    @property
    def report_html(self) -> Path:
        return self.report / "report.html"

    @property
    def report_markdown(self) -> Path:
        return self.report / "report.md"

    @property
    def report_figures(self) -> Path:
        """The report's figures as PNG files, for the Markdown (the HTML embeds them)."""
        return self.report / "figures"

    @property
    def report_data(self) -> Path:
        """Every number the report shows, as JSON."""
        return self.report / "report.json"

    @property
    def coherence(self) -> Path:
        """Cluster coherence metrics (`{"coherence": {...}}`), written by `trixmed report`."""
        return self.report / "coherence.json"

    def phase(self, phase: str) -> Path:
        """Output of a training phase ("warmup" | "experts")."""
        if phase not in self.PHASES:
            raise ValueError(f"not a training phase: {phase!r}")
        return self.stage_dir(phase)

    def model(self, phase: str) -> Path:
        """The saved model of a training phase (inside a stage output, or a staging directory)."""
        return self.phase(phase) / MODEL_DIR

    def history(self, phase: str) -> Path:
        return self.phase(phase) / HISTORY_FILE

    def tensorboard(self, phase: str) -> Path:
        return self.root / "tensorboard" / phase

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def progress(self, phase: str) -> Path:
        """Rank 0's progress events of a training phase (JSON lines), followed by the console."""
        return self.logs / f"{phase}-progress.jsonl"

    def partial(self, name: str) -> Path:
        """Work a stage keeps across interruptions (hidden: never part of a content hash)."""
        return self.root / ".partial" / name

    @property
    def stop_request(self) -> Path:
        """Created by whoever wants a training phase to stop, unexported, to resume when run again.
        Empty (a sweep's scheduler): after the current epoch's checkpoint. Holding `STOP_AT_STEP`
        (a signalled job): within two optimizer steps, with a checkpoint of the step it stops at."""
        return self.partial("stop")

    def saved_work(self) -> list[tuple[str, int]]:
        """What a later attempt would not redo: the stage records and the training checkpoints'
        states under this directory, as (path, mtime). A change between two readings is progress."""
        found = [p for name in (RUN_FILE, CHECKPOINT_STATE) for p in self.root.rglob(name)]
        return sorted((str(p.relative_to(self.root)), p.stat().st_mtime_ns) for p in found)

    @property
    def lock(self) -> Path:
        """Names the one command writing into this directory (trixmed/run_lock.py)."""
        return self.root / LOCK_FILE

    @property
    def lock_guard(self) -> Path:
        """Flocked while a command decides whether a stale lock may be taken over."""
        return self.root / f"{LOCK_FILE}.guard"

    @property
    def ray_storage(self) -> Path:
        """Ray Train's storage path: `run_storage` of every run name."""
        return self.root / ".ray"

    def run_storage(self, run_name: str) -> Path:
        """The checkpoints of the training run `run_name` (Ray Train's, or a worker group's:
        train/session.py); hidden, so never part of a content hash."""
        return self.ray_storage / run_name

    @property
    def tune(self) -> Path:
        """Ray Tune's storage path: one experiment directory per search space (`experiment`)."""
        return self.root / "tune"

    def experiment(self, name: str) -> ExperimentDir:
        return ExperimentDir(self.tune / name)

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    def state(self) -> dict[str, Any]:
        path = self.run_file
        return read_json(path) if path.is_file() else {"stages": {}}

    def is_complete(self, stage: str, input_hash: str, config_hash: str) -> bool:
        entry = self.state()["stages"].get(stage)
        return (
            entry is not None
            and self.stage_dir(stage).is_dir()
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
        write_json(self.run_file, state)


class ExperimentDir:
    """One Ray Tune sweep (`trixmed tune`) under `<run_dir>/tune/<space>/`:

        <experiment>/
            sweep.json          the search space and base config it was started with (resume checks it)
            summary.json        every trial: parameters, status, curves, validation scores; the best
            best.yaml           the sweep's best configuration (chosen on validation), ready for `trixmed run`
            report/             `trixmed report --tune`: sweep.html, sweep.md, figures/
            shared/<hash>/      stratify outputs shared by trials with the same clustering settings
            <trial>/            Ray Tune's trial directories; <trial>/run/ is that trial's run directory
            experiment_state-*.json, tuner.pkl, ...   Ray Tune's own state (`Tuner.restore`)
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def run_dir(self) -> RunDir | None:
        """The run directory whose `tune/` holds this experiment; None for one kept elsewhere."""
        run = RunDir(self.root.parent.parent)
        return run if run.tune == self.root.parent else None

    @property
    def sweep(self) -> Path:
        return self.root / "sweep.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def best_config(self) -> Path:
        return self.root / "best.yaml"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_html(self) -> Path:
        return self.report / "sweep.html"

    @property
    def report_markdown(self) -> Path:
        return self.report / "sweep.md"

    @property
    def report_figures(self) -> Path:
        return self.report / "figures"

    def shared(self, key: str) -> Path:
        """A run directory holding one stratify result that every trial with clustering settings `key` links to."""
        return self.root / "shared" / key

    @staticmethod
    def trial_run(trial_dir: str | Path) -> RunDir:
        """The run directory of one trial, inside Ray Tune's trial directory."""
        return RunDir(Path(trial_dir) / "run")
