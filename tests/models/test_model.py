import dataclasses

import pytest
import torch

from trixmed.testing import make_samples, tiny_config
from trixmed.data.dataset import Sample, Visit
from trixmed.errors import TrixmedError
from trixmed.models import build_collator, build_model, load_model, save_model


def _warm(cfg, vocab, titles, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg, vocab, phase="warmup", titles=titles)
    with torch.no_grad():   # a "trained" warm-up adapter: LoRA B is zero at init
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(std=0.1)
    return model.eval()


def test_collator_shapes_padding_and_current_meds(vocab):
    cfg = tiny_config("model.codes.max_visits=3")
    samples = make_samples(vocab, 6)
    batch = build_collator(cfg, vocab)(samples, [0, 1, 2, 0, 1, 2])
    b, v = len(samples), min(3, max(len(s.visits) for s in samples))
    assert batch["diag"].shape[:2] == (b, v) and batch["visit_mask"].shape == (b, v)
    assert batch["cluster"].tolist() == [0, 1, 2, 0, 1, 2]
    for i, s in enumerate(samples):
        n = min(3, len(s.visits))
        assert batch["visit_mask"][i].tolist() == [True] * n + [False] * (v - n)
        assert batch["visit_pos"][i, :n].tolist() == list(range(n - 1, -1, -1))
        # the current visit's medication row is all padding: it is the target
        assert (batch["med"][i, n - 1] == len(vocab.med)).all()
        assert batch["labels"][i].sum().item() == len(s.target)


def test_unknown_code_is_a_trixmed_error(vocab):
    bad = Sample("x:0", "x", "train", (Visit(("NOPE",), (), ("M1",)),))
    with pytest.raises(TrixmedError, match="x:0.*NOPE"):
        build_collator(tiny_config(), vocab)([bad])


def test_padding_does_not_change_outputs(vocab, titles):
    cfg = tiny_config()
    model = _warm(cfg, vocab, titles)
    samples = make_samples(vocab, 8, seed=3)
    collate = build_collator(cfg, vocab)
    short = min(samples, key=lambda s: len(s.visits))
    long = max(samples, key=lambda s: len(s.visits))
    assert len(long.visits) > len(short.visits)
    alone = model(collate([short])).logits
    padded = model(collate([short, long])).logits[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_warmup_and_experts_parameters(vocab, titles):
    cfg = tiny_config()
    warm = build_model(cfg, vocab, phase="warmup", titles=titles)
    assert all(p.requires_grad for p in warm.parameters())
    exp = build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles)
    trainable = {n for n, p in exp.named_parameters() if p.requires_grad}
    assert trainable and all(".experts_" in n or n.startswith(("router.", "head.")) for n in trainable)
    assert any(n.startswith("router.W_e") for n in trainable)
    with pytest.raises(ValueError, match="num_clusters"):
        build_model(cfg, vocab, phase="experts", titles=titles)


@pytest.mark.parametrize("overrides", [["model.moe.renormalize=true"], ["model.moe.top_n=4"]])
def test_experts_from_warmup_reproduce_the_warmup_model(vocab, titles, overrides):
    cfg = tiny_config(*overrides)
    warm = _warm(cfg, vocab, titles)
    exp = build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles).eval()
    exp.init_experts_from_warmup(warm.trainable_state_dict())
    samples = make_samples(vocab, 9, seed=1)
    batch = build_collator(cfg, vocab)(samples, [i % 3 for i in range(9)])
    torch.testing.assert_close(exp(batch).logits, warm(batch).logits, atol=1e-6, rtol=1e-5)


def test_experts_default_scaling_differs_from_warmup(vocab, titles):
    cfg = tiny_config()   # top-2 of 4, no renormalisation: the LoRA delta is scaled by Σ Γ < 1
    warm = _warm(cfg, vocab, titles)
    exp = build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles).eval()
    exp.init_experts_from_warmup(warm.trainable_state_dict())
    batch = build_collator(cfg, vocab)(make_samples(vocab, 4), [0, 1, 2, 0])
    assert not torch.allclose(exp(batch).logits, warm(batch).logits, atol=1e-5)


@pytest.mark.parametrize("router", ["triage", "learned", "none"])
def test_experts_forward_loss_backward(vocab, titles, router):
    cfg = tiny_config(f"model.moe.router={router}", "model.moe.aux_weight=0.5")
    model = build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles)
    model.init_experts_from_warmup(_warm(cfg, vocab, titles).trainable_state_dict())
    batch = build_collator(cfg, vocab)(make_samples(vocab, 6), [0, 1, 2, 2, 1, 0] if router == "triage" else None)
    out = model(batch)
    assert out.logits.shape == (6, len(vocab.med)) and out.pooled.shape == (6, 16)
    loss, parts = model.loss(batch, out, cfg.experts)
    assert parts["loss"] == pytest.approx(parts["bce"] + 0.5 * parts["aux"], rel=1e-5)
    loss.backward()
    if router == "none":
        assert out.expert_counts is None and out.gates is None and out.aux_loss.item() == 0
    else:
        assert out.expert_counts.sum().item() == 6 * 2 and out.gates.shape == (6, 4)
        grads = [p.grad for n, p in model.named_parameters() if n.startswith("router.")]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_warmup_loss_weights(vocab, titles):
    cfg = tiny_config("warmup.med_weight=2.0")
    model = build_model(cfg, vocab, phase="warmup", titles=titles)
    batch = build_collator(cfg, vocab)(make_samples(vocab, 3))
    loss, parts = model.loss(batch, model(batch), cfg.warmup)
    assert loss.item() == pytest.approx(2.0 * parts["bce"])


def test_title_words_enrich_code_embeddings(vocab, titles):
    model = build_model(tiny_config(), vocab, phase="warmup", titles=titles)
    bb = model.backbone
    table = bb._table("diag")
    # D9 has no title words: its row is the plain code embedding; D1 adds the mean of its words
    torch.testing.assert_close(table[9], bb.code_emb["diag"].weight[9])
    assert not torch.allclose(table[1], bb.code_emb["diag"].weight[1])
    plain = build_model(tiny_config("model.codes.title_words=false"), vocab, phase="warmup")
    assert plain.backbone.word_emb is None


@pytest.mark.parametrize("phase", ["warmup", "experts"])
def test_save_load_round_trip(tmp_path, vocab, titles, phase):
    cfg = tiny_config()
    model = _warm(cfg, vocab, titles) if phase == "warmup" else build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles).eval()
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    again = load_model(tmp_path / "m", cfg, vocab).eval()
    batch = build_collator(cfg, vocab)(make_samples(vocab, 5), [0, 1, 2, 0, 1])
    torch.testing.assert_close(again(batch).logits, model(batch).logits)
    other = dataclasses.replace(vocab, med=vocab.med + ["EXTRA"], _index={})
    with pytest.raises(TrixmedError, match="med vocabulary"):
        load_model(tmp_path / "m", cfg, other)


def test_every_code_table_gets_a_gradient_without_history_meds(vocab, titles):
    # One-visit samples have no history medication: the med table must still be in the graph,
    # or ranks of a ZeRO-2 group disagree on which gradients they reduce.
    cfg = tiny_config()
    model = build_model(cfg, vocab, phase="warmup", titles=titles)
    samples = [Sample(f"p{i}:0", f"p{i}", "train", (Visit(("D1",), ("P1",), ("M1", "M2")),)) for i in range(3)]
    batch = build_collator(cfg, vocab)(samples)
    assert batch["med"].shape[-1] == 0
    out = model(batch)
    model.loss(batch, out, cfg.warmup)[0].backward()
    assert all(model.backbone.code_emb[k].weight.grad is not None for k in ("diag", "proc", "med"))


def test_direct_inputs_are_exact_multi_hots_of_the_right_visit(vocab):
    cfg = tiny_config("model.direct=[prev_med,hist_med,diag,proc,hist_diag]")
    first = Visit((vocab.diag[0],), (), (vocab.med[1], vocab.med[2]))
    second = Visit((vocab.diag[1],), (), (vocab.med[3],))
    current = Visit((vocab.diag[3], vocab.diag[4]), (vocab.proc[1],), (vocab.med[0],))
    samples = [Sample("a:1", "a", "train", (first, current)), Sample("b:0", "b", "train", (current,)),
               Sample("c:2", "c", "train", (first, second, current))]
    batch = build_collator(cfg, vocab)(samples)
    assert batch["multi_hot_prev_med"][0].nonzero().flatten().tolist() == [1, 2]
    assert batch["multi_hot_prev_med"][2].nonzero().flatten().tolist() == [3]
    assert batch["multi_hot_hist_med"][2].nonzero().flatten().tolist() == [1, 2, 3]
    assert batch["multi_hot_hist_diag"][2].nonzero().flatten().tolist() == [0, 1]
    assert batch["multi_hot_hist_diag"][1].sum() == 0
    assert batch["multi_hot_prev_med"][1].sum() == 0          # no visit before: no repeat signal
    assert batch["multi_hot_diag"][0].nonzero().flatten().tolist() == [3, 4]
    assert batch["multi_hot_proc"][1].nonzero().flatten().tolist() == [1]
    assert "multi_hot_diag" not in build_collator(tiny_config(), vocab)(samples)


def test_direct_paths_start_at_zero_and_train(vocab, titles):
    plain_cfg, cfg = tiny_config(), tiny_config("model.direct=[prev_med,diag]")
    torch.manual_seed(0)
    plain = build_model(plain_cfg, vocab, phase="warmup", titles=titles).eval()
    torch.manual_seed(0)
    model = build_model(cfg, vocab, phase="warmup", titles=titles).eval()
    samples = make_samples(vocab, 6, seed=2)
    batch = build_collator(cfg, vocab)(samples)
    # zero-initialised: the same function as without the paths, until trained
    torch.testing.assert_close(model(batch).logits, plain(build_collator(plain_cfg, vocab)(samples)).logits)
    model.train()
    model.loss(batch, model(batch), cfg.warmup)[0].backward()
    assert model.direct["prev_med"].weight.grad.abs().sum() > 0 and model.direct["diag"].weight.shape == (len(vocab.med), len(vocab.diag))
    exp = build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles)
    assert exp.direct["diag"].weight.requires_grad and "direct.diag.weight" in exp.adapter_state_dict()


@pytest.mark.parametrize("pool", ["last", "mean+last"])
def test_pooling_of_the_current_visit(vocab, titles, pool):
    cfg = tiny_config(f"model.pool={pool}")
    model = _warm(cfg, vocab, titles)
    samples = make_samples(vocab, 8, seed=3)
    batch = build_collator(cfg, vocab)(samples)
    hidden, mask, _ = model.backbone(batch)
    out = model(batch)
    last = torch.stack([hidden[i, int(mask[i].sum()) - 1] for i in range(len(samples))])
    expected = last if pool == "last" else torch.cat([hidden.masked_fill(~mask[..., None], 0).sum(1) / mask.sum(1, keepdim=True), last], -1)
    torch.testing.assert_close(out.pooled, expected, atol=1e-5, rtol=1e-5)
    assert model.head.in_features == expected.shape[1]
    short = min(samples, key=lambda s: len(s.visits))   # padding after the current visit changes nothing
    torch.testing.assert_close(model(build_collator(cfg, vocab)([short])).logits,
                               model(build_collator(cfg, vocab)([short, max(samples, key=lambda s: len(s.visits))])).logits[:1],
                               atol=1e-5, rtol=1e-5)


def test_experts_may_train_the_embeddings(vocab, titles):
    from trixmed.models.model import set_backbone_trainable

    cfg = tiny_config("experts.train_backbone=embeddings")
    exp = build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles)
    set_backbone_trainable(exp, cfg.experts.train_backbone)
    trainable = {n for n, p in exp.named_parameters() if p.requires_grad}
    assert {"backbone.code_emb.diag.weight", "backbone.word_emb.weight", "backbone.visit_proj.weight",
            "backbone.pos_emb.weight"} <= trainable
    # the encoder stays frozen: only its LoRA experts train
    assert not any(n.startswith("backbone.layers.") and ".experts_" not in n for n in trainable)
    with pytest.raises(TrixmedError) as exc:
        tiny_config("experts.train_backbone=embeddings", "model.backbone=hf", "model.hf.path=/x")
    assert str(exc.value) == ("<defaults>: experts.train_backbone: 'embeddings' needs model.backbone codes "
                              "(the hf backbone's base stays frozen; its experts are LoRA)")
