"""A worker group's session keeps its checkpoints itself (train/session.py): every rank's share of a
report lands in one checkpoint, only the latest is kept, and what a killed run left half-written
is never resumed from. Two gloo ranks (torch.multiprocessing), no Ray."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch.multiprocessing as mp

from trixmed.run_dir import CHECKPOINT_STATE

WORLD = 2


def _report(session, tmp: Path, rank: int, epoch: int) -> None:
    """A rank's share of a checkpoint, laid out as the trainer's: DeepSpeed's tag directory with one
    file per rank, and from rank 0 the trainer state."""
    share = tmp / f"share-{rank}-{epoch}"
    (share / "engine").mkdir(parents=True)
    (share / "engine" / f"rank{rank}.pt").write_text(f"{rank} {epoch}")
    if rank == 0:
        (share / CHECKPOINT_STATE).write_text(json.dumps({"epoch": epoch}))
    session.report({"epoch": epoch}, str(share))


def _ranks(rank: int, port: int, storage: str, tmp: str) -> None:
    import torch.distributed as dist

    from trixmed.train.session import GroupSession

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    storage, tmp = Path(storage), Path(tmp)
    session = GroupSession(rank, WORLD, storage)
    assert session.checkpoint() is None
    for epoch in (1, 2, 3):
        _report(session, tmp, rank, epoch)
    dist.barrier()
    assert sorted(p.name for p in storage.iterdir()) == ["checkpoint-3"]
    dist.barrier()
    if rank == 0:   # a run killed while staging its next checkpoint, before removing an older one
        (storage / ".checkpoint-4.tmp" / "engine").mkdir(parents=True)
        (storage / ".checkpoint-4.tmp" / "engine" / "stale.pt").write_text("half")
        (storage / "checkpoint-2").mkdir()
    dist.barrier()

    again = GroupSession(rank, WORLD, storage)
    with again.checkpoint().as_directory() as d:
        assert Path(d) == storage / "checkpoint-3"
        assert json.loads((Path(d) / CHECKPOINT_STATE).read_text()) == {"epoch": 3}
        assert sorted(p.name for p in (Path(d) / "engine").iterdir()) == ["rank0.pt", "rank1.pt"]
    assert sorted(p.name for p in storage.iterdir()) == ["checkpoint-3"]
    dist.barrier()
    _report(again, tmp, rank, 4)
    dist.barrier()
    assert sorted(p.name for p in storage.iterdir()) == ["checkpoint-4"]
    assert sorted(p.name for p in (storage / "checkpoint-4" / "engine").iterdir()) == ["rank0.pt", "rank1.pt"]
    assert again.reported == [{"epoch": 4}]
    dist.destroy_process_group()


def test_a_group_session_keeps_every_ranks_share_of_the_latest_checkpoint_only(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ranks, args=(port, str(tmp_path / "storage"), str(tmp_path)), nprocs=WORLD, join=True)


def test_both_ways_to_train_a_phase_take_the_fit_protocols_arguments():
    """A stage calls whichever `Fit` it was given with the same arguments: Ray Train's run and a
    sweep's leased worker group must both accept exactly those, by the same names and defaults."""
    import inspect

    from trixmed.train.ray_fit import fit
    from trixmed.train.session import Fit
    from trixmed.train.worker_group import leased_fit

    def shape(f) -> list[tuple[str, str, object]]:
        return [(p.name, p.kind.name, p.default) for p in inspect.signature(f).parameters.values() if p.name != "self"]

    expected = shape(Fit.__call__)
    assert [name for name, _, _ in expected] == ["cfg", "phase", "out_dir", "run_name", "console", "report_to_tune"]
    assert shape(fit) == expected
    assert shape(leased_fit("trixmed-leases-unused")) == expected
