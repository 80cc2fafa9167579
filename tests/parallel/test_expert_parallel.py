"""ep_size=2 vs ep_size=1 on 2 gloo ranks (torch.multiprocessing), bare and under a DeepSpeed engine."""

from pathlib import Path

import pytest
import torch

from trixmed.testing import FakeTitles, make_samples, make_vocab, spawn_gloo_ranks, tiny_config

WORLD = 2
TOL = dict(atol=1e-5, rtol=1e-5)


def _models(cfg, vocab):
    """Two identical experts models (ep=1 reference, ep=2 candidate) from one random warm-up state,
    each with its ExpertParallel handle (None for the reference)."""
    from trixmed.models import build_model
    from trixmed.parallel import setup_expert_parallel

    torch.manual_seed(0)
    warm = build_model(cfg, vocab, phase="warmup", titles=FakeTitles())
    with torch.no_grad():
        for n, p in warm.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(std=0.05)
    models = []
    for ep_size in (1, 2):
        torch.manual_seed(1)
        m = build_model(cfg, vocab, phase="experts", num_clusters=3, titles=FakeTitles())
        m.init_experts_from_warmup(warm.trainable_state_dict())
        with torch.no_grad():   # experts that differ, so a mix-up cannot go unnoticed
            for layer in m.moe_layers:
                layer.experts_B.add_(0.05 * torch.randn_like(layer.experts_B))
        ep = setup_expert_parallel(m, ep_size)
        assert (ep is None) == (ep_size == 1)
        models.append((m, ep))
    return models


def _batch(cfg, vocab, rank):
    from trixmed.models import build_collator

    samples = make_samples(vocab, 10, seed=5)
    clusters = [0, 1, 2, 2, 1, 0, 0, 2, 1, 1]
    # uneven halves: 4 and 6 samples, and (seed 5) different visit counts, so padding is exercised
    part = slice(0, 4) if rank == 0 else slice(4, 10)
    return build_collator(cfg, vocab)(samples[part], clusters[part])


def _local(full, rank):
    n = full.shape[0] // WORLD
    return full[rank * n:(rank + 1) * n]


def _bare(rank: int, out_dir: str) -> None:
    import torch.distributed as dist

    from trixmed.models import load_model, save_model
    from trixmed.parallel import full_state_dict

    cfg, vocab = tiny_config("model.moe.router=triage"), make_vocab()
    (ref, _), (ep, handle) = _models(cfg, vocab)
    batch = _batch(cfg, vocab, rank)
    outs = []
    for m in (ref, ep):
        out = m(batch)
        loss, _ = m.loss(batch, out, cfg.experts)
        loss.backward()
        outs.append((out, loss))
    torch.testing.assert_close(outs[1][0].logits, outs[0][0].logits, **TOL)
    torch.testing.assert_close(outs[1][1], outs[0][1], **TOL)
    ref_params, ep_params = dict(ref.named_parameters()), dict(ep.named_parameters())
    for name, p in ep_params.items():
        if ".experts_" in name:
            assert p.allreduce is False and p.group_name == "ep_size_2"
            # an expert's gradient gathers every rank's samples routed to it: Σ over ranks of the reference
            g = ref_params[name].grad.clone()
            dist.all_reduce(g)
            torch.testing.assert_close(p.grad, _local(g, rank), **TOL)
            torch.testing.assert_close(p.detach(), _local(ref_params[name].detach(), rank))
        elif p.requires_grad:
            torch.testing.assert_close(p.grad, ref_params[name].grad, **TOL)
    # the full state gathers the shards (a collective on every rank); rank 0 writes a model with all experts
    state = full_state_dict(ep, handle)
    assert not any(k.startswith("ep_marker.") for k in state)
    if rank == 0:
        save_model(ep, Path(out_dir) / "ep", state)
    dist.barrier()
    again = load_model(Path(out_dir) / "ep", cfg, vocab)
    torch.testing.assert_close(again(batch).logits, ref(batch).logits, **TOL)
    dist.destroy_process_group()


def _deepspeed(rank: int, stage: int, ckpt_dir: str) -> None:
    import deepspeed
    import torch.distributed as dist

    from trixmed.parallel import full_state_dict, optimizer_param_groups

    cfg, vocab = tiny_config("model.moe.router=triage"), make_vocab()
    batch = _batch(cfg, vocab, rank)
    ds = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "steps_per_print": 10**9,
          "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
    results = []
    for m, ep in _models(cfg, vocab):
        opt = torch.optim.SGD(optimizer_param_groups(m, lr=0.5, weight_decay=0.0, ep=ep))
        engine, *_ = deepspeed.initialize(model=m, optimizer=opt, config=ds)
        assert engine.has_moe_layers == (ep is not None)
        out = engine(batch)
        loss, _ = m.loss(batch, out, cfg.experts)
        engine.backward(loss)
        engine.step()
        state = full_state_dict(m, ep, {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad})
        results.append((out.logits.detach(), loss.detach(), state))
    # DeepSpeed's own checkpoint keeps every rank's experts (its shared model file has rank 0's only)
    local = {n: p.detach().clone() for n, p in m.named_parameters()}
    engine.save_checkpoint(ckpt_dir, tag="t")
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    engine.load_checkpoint(ckpt_dir, tag="t")
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.detach(), local[n], rtol=0, atol=0, msg=lambda s: f"{n} after load_checkpoint: {s}")
    (ref_logits, ref_loss, ref_state), (ep_logits, ep_loss, ep_state) = results
    torch.testing.assert_close(ep_logits, ref_logits, **TOL)
    torch.testing.assert_close(ep_loss, ref_loss, **TOL)
    # one SGD step: equal parameters afterwards ⇔ equal (reduced) gradients; experts summed as if
    # shared with the other rank's (different) experts would not match
    assert ref_state.keys() == ep_state.keys()
    for name, value in ref_state.items():
        torch.testing.assert_close(ep_state[name], value, **TOL, msg=lambda s: f"{name}: {s}")
    dist.destroy_process_group()


def test_ep2_matches_ep1_outputs_loss_and_gradients(tmp_path):
    spawn_gloo_ranks(_bare, WORLD, str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_ep2_matches_ep1_under_deepspeed_zero(stage, tmp_path):
    spawn_gloo_ranks(_deepspeed, WORLD, stage, str(tmp_path))
