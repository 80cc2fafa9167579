import subprocess
import sys
from pathlib import Path

import pytest

from trixmed.cli import COMMANDS, main


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "trixmed.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert f"    {name} " in out or f"    {name}\n" in out, name


def test_help_does_not_import_heavy_libraries():
    code = "import sys, trixmed.cli as c; c.build_parser(); print(any(m in sys.modules for m in ('torch', 'ray', 'deepspeed')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_overrides_are_accepted_anywhere_on_the_line(capsys, tmp_path):
    config = str(Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.yaml")
    for argv in (["run", "--config", config, "--dry-run", f"run_dir={tmp_path}", "model.moe.top_n=1"],
                 ["run", f"run_dir={tmp_path}", "--config", config, "model.moe.top_n=1", "--dry-run"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert f"plan for {tmp_path}" in out and "top-1" in out


def test_stray_words_and_flags_are_still_refused(capsys):
    assert main(["run", "--dry-run", "notanoverride"]) == 2
    assert capsys.readouterr().err == "trixmed run: error: override: 'notanoverride' is not of the form key=value\n"
    with pytest.raises(SystemExit) as info:
        main(["run", "--dry-run", "--bogus"])
    assert info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
