"""LAMO's drug-group adapters (model.drug_groups): groupings, rank blocks, parameters, phases, saving."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

from trixmed.cluster.drug_groups import atc_groups, coprescription_groups, dataset_drug_groups, groups_line
from trixmed.config import load_config
from trixmed.data.dataset import Vocab
from trixmed.errors import TrixmedError
from trixmed.models import build_collator, build_model, load_model, save_model
from trixmed.models.lora import LoRALinear, MoELoRALinear
from trixmed.models.model import saved_drug_groups
from trixmed.testing import make_samples, save_tiny_llama, tiny_config

RANK4 = ("model.lora.rank=4",)
GROUPS = (*RANK4, "model.drug_groups.by=atc", "model.drug_groups.count=2")
SPLIT = [0, 1, 0, 1, 1, 0, 0, 1, 1, 0]   # group of each of make_vocab's 10 drugs


def _trained(model):
    """LoRA B is zero at init: a "trained" adapter makes every rank block matter."""
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "experts_B" in n:
                p.normal_(std=0.5)
    return model.eval()


def _blocks(model, block: slice):
    """(tensor, index) of rank block `block` in every adapter of the model (own layers and peft's)."""
    out = []
    for m in model.modules():
        if isinstance(m, LoRALinear):
            out += [(m.lora_A, (block,)), (m.lora_B, (slice(None), block))]
        elif isinstance(m, MoELoRALinear):
            out += [(m.experts_A, (slice(None), block)), (m.experts_B, (slice(None), block))]
        elif hasattr(m, "lora_A") and isinstance(m.lora_A, torch.nn.ModuleDict):
            out += [(m.lora_A["default"].weight, (block,)), (m.lora_B["default"].weight, (slice(None), block))]
    assert out
    return out


def _batch(cfg, vocab, n=6, tokenizer=None, titles=None):
    return build_collator(cfg, vocab, tokenizer=tokenizer, titles=titles)(make_samples(vocab, n, seed=2), [i % 3 for i in range(n)])


@pytest.mark.parametrize("phase,router", [("warmup", "triage"), ("experts", "triage"), ("experts", "learned"), ("experts", "none")])
def test_group_adapters_have_exactly_the_parameters_of_one_shared_lora(vocab, titles, phase, router):
    shapes = {}
    for groups in ((), GROUPS):
        cfg = tiny_config(*RANK4, f"model.moe.router={router}", *groups)
        model = build_model(cfg, vocab, phase=phase, num_clusters=3, titles=titles, drug_groups=SPLIT if groups else None)
        shapes[groups] = {n: p.shape for n, p in model.named_parameters()}
    assert shapes[()] == shapes[GROUPS]


def test_by_none_is_todays_model_and_one_group_gives_the_same_logits(vocab, titles):
    torch.manual_seed(0)
    plain = _trained(build_model(tiny_config(*RANK4), vocab, phase="experts", num_clusters=3, titles=titles))
    assert "drug_group" not in plain.state_dict()
    batch = _batch(tiny_config(*RANK4), vocab)
    logits = plain(batch).logits
    assert all(m.rank_mask is None for m in plain.modules() if isinstance(m, LoRALinear))
    # one group: the grouped path (repeated batch, rank mask of ones, per-drug gather) reduces to
    # today's forward bit for bit
    one = tiny_config(*RANK4, "model.drug_groups.by=atc", "model.drug_groups.count=1")
    grouped = build_model(one, vocab, phase="experts", num_clusters=3, titles=titles).eval()
    grouped.load_state_dict({**plain.state_dict(), "drug_group": torch.zeros(len(vocab.med), dtype=torch.long)})
    assert torch.equal(grouped(batch).logits, logits)


def _check_blocks(model, batch, groups=SPLIT):
    """Group g's logits depend on rank block g only: perturbing block h leaves them unchanged,
    and their gradient never reaches block h."""
    group = torch.tensor(groups)
    before = model(batch).logits.detach()
    for g, h in ((0, 1), (1, 0)):
        own, other = group == g, group == h
        with torch.no_grad():
            saved = [(t, idx, t[idx].clone()) for t, idx in _blocks(model, slice(2 * h, 2 * h + 2))]
            for t, idx, _ in saved:
                t[idx] += torch.randn_like(t[idx])
        after = model(batch).logits
        assert torch.equal(after[:, own].detach(), before[:, own])
        assert not torch.allclose(after[:, other].detach(), before[:, other])
        model.zero_grad()
        after[:, own].sum().backward()
        for t, idx, _ in saved:
            assert not t.grad[idx].any()
        with torch.no_grad():
            for t, idx, value in saved:
                t[idx] = value


@pytest.mark.parametrize("phase,router", [("warmup", "triage"), ("experts", "triage"), ("experts", "none")])
def test_codes_group_logits_depend_only_on_their_block(vocab, titles, phase, router):
    cfg = tiny_config(*GROUPS, f"model.moe.router={router}")
    torch.manual_seed(0)
    model = _trained(build_model(cfg, vocab, phase=phase, num_clusters=3, titles=titles, drug_groups=SPLIT))
    if phase == "experts":
        model.requires_grad_(True)
    _check_blocks(model, _batch(cfg, vocab))


def test_hf_group_logits_depend_only_on_their_block_and_save_and_load(vocab, titles, tmp_path):
    from trixmed.models.checkpoint import load_tokenizer

    llama = save_tiny_llama(tmp_path / "llama", ["Instruction: predict the medications", "med w1 w2 common"])
    cfg = tiny_config("model.backbone=hf", f"model.hf.path={llama}", "text.token_budget=200", *GROUPS)
    torch.manual_seed(0)
    warm = _trained(build_model(cfg, vocab, phase="warmup", titles=titles, drug_groups=SPLIT))
    batch = _batch(cfg, vocab, 4, tokenizer=load_tokenizer(cfg.model.hf), titles=titles)
    _check_blocks(warm, batch)   # peft's LoRA layers, masked through their hooks
    save_model(warm, tmp_path / "warm")
    assert saved_drug_groups(tmp_path / "warm") == SPLIT
    again = load_model(tmp_path / "warm", cfg, vocab).eval()
    torch.testing.assert_close(again(batch).logits, warm(batch).logits)
    experts = build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles)
    experts.init_experts_from_warmup(warm.state_dict())
    _check_blocks(_trained(experts).requires_grad_(True), batch)   # MoE-LoRA layers, masked by the dispatch


def test_experts_start_as_the_grouped_warmup_and_save_and_load(vocab, titles, tmp_path):
    cfg = tiny_config(*GROUPS, "model.moe.top_n=4", "model.moe.renormalize=true")   # every expert = the warm-up LoRA
    torch.manual_seed(0)
    warm = _trained(build_model(cfg, vocab, phase="warmup", titles=titles, drug_groups=SPLIT))
    exp = build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles).eval()
    exp.init_experts_from_warmup(warm.state_dict())
    assert exp.drug_group.tolist() == SPLIT
    batch = _batch(cfg, vocab)
    torch.testing.assert_close(exp(batch).logits, warm(batch).logits, atol=1e-6, rtol=1e-5)
    out = exp(batch)
    assert out.pooled.shape == (6, 16) and out.gates.shape == (6, 4)   # per patient, not per group copy
    save_model(exp, tmp_path / "exp")
    assert saved_drug_groups(tmp_path / "exp") == SPLIT
    again = load_model(tmp_path / "exp", cfg, vocab).eval()
    assert again.drug_group.tolist() == SPLIT
    torch.testing.assert_close(again(batch).logits, out.logits)
    # a warm-up trained without groups cannot seed grouped experts
    plain = build_model(tiny_config(*RANK4), vocab, phase="warmup", titles=titles)
    with pytest.raises(ValueError, match="the warm-up was trained without model.drug_groups"):
        build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles).init_experts_from_warmup(plain.state_dict())


def test_atc_grouping_is_balanced_deterministic_and_covers_every_drug():
    codes = ["N02B", "A02B", "N05A", "B01A", "C07A", "A06A", "N02A", "J01C", "C03C", "A12C", "B05C", "N03A",
             "A10A", "N01A", "C01B", "R03A", "A11A", "J01D", "B03B", "N06A"]
    groups = atc_groups(codes, 3)
    # by size N 6, A 5, B 3, C 3, J 2, R 1; each letter to the group with the fewest drugs so far
    expected = {"N": 0, "A": 1, "B": 2, "C": 2, "J": 1, "R": 0}
    assert groups.tolist() == [expected[c[0]] for c in codes]
    assert sorted(groups.tolist()) == [0] * 7 + [1] * 7 + [2] * 6
    shuffled = random.Random(0).sample(codes, len(codes))
    assert dict(zip(shuffled, atc_groups(shuffled, 3).tolist())) == dict(zip(codes, groups.tolist()))
    assert groups_line("atc", groups) == "atc, 3 groups of 7, 7, 6 drugs"
    with pytest.raises(TrixmedError) as info:
        atc_groups(["N02B", "N05A", "A02B"], 3)
    assert str(info.value) == "model.drug_groups.count: 3 groups, but the 3 medications span only 2 ATC anatomical groups (A, N)"


class _Data:
    """What dataset_drug_groups reads of a Dataset."""

    def __init__(self, med: list[str], visits: pd.DataFrame):
        self.vocab = Vocab(diag=[], proc=[], med=med)
        self.visits = visits


def test_coprescription_grouping_reads_the_training_split_only():
    med = ["A01A", "A02B", "C01A", "C02B", "N01A", "N02B"]
    train = [["A01A", "C01A"], ["A01A", "C01A", "N01A"], ["A02B", "C02B"], ["A02B", "C02B", "N02B"], ["N01A", "C01A"], ["N02B"]] * 3
    # validation and test prescribe the other way round; they must not shape the groups
    other = [["A01A", "A02B"], ["C01A", "C02B"], ["N01A", "N02B"]] * 10
    visits = pd.DataFrame({"split": ["train"] * len(train) + ["val"] * 15 + ["test"] * 15, "med": train + other})
    cfg = load_config(None, ["model.drug_groups.by=coprescription", "model.drug_groups.count=2"])
    groups = dataset_drug_groups(cfg, _Data(med, visits))
    assert groups.tolist() == [0, 1, 0, 1, 0, 1]
    assert dataset_drug_groups(cfg, _Data(med, visits.assign(med=train + [["A01A", "N02B"]] * 30))).tolist() == groups.tolist()
    assert coprescription_groups(med, train, 2, seed=42).tolist() == groups.tolist()
    assert coprescription_groups(med, train, 3, seed=7).tolist() == coprescription_groups(med, train, 3, seed=7).tolist()
    assert dataset_drug_groups(load_config(None, []), _Data(med, visits)) is None
    with pytest.raises(TrixmedError) as info:
        coprescription_groups(med, train, 7, seed=0)
    assert str(info.value) == "model.drug_groups.count: 7 groups, but there are only 6 medications"


def test_errors_name_the_key(vocab, titles):
    with pytest.raises(TrixmedError) as info:
        load_config(None, ["model.drug_groups.by=atc", "model.drug_groups.count=3"])
    assert str(info.value) == "<defaults>: model.drug_groups.count: must divide model.lora.rank=8, got 3"
    with pytest.raises(TrixmedError) as info:
        load_config(None, ["model.drug_groups.by=atc3"])
    assert str(info.value) == "<defaults>: model.drug_groups.by: must be one of none, atc, coprescription, got 'atc3'"
    with pytest.raises(TrixmedError) as info:
        load_config(None, ["model.drug_groups.by=coprescription", "model.moe.ep_size=2"])
    assert str(info.value) == ("<defaults>: model.drug_groups: needs model.moe.ep_size 1: the expert-parallel dispatch "
                               "does not carry the drug groups' rank masks")
    load_config(None, ["model.drug_groups.count=3"])   # ignored without groups
    with pytest.raises(ValueError, match=r"needs each drug's group id \(trixmed.cluster.drug_groups\)"):
        build_model(tiny_config(*GROUPS), vocab, phase="warmup", titles=titles)
    with pytest.raises(ValueError, match="must give each of the 10 drugs a group in 0..1"):
        build_model(tiny_config(*GROUPS), vocab, phase="warmup", titles=titles, drug_groups=[2] * 10)


def test_the_expert_parallel_dispatch_refuses_group_masks(vocab, titles):
    from trixmed.parallel.expert_parallel import ExpertParallel

    cfg = tiny_config(*GROUPS)
    model = build_model(cfg, vocab, phase="experts", num_clusters=3, titles=titles)
    model.drug_group.copy_(torch.tensor(SPLIT))
    model.make_dispatch = ExpertParallel.__new__(ExpertParallel).dispatch   # no process group needed to refuse
    with pytest.raises(TrixmedError) as info:
        model(_batch(cfg, vocab))
    assert str(info.value) == ("model.drug_groups: needs model.moe.ep_size 1: the expert-parallel dispatch "
                               "does not carry the drug groups' rank masks")
