import subprocess
import sys

from trixmed.cli import COMMANDS, main


def test_help_lists_every_subcommand_and_marks_unbuilt_ones():
    out = subprocess.run([sys.executable, "-m", "trixmed.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name, (module, _) in COMMANDS.items():
        assert name in out
        if module is None:
            assert "[not built yet]" in out


def test_unbuilt_stage_says_so(capsys, monkeypatch):
    monkeypatch.setitem(COMMANDS, "someday", (None, "a stage for a later issue"))
    assert main(["someday"]) == 1
    assert "trixmed someday: not built yet" in capsys.readouterr().err


def test_help_does_not_import_heavy_libraries():
    code = "import sys, trixmed.cli as c; c.build_parser(); print(any(m in sys.modules for m in ('torch', 'ray', 'deepspeed')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
