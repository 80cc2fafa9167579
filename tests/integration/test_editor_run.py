"""`trixmed run` with FLAME's list-wise editor on the bundled demo: the edit stage after evaluate,
its artefacts, its skip on a second run, and `explain` showing the edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from demo_cli import demo_args, run_demo

REPO = Path(__file__).resolve().parents[2]


def test_the_edit_stage_is_off_by_default_and_says_which_key_turns_it_on(tmp_path):
    from trixmed.config import load_config
    from trixmed.errors import TrixmedError
    from trixmed.pipeline.stages import STAGES, run_stage

    cfg = load_config(REPO / "configs" / "demo_cpu.yaml", [f"run_dir={tmp_path}"])
    assert [n for n, s in STAGES.items() if s.enabled(cfg)] == ["prepare", "warmup", "extract", "stratify", "experts", "evaluate"]
    with pytest.raises(TrixmedError) as err:
        run_stage(cfg, "edit")
    assert str(err.value) == "editor.enabled: is false: stage edit has nothing to do (set editor.enabled=true)"
    on = load_config(REPO / "configs" / "demo_cpu.yaml", [f"run_dir={tmp_path}", "editor.enabled=true"])
    assert list(STAGES)[-1] == "edit" and STAGES["edit"].enabled(on)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_runs_the_editor_and_explain_shows_its_edits(tmp_path, capsys):
    from trixmed.cli import main

    run_dir = tmp_path / "run"
    editor_keys = ("editor.enabled=true", "editor.sft_epochs=2", "editor.grpo_epochs=2", "editor.group_size=4")
    proc = run_demo(run_dir, *editor_keys, timeout=800)
    lines = proc.stdout.splitlines()
    assert f"[edit] running → {run_dir / 'editor'}" in lines
    assert any(line.startswith("[edit] editor on ") and "2 SFT + 2 GRPO epochs" in line for line in lines)
    assert any(line.startswith("[edit] kept ") and "edits per patient" in line for line in lines)
    assert any(line.startswith("FLAME editor over these sets, test: ") for line in lines)

    editor = run_dir / "editor"
    for name in ("model/editor.safetensors", "model/editor_model.json", "editor.json", "metrics.json", "metrics.md",
                 "predictions_val.jsonl", "predictions_test.jsonl"):
        assert (editor / name).is_file(), name
    metrics = json.loads((editor / "metrics.json").read_text())
    point = json.loads((run_dir / "eval" / "metrics.json").read_text())
    block = metrics["editor"]
    assert block["pointwise"]["jaccard"]["mean"] == point["metrics"]["jaccard"]["mean"]
    assert block["ddi_alpha"] == point["ddi_alpha"] and block["ddi_alpha_from"].startswith("eval")
    assert block["adds"] + block["removes"] == pytest.approx(block["edits_per_visit"] * metrics["n_visits"])
    assert 0 <= metrics["metrics"]["jaccard"]["mean"] <= 1 and metrics["n_visits"] == point["n_visits"]
    history = json.loads((editor / "editor.json").read_text())["history"]
    assert [h["phase"] for h in history] == ["sft", "sft", "grpo", "grpo"]
    assert block["kept"]["val_jaccard"] == max(h["val_jaccard"] for h in history)
    state = json.loads((run_dir / "run.json").read_text())["stages"]
    assert "edit" in state and state["edit"]["summary"]["edits_per_patient"] == round(block["edits_per_patient"], 4)

    # the same config again: the stage is current and skipped
    assert main(["edit", *demo_args(run_dir, *editor_keys)]) == 0
    assert f"[edit] up to date, skipped ({editor})" in capsys.readouterr().out

    patient = tmp_path / "patient.json"
    patient.write_text(json.dumps({"visits": [{"diag": ["4019", "42731"], "proc": [], "med": ["A02B"]},
                                              {"diag": ["4280", "5849"], "proc": []}]}))
    assert main(["explain", "--patient", str(patient), "--run", str(run_dir), "--format", "json"]) == 0
    e = json.loads(capsys.readouterr().out)
    ed = e["editor"]
    current = [r["code"] for r in e["recommendations"]]
    for x in ed["edits"]:   # each edit is valid where it was made and names its reasons
        assert (x["code"] not in current) if x["action"] == "add" else (x["code"] in current)
        assert set(x["interacts_with"]) <= set(current) and 0 <= x["probability"] <= 1
        current = [*current, x["code"]] if x["action"] == "add" else [c for c in current if c != x["code"]]
    assert ed["edited_set"] == current
    assert main(["explain", "--patient", str(patient), "--run", str(run_dir)]) == 0
    assert "List-wise editor (FLAME): " in capsys.readouterr().out


def test_explain_text_names_each_edit_with_its_reasons():
    from trixmed.report.explain import _editor_text

    text = _editor_text({"edits": [
        {"action": "add", "code": "N02B", "name": "other analgesics", "probability": 0.27, "interacts_with": []},
        {"action": "remove", "code": "B01A", "name": "antithrombotic agents", "probability": 0.33,
         "interacts_with": ["N02B", "M01A"]}], "edited_set": ["A02B", "N02B"]}, 0.3)
    assert text.splitlines() == [
        "List-wise editor (FLAME): 2 edits to the recommended set, in order (prob.: the point-wise model's probability, "
        "threshold 0.30):",
        "  + adds N02B other analgesics (prob. 0.27; no interacting drug in the set)",
        "  − removes B01A antithrombotic agents (prob. 0.33; interacts with N02B, M01A in the set)",
        "  Edited set: 2 medications: A02B, N02B.",
    ]
    assert _editor_text({"edits": [], "edited_set": ["A02B"]}, 0.3) == \
        "List-wise editor (FLAME): no edit; it keeps the recommended set as it is."


def test_editor_keys_are_in_the_edit_stage_hash_only():
    from trixmed.config import load_config
    from trixmed.pipeline.stages import STAGES, config_hash

    base = load_config(None, ["editor.enabled=true"])
    other = load_config(None, ["editor.enabled=true", "editor.refusal_weight=0.5"])
    assert config_hash(base, STAGES["edit"].keys(base)) != config_hash(other, STAGES["edit"].keys(other))
    for name in ("warmup", "experts", "evaluate"):
        assert config_hash(base, STAGES[name].keys(base)) == config_hash(other, STAGES[name].keys(other))
