"""Connecting to Ray, with its logs in the run directory rather than on the console.

`ensure_ray` joins `distributed.ray_address` / $RAY_ADDRESS, or starts a local Ray on this
machine's cores. Unless `verbose`, Ray's driver-side logging goes to `<run_dir>/logs/ray.log`,
workers' output is not forwarded to the driver (trainers write it to `<run_dir>/logs/` themselves),
and `<run_dir>/logs/ray-session` points at Ray's own session logs. Train state tracking is on
wherever a dashboard can show it (`--dashboard`, or a cluster joined by address), so the
dashboard's Train view lists the runs; a local run without a dashboard skips its state actor
(~0.4 GB on these machines). A SLURM job's nodes get trixmed's Ray settings from the job's
environment (`ray_node_env`), and its state tracking only with `--dashboard`. `release_ray` stops
a local Ray it started and ends whatever of it outlives the shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from trixmed.config import Config
from trixmed.run_dir import RunDir

# read by Ray Train's controller: without it the dashboard's train API has no runs to show
_TRAIN_STATE = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}
# How often Ray Train's controller polls its workers (default 2 s). A worker's `report` with a
# checkpoint waits for the controller's next poll, and so does the end of a run: on the demo that
# was ~1.5 s per epoch and ~4 s per phase, a third of `make run`'s 63 s. One poll is a small
# actor call per worker; 0.2 s costs nothing measurable (benchmarks/pipeline.py). A value in the
# environment wins.
_TRAIN_POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")}
# Ray Train starts a preemption watcher actor per worker group, which polls Ray for nodes being
# drained (a cloud autoscaler's preemption). trixmed's preemption comes from SLURM's signals and
# its own stop request (slurm/job.sh), so the watcher is one more process to start before the
# first step: ~1.5 s of a 2-core node's CPU per training phase. A value in the environment wins.
_NO_WATCHER = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")}
# Ray Train replaces `print` in its workers with one that logs each line through the root logger
# and, once the rank's output goes to its own file (`redirect_output`), also prints it: every line
# a rank prints reached its log twice. trixmed sends a rank's output to the run's logs itself.
_NO_PRINT_PATCH = {"RAY_TRAIN_ENABLE_PRINT_PATCH": os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")}
_TRAIN_ENV = {**_TRAIN_POLL, **_NO_WATCHER, **_NO_PRINT_PATCH}
# Set (to 1) in the environment of a driver whose Ray nodes were started with trixmed's settings
# already in their environment: slurm/job.sh exports what `trixmed plan --slurm` says before it
# starts them (`ray_node_env`). The job's runtime env then stays empty, as a local Ray's does.
NODES_HAVE_ENV = "TRIXMED_RAY_NODES_HAVE_ENV"
RAY_LOG = "ray.log"


@dataclass
class _Session:
    started_here: bool = False
    verbose: bool = False
    dashboard_url: str | None = None


_session = _Session()


@contextlib.contextmanager
def ray_session(cfg: Config, *, verbose: bool = False, dashboard: bool = False) -> Iterator[None]:
    """Ray for one command: connected now when the dashboard is wanted (so its URL can be shown),
    otherwise by the first stage that needs it; stopped at the end when it was started here."""
    _session.verbose = verbose
    try:
        if dashboard:
            ensure_ray(cfg, dashboard=True)
        yield
    finally:
        release_ray()


def ensure_ray(cfg: Config, *, dashboard: bool = False) -> None:
    """Connect to Ray unless already connected (`release_ray` stops only a local one we started)."""
    import ray

    if ray.is_initialized():
        return
    verbose = _session.verbose
    logs = RunDir(cfg.run_dir).logs
    logs.mkdir(parents=True, exist_ok=True)
    address = cfg.distributed.ray_address or os.environ.get("RAY_ADDRESS")
    # A local Ray's processes inherit this process's environment, and so do a SLURM job's nodes
    # (NODES_HAVE_ENV); another cluster's get it through the job's runtime env. The runtime env
    # stays empty where it can: Ray's prestarted idle workers serve only the default one.
    via_runtime_env = bool(address) and os.environ.get(NODES_HAVE_ENV) != "1"
    os.environ.update(_TRAIN_ENV)
    if dashboard or via_runtime_env:
        os.environ.update(_TRAIN_STATE)
    env_vars = {k: os.environ[k] for k in (*_TRAIN_ENV, *_TRAIN_STATE)} if via_runtime_env else {}
    common = dict(log_to_driver=verbose, configure_logging=verbose, runtime_env={"env_vars": env_vars})
    # Without configure_logging, ray.init empties the "ray" logger, and what it logs while starting
    # (the token-auth notice) falls through to Python's last-resort handler on sys.stderr: catch it
    # there for the log file, then give the "ray" logger that file for good.
    with open(logs / RAY_LOG, "a", encoding="utf-8") as log, \
            contextlib.nullcontext() if verbose else contextlib.redirect_stderr(log):
        if address:
            context = ray.init(address=address, **common)
        else:
            context = ray.init(num_cpus=os.cpu_count(), include_dashboard=dashboard, **common)
    if not verbose:
        _log_to_file(logs / RAY_LOG)
    if not address:
        _session.started_here = True
    _session.dashboard_url = context.dashboard_url or None
    session_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    link = logs / "ray-session"
    if link.is_symlink() and not link.exists():
        link.unlink()   # an earlier session's, whose temp dir is gone (a requeued SLURM job, a cleaned /tmp)
    if not link.exists() and session_logs.is_dir():
        link.symlink_to(session_logs, target_is_directory=True)
    quiet_data_context()


def quiet_data_context() -> None:
    """Create this process's Ray Data context now, quietly. Its first creation sets every dataclass
    field, deprecated ones included, and Ray 2.60 warns for each (use_push_based_shuffle,
    use_polars, ...) though nothing sets them; Ray Train and the extract stage create it later."""
    import ray.data

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray.data.context")
        ray.data.DataContext.get_current()


def train_env() -> dict[str, str]:
    """trixmed's settings for Ray Train's processes, read from their environment: a local Ray that
    `ensure_ray` starts inherits them, a SLURM job's nodes get them through `ray_node_env`, and so
    must any Ray started by hand for trixmed's training (the test session's)."""
    return dict(_TRAIN_ENV)


def ray_node_env() -> dict[str, str]:
    """What the Ray nodes of a trixmed SLURM job are started with (slurm/job.sh exports it before
    `ray start`; the dashboard's state tracking it sets itself), and the mark that they were."""
    return {**train_env(), NODES_HAVE_ENV: "1"}


def dashboard_url() -> str | None:
    """`http://host:port` of the Ray dashboard, when the connected Ray serves one."""
    url = _session.dashboard_url
    return url if url is None or url.startswith("http") else f"http://{url}"


def workers_log_dir(cfg: Config) -> Path | None:
    """Where training workers send their output; None when it should reach the console (`--verbose`)."""
    return None if _session.verbose else RunDir(cfg.run_dir).logs


def release_ray() -> None:
    if _session.started_here:
        import ray

        processes = _local_ray_processes()
        ray.shutdown()
        _end_stragglers(processes)
    _session.started_here = False
    _session.verbose = False
    _session.dashboard_url = None
    for handler in list(_RAY_LOGGER.handlers):
        if getattr(handler, "_trixmed", False):
            _RAY_LOGGER.removeHandler(handler)
            handler.close()


# how long a process of the local Ray may take to exit after `ray.shutdown()` returns
STRAGGLER_GRACE_S = 2.0


def _local_ray_processes() -> list[psutil.Process]:
    """The processes of the local Ray this command started: its raylet's descendants (workers,
    actors, agents)."""
    import ray
    from ray._private import ray_constants

    node = ray._private.worker._global_node
    raylets = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []) if node is not None else []
    processes = []
    for info in raylets:
        with contextlib.suppress(psutil.NoSuchProcess):
            processes += psutil.Process(info.process.pid).children(recursive=True)
    return processes


def _end_stragglers(processes: list[psutil.Process]) -> None:
    """Kill those of `processes` still running `STRAGGLER_GRACE_S` after Ray's shutdown. An actor
    that exits on its own (its last handle dropped: Ray Train's controller at the end of every
    phase) disconnects from the raylet first, so the raylet's shutdown no longer kills it; one
    that hangs after that in its interpreter's exit outlived the command (seen in CI: a
    `ray::TrainController` whose core worker had shut down, alive 36 minutes later).
    `is_running` compares start times, so a reused pid is never killed."""
    deadline = time.monotonic() + STRAGGLER_GRACE_S
    while (alive := [p for p in processes if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            name = process.name()
            process.kill()
            _RAY_LOGGER.warning("ended pid %d (%s): still running %.0f s after Ray's shutdown",
                                process.pid, name, STRAGGLER_GRACE_S)


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an exited process its new parent has yet to reap)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


_RAY_LOGGER = logging.getLogger("ray")


def quiet_library_logger(name: str) -> None:
    """Send a Ray library's own logger (Ray Data configures "ray.data" with a console handler when
    imported) to the run's log file instead of the console, unless the session is verbose."""
    ours = [h for h in _RAY_LOGGER.handlers if getattr(h, "_trixmed", False)]
    if _session.verbose or not ours:
        return
    logger = logging.getLogger(name)
    # console handlers are StreamHandlers; the library's own session log file stays
    keep = [h for h in logger.handlers if not isinstance(h, logging.StreamHandler) or isinstance(h, logging.FileHandler)]
    logger.handlers = [*keep, *ours]


def _log_to_file(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._trixmed = True   # ours to remove in release_ray
    _RAY_LOGGER.handlers = [handler]
    _RAY_LOGGER.propagate = False
    _RAY_LOGGER.setLevel(logging.INFO)
