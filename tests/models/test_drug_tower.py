"""The drug tower head (model.head=drug_tower) on both backbones: shapes, masking, loss, phases, saving."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trixmed.config import load_config
from trixmed.data.drugs import drug_table
from trixmed.errors import TrixmedError
from trixmed.models import build_collator, build_model, load_model, save_model
from trixmed.models.drug_tower import DrugTower
from trixmed.models.model import multilabel_margin
from trixmed.testing import make_samples, save_tiny_llama, tiny_config

TOWER = ("model.head=drug_tower", "model.drug_tower.dim=8", "model.drug_tower.fingerprint_bits=64")
# M0 has two molecules, M1 only an unparsable SMILES (an unclosed ring), the rest none
SMILES = {"M0": ["CC(=O)NC1=CC=C(O)C=C1", "CC(=O)OC1=CC=CC=C1C(O)=O"], "M1": ["C1CC"]}


@pytest.fixture
def drugs(vocab):
    return drug_table(vocab.med, SMILES)


def _trained(model):
    """LoRA B is zero at init: a "trained" adapter makes the phases' models differ."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    return model.eval()


def test_codes_tower_shapes_gradients_and_masking(vocab, titles, drugs):
    cfg = tiny_config(*TOWER)
    torch.manual_seed(0)
    model = build_model(cfg, vocab, phase="warmup", titles=titles, drugs=drugs)
    assert isinstance(model.head, DrugTower)
    batch = build_collator(cfg, vocab)(make_samples(vocab, 5))
    out = model(batch)
    assert out.logits.shape == (5, len(vocab.med))
    loss, _ = model.loss(batch, out, cfg.warmup)
    loss.backward()
    # the drug side trains, and so do the title words it shares with the diagnoses and procedures
    for name in ("head.patient.weight", "head.fingerprint.weight", "head.drug.0.weight", "head.bias", "backbone.word_emb.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    head = model.head
    assert head.missing.tolist() == [0.0] + [1.0] * (len(vocab.med) - 1)
    assert head.fingerprints[0].sum() > 0 and not head.fingerprints[1:].any()
    molecular = head.molecular()
    assert molecular[0].abs().sum() > 0 and not molecular[1:].any()
    assert head.titles.numel() == 0   # codes: read from the backbone at every forward


def test_a_tower_needs_the_drug_table(vocab, titles):
    with pytest.raises(ValueError, match="needs the dataset's drug table"):
        build_model(tiny_config(*TOWER), vocab, phase="warmup", titles=titles)
    with pytest.raises(ValueError, match="not the medication vocabulary"):
        build_model(tiny_config(*TOWER), vocab, phase="warmup", titles=titles, drugs=drug_table(vocab.med[::-1]))


def test_experts_start_as_the_warmup_and_a_saved_tower_loads_back(vocab, titles, drugs, tmp_path):
    cfg = tiny_config(*TOWER, "model.moe.top_n=4")   # every expert, weights summing to 1: the warm-up's LoRA
    torch.manual_seed(0)
    warm = _trained(build_model(cfg, vocab, phase="warmup", titles=titles, drugs=drugs))
    exp = build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles, drugs=drugs).eval()
    exp.init_experts_from_warmup(warm.state_dict())
    batch = build_collator(cfg, vocab)(make_samples(vocab, 6, seed=1), [i % 3 for i in range(6)])
    torch.testing.assert_close(exp(batch).logits, warm(batch).logits, atol=1e-6, rtol=1e-5)
    save_model(exp, tmp_path / "exp")
    again = load_model(tmp_path / "exp", cfg, vocab).eval()
    torch.testing.assert_close(again.head.fingerprints, exp.head.fingerprints)
    torch.testing.assert_close(again(batch).logits, exp(batch).logits)


def test_margin_loss_is_mixed_into_the_medication_loss(vocab, titles, drugs):
    cfg = tiny_config(*TOWER, "model.margin_weight=0.05")
    model = build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles, drugs=drugs)
    batch = build_collator(cfg, vocab)(make_samples(vocab, 4), [0, 1, 2, 0])
    out = model(batch)
    loss, parts = model.loss(batch, out, cfg.experts)
    assert loss.item() == pytest.approx(0.95 * parts["bce"] + 0.05 * parts["margin"] + 0.01 * parts["aux"], rel=1e-5)
    # torch's margin loss against its definition: Σ over (given j, other i) of max(0, 1 - (p_j - p_i)) / C
    p, y = torch.sigmoid(out.logits), batch["labels"].bool()
    expected = torch.stack([(1 - (p[b, y[b]][:, None] - p[b, ~y[b]][None, :])).clamp_min(0).sum() / y.shape[1]
                            for b in range(len(y))]).mean()
    torch.testing.assert_close(multilabel_margin(out.logits, batch["labels"]), expected)
    assert F.binary_cross_entropy_with_logits(out.logits, batch["labels"]).item() == pytest.approx(parts["bce"])


def test_hf_tower_embeds_the_titles_with_the_frozen_lm(vocab, titles, drugs, tmp_path):
    llama = save_tiny_llama(tmp_path / "llama", ["Instruction: predict the medications", "med w1 w2 common"])
    cfg = tiny_config("model.backbone=hf", f"model.hf.path={llama}", "text.token_budget=200", *TOWER)
    torch.manual_seed(0)
    model = _trained(build_model(cfg, vocab, phase="warmup", titles=titles, drugs=drugs))
    assert model.head.titles.shape == (len(vocab.med), 32)
    # filled from each drug's own title text ("med w0 common", "med w1 common", ...)
    assert not torch.equal(model.head.titles[0], model.head.titles[1])
    from trixmed.models.checkpoint import load_tokenizer

    batch = build_collator(cfg, vocab, tokenizer=load_tokenizer(cfg.model.hf), titles=titles)(make_samples(vocab, 3))
    out = model(batch)
    assert out.logits.shape == (3, len(vocab.med))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.patient.weight", "head.fingerprint.weight", "head.bias"} <= trainable
    save_model(model, tmp_path / "warm")
    again = load_model(tmp_path / "warm", cfg, vocab).eval()
    torch.testing.assert_close(again.head.titles, model.head.titles)
    torch.testing.assert_close(again(batch).logits, out.logits)


def test_config_errors_name_the_key():
    with pytest.raises(TrixmedError) as info:
        load_config(None, ["model.head=drug_tower", "model.codes.title_words=false"])
    assert str(info.value) == ("<defaults>: model.head: drug_tower on the codes backbone reads each drug's title through "
                               "the backbone's title-word embeddings: set model.codes.title_words true")
    with pytest.raises(TrixmedError) as info:
        load_config(None, ["model.drug_tower.fingerprint_bits=0"])
    assert str(info.value) == "<defaults>: model.drug_tower.fingerprint_bits: must be >= 1, got 0"
    with pytest.raises(TrixmedError) as info:
        load_config(None, ["model.head=linear"])
    assert str(info.value) == "<defaults>: model.head: must be one of free, drug_tower, got 'linear'"
    with pytest.raises(TrixmedError) as info:
        load_config(None, ["model.margin_weight=1.5"])
    assert str(info.value) == "<defaults>: model.margin_weight: must be in [0, 1], got 1.5"
