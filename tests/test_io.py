from pathlib import Path

import pytest

from trixmed.io import atomic_dir, atomic_file, read_json, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path: Path):
    target = tmp_path / "stage"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"

    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]  # no temp dir left behind


def test_atomic_file_leaves_nothing_on_failure(tmp_path: Path):
    target = tmp_path / "x.json"
    with pytest.raises(ValueError):
        with atomic_file(target) as fh:
            fh.write("{")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    assert read_json(target) == {"a": 1}


def test_an_exclusive_write_never_replaces_a_file(tmp_path: Path):
    target = tmp_path / "lock.json"
    write_json(target, {"owner": 1}, exclusive=True)
    with pytest.raises(FileExistsError):
        write_json(target, {"owner": 2}, exclusive=True)
    assert read_json(target) == {"owner": 1}
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind


def test_artifacts_get_umask_permissions_not_private_temp_ones(tmp_path: Path):
    import os

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {})
        with atomic_dir(tmp_path / "stage") as tmp:
            (tmp / "x").write_text("")
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "stage").stat().st_mode & 0o777 == 0o755
