"""What job.sh records about each attempt of a job, for requeueing without lost work.

    python slurm/attempt.py start LOG_DIR [trixmed arguments]
        at an attempt's start: clear the run directory's stop request, note the work saved so far
        in LOG_DIR/attempt.json, print the stop request's path (job.sh writes it on a signal)
    python slurm/attempt.py stopped LOG_DIR --max-stalled N
        after a signal has stopped trixmed: did this attempt save any work (a checkpoint, a finished
        stage)? Counts the attempts in a row that did not; exit 3 with one line once there are N
        of them, so that the job is not requeued forever without getting anywhere

A requeued job keeps its id and with it LOG_DIR, which is where the count lives.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RECORD = "attempt.json"
CANNOT_PROGRESS = 3   # exit status of `stopped` when the job should not be requeued again


def start(log_dir: Path, trixmed_args: list[str]) -> None:
    from launch import resolve_run_dir
    from trixmed.run_dir import RunDir

    root = resolve_run_dir(trixmed_args[0], trixmed_args[1:])   # the command (run|tune), then its arguments
    if root is None:
        return   # a config trixmed cannot read: `trixmed plan` says why and ends the job
    rd = RunDir(root)
    rd.stop_request.unlink(missing_ok=True)   # an earlier attempt's request is not this one's
    record = log_dir / RECORD
    stalled = json.loads(record.read_text())["stalled"] if record.is_file() else 0
    record.write_text(json.dumps({"run_dir": str(rd.root), "saved_work": rd.saved_work(), "stalled": stalled}))
    print(rd.stop_request)


def stopped(log_dir: Path, max_stalled: int) -> int:
    from trixmed.run_dir import RunDir

    if not (log_dir / RECORD).is_file():
        print("no record of this attempt's start (see above): requeueing without counting it")
        return 0
    record = json.loads((log_dir / RECORD).read_text())
    progressed = [list(w) for w in RunDir(record["run_dir"]).saved_work()] != record["saved_work"]
    record["stalled"] = 0 if progressed else record["stalled"] + 1
    (log_dir / RECORD).write_text(json.dumps(record))
    if record["stalled"] >= max_stalled:
        print(f"{record['stalled']} attempts in a row saved no work (no new checkpoint, no finished stage): "
              f"not requeueing again (TRIXMED_MAX_STALLED_ATTEMPTS={max_stalled}); give an attempt time for a step "
              f"and its checkpoint before the signal (a longer --time; for slow steps a larger TRIXMED_STOP_GRACE "
              f"and --signal=B:USR1@T), then submit the same command to resume")
        return CANNOT_PROGRESS
    print(f"this attempt saved {'new work' if progressed else 'no new work'} "
          f"({record['stalled']} of {max_stalled} attempts in a row without)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attempt.py")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("start")
    p.add_argument("log_dir", type=Path)
    p.add_argument("trixmed_args", nargs=argparse.REMAINDER)
    p = sub.add_parser("stopped")
    p.add_argument("log_dir", type=Path)
    p.add_argument("--max-stalled", type=int, required=True)
    args = parser.parse_args(argv)
    if args.action == "start":
        start(args.log_dir, args.trixmed_args)
        return 0
    return stopped(args.log_dir, args.max_stalled)


if __name__ == "__main__":
    sys.exit(main())
