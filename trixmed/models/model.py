"""MedRecModel: backbone → pooled patient vector → medication logits, with LoRA or MoE-LoRA.

    phase "warmup"   backbone + one LoRA adapter + medication head. codes: base and LoRA train
                     (the backbone starts from random weights); hf: LoRA and head only.
    phase "experts"  same backbone, frozen; router `none` keeps one LoRA ("w/o MoE"), `triage` and
                     `learned` put E LoRA experts on every adapted linear (MoE-LoRA).

With drug groups (LAMO, `model.drug_groups`) in both phases, a batch of B runs as G×B rows: copy
g uses only rank block g of every adapter (trixmed/models/lora.py), and drug j's logit comes from
the copy of its own group. The patient vector is the mean of the G copies' pooled vectors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trixmed.config import DIRECT_INPUTS, Config, ExpertsConfig, ModelConfig, WarmupConfig, from_dict, to_dict
from trixmed.data.dataset import Vocab
from trixmed.data.drugs import morgan_fingerprints
from trixmed.errors import TrixmedError
from trixmed.io import atomic_dir, read_json, write_json
from trixmed.models.codes import CodesBackbone, build_title_words, masked_mean
from trixmed.models.drug_tower import DrugInputs, DrugTower
from trixmed.models.lora import Dispatch, LocalDispatch, LoRALinear, MoELoRALinear, adapt_linears
from trixmed.models.router import LearnedRouter, Routing, TriageRouter, route

PHASES = ("warmup", "experts")
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


@dataclass
class ModelOutput:
    logits: Tensor                  # [B, n_med]
    pooled: Tensor                  # [B, H]
    aux_loss: Tensor                # 0-dim, 0 without MoE
    lm_loss: Tensor | None          # 0-dim when the batch carries output tokens (hf warm-up)
    expert_counts: Tensor | None    # [E] long: samples routed to each expert
    gates: Tensor | None            # G [B, E]


class MedRecModel(nn.Module):
    def __init__(self, cfg: ModelConfig, backbone: nn.Module, sizes: dict[str, int], phase: str, num_clusters: int | None):
        super().__init__()
        self.cfg, self.phase, self.num_clusters = cfg, phase, num_clusters
        self.backbone = backbone
        self.sizes = dict(sizes)   # vocabulary sizes: diag, proc, med
        n_med = sizes["med"]
        self.head = medication_head(cfg, backbone.hidden_size, n_med, fixed_titles=not isinstance(backbone, CodesBackbone))
        # zero-initialised: the model starts exactly as without them
        self.direct = nn.ModuleDict({name: nn.Linear(sizes[DIRECT_INPUTS[name][0]], n_med, bias=False) for name in cfg.direct})
        for lin in self.direct.values():
            nn.init.zeros_(lin.weight)
        groups = cfg.drug_groups
        self.num_groups = groups.count if groups.by != "none" else 0
        if self.num_groups:
            # each drug's group; filled by build_model, the saved state or the warm-up's. -1 until
            # then, so that an unfilled model fails in its first forward instead of using group 0
            self.register_buffer("drug_group", torch.full((n_med,), -1, dtype=torch.long))
        moe = cfg.moe
        self.router: nn.Module | None = None
        if phase == "experts" and moe.router == "triage":
            self.router = TriageRouter(num_clusters, moe.num_experts)
        elif phase == "experts" and moe.router == "learned":
            self.router = LearnedRouter(backbone.hidden_size, moe.num_experts)
        # How one forward's routing reaches the MoE-LoRA layers. Every expert is local by default;
        # distributed wrappers replace this from outside to send rows to the ranks holding them.
        self.make_dispatch: Callable[[Routing], Dispatch] = self._local_dispatch

    @property
    def moe_layers(self) -> list[MoELoRALinear]:
        return [m for m in self.modules() if isinstance(m, MoELoRALinear)]

    def route(self, batch: dict[str, Tensor]) -> Routing | None:
        if self.router is None:
            return None
        if isinstance(self.router, TriageRouter):
            if "cluster" not in batch:
                raise ValueError("router=triage needs the cluster id of every sample (the collator's second argument)")
            logits = self.router(batch["cluster"])
        else:
            logits = self.router(self.backbone.input_features(batch))
        return route(logits, self.cfg.moe.top_n, self.cfg.moe.renormalize)

    def _local_dispatch(self, routing: Routing) -> Dispatch:
        return LocalDispatch(routing.weights, routing.indices, self.cfg.moe.num_experts, routing.rank_mask)

    def group_rank_mask(self, batch_size: int) -> Tensor:
        """[G·B, r]: copy g of the batch keeps rank block g (r/G columns) of every adapter."""
        blocks = torch.eye(self.num_groups, device=self.drug_group.device)
        return blocks.repeat_interleave(self.cfg.lora.rank // self.num_groups, dim=1).repeat_interleave(batch_size, dim=0)

    def _set_rank_mask(self, rank_mask: Tensor) -> None:
        # kept after the forward, like the dispatch: gradient checkpointing re-runs the layers
        for m in self.modules():
            if isinstance(m, LoRALinear):
                m.rank_mask = rank_mask
        if not isinstance(self.backbone, CodesBackbone):
            self.backbone.rank_mask = rank_mask   # peft's LoRA layers read it through a hook

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        routing = self.route(batch)
        rows, batch_size = batch, batch["labels"].shape[0]
        if self.num_groups:
            # routing, the auxiliary loss and the direct paths stay per patient; only the adapted
            # backbone and the head see the G copies
            rows = {k: v.repeat(self.num_groups, *([1] * (v.dim() - 1))) for k, v in batch.items()}
            rank_mask = self.group_rank_mask(batch_size)
            self._set_rank_mask(rank_mask)
            if routing is not None:
                routing = dataclasses.replace(routing, weights=routing.weights.repeat(self.num_groups, 1),
                                              indices=routing.indices.repeat(self.num_groups, 1), rank_mask=rank_mask)
        if routing is not None:
            dispatch = self.make_dispatch(routing)
            # kept after the forward: gradient checkpointing re-runs the layers during backward
            for m in self.moe_layers:
                m.dispatch = dispatch
        hidden, mask, lm_loss = self.backbone(rows)
        pooled = pool_states(hidden.float(), mask, self.cfg.pool)
        # under DeepSpeed bf16/fp16 the head's weights are half precision: feed it its own dtype,
        # and score the loss in fp32
        patient = pooled.to(self.head.bias.dtype)
        if isinstance(self.head, DrugTower):
            # codes: the drugs' titles are read through the backbone's (trained) title-word embeddings
            titles = self.backbone.title_embedding("med") if isinstance(self.backbone, CodesBackbone) else None
            logits = self.head(patient, titles).float()
        else:
            logits = self.head(patient).float()
        if self.num_groups:
            logits = logits.view(self.num_groups, batch_size, -1)
            own = self.drug_group.expand(1, batch_size, -1)
            logits, pooled = logits.gather(0, own).squeeze(0), pooled.view(self.num_groups, batch_size, -1).mean(dim=0)
        for kind, lin in self.direct.items():
            logits = logits + lin(batch[f"multi_hot_{kind}"].to(lin.weight.dtype)).float()
        if routing is None:
            return ModelOutput(logits, pooled, logits.new_zeros(()), lm_loss, None, None)
        return ModelOutput(logits, pooled, routing.aux_loss, lm_loss, routing.counts, routing.gates)

    def loss(self, batch: dict[str, Tensor], out: ModelOutput, phase_cfg: WarmupConfig | ExpertsConfig) -> tuple[Tensor, dict[str, float]]:
        """warm-up: λ_LM·LM + λ_med·med;  experts: med + λ·L_aux, where med = (1 - w)·BCE + w·margin
        (w = model.margin_weight). Returns (loss, parts for logging)."""
        bce = F.binary_cross_entropy_with_logits(out.logits, batch["labels"])
        parts = {"bce": bce.item(), "aux": out.aux_loss.item()}
        med = bce
        if self.cfg.margin_weight:
            margin = multilabel_margin(out.logits, batch["labels"])
            med = (1 - self.cfg.margin_weight) * bce + self.cfg.margin_weight * margin
            parts["margin"] = margin.item()
        if self.phase == "warmup":
            total = phase_cfg.med_weight * med
            if out.lm_loss is not None and phase_cfg.lm_weight:
                total = total + phase_cfg.lm_weight * out.lm_loss
        else:
            total = med + self.cfg.moe.aux_weight * out.aux_loss
        if out.lm_loss is not None:
            parts["lm"] = out.lm_loss.item()
        parts["loss"] = total.item()
        return total, parts

    def init_experts_from_warmup(self, warm_state: dict[str, Tensor]) -> None:
        """Load the warm-up model's state (backbone, head, LoRA); every expert starts as its LoRA.
        Call it before experts are partitioned over ranks: it fills all E experts."""
        own = self.state_dict()
        if self.num_groups and "drug_group" not in warm_state:
            raise ValueError("warm-up state: no drug_group; the warm-up was trained without model.drug_groups")
        used: set[str] = set()
        for name, layer in ((n, m) for n, m in self.named_modules() if isinstance(m, MoELoRALinear)):
            pair = []
            for part in ("lora_A", "lora_B"):
                keys = [k for k in warm_state if k.startswith(f"{name}.{part}")]
                if len(keys) != 1:
                    raise ValueError(f"warm-up state: expected one {name}.{part}* tensor, found {len(keys)}")
                pair.append(warm_state[keys[0]])
                used.add(keys[0])
            layer.load_adapter(*pair)
        rest = {}
        for k, v in warm_state.items():
            if k in used:
                continue
            if k not in own:
                raise ValueError(f"warm-up state: {k} has no counterpart in the experts model")
            if own[k].shape != v.shape:
                raise ValueError(f"warm-up state: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
            rest[k] = v
        self.load_state_dict(rest, strict=False)

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """LoRA / MoE-LoRA experts, router and medication head: what differs from the base model."""
        return {k: v for k, v in self.state_dict().items()
                if "lora_" in k or ".experts_" in k or k.startswith(("router.", "head.", "direct.")) or k == "drug_group"}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}


def medication_head(cfg: ModelConfig, hidden: int, n_med: int, *, fixed_titles: bool) -> nn.Module:
    """pooled patient vector → medication logits: a free linear layer, or the drug tower
    (`fixed_titles`: title embeddings kept as a buffer, the hf backbone's)."""
    patient_dim = hidden * (2 if cfg.pool == "mean+last" else 1)
    if cfg.head == "drug_tower":
        return DrugTower(patient_dim, hidden, n_med, cfg.drug_tower, fixed_titles=fixed_titles)
    return nn.Linear(patient_dim, n_med)


def multilabel_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """SafeDrug's multilabel margin loss on the probabilities: each given drug should score 1 above
    each other drug. torch wants the labels as index lists, the given drugs first, then -1."""
    order = torch.argsort(labels, dim=1, descending=True, stable=True)
    given = labels.sum(dim=1, keepdim=True)
    target = torch.where(torch.arange(labels.shape[1], device=labels.device) < given, order, -1)
    return F.multilabel_margin_loss(torch.sigmoid(logits), target)


def pool_states(hidden: Tensor, mask: Tensor, how: str) -> Tensor:
    """The patient vector from states [B, T, H] and their mask [B, T] (valid positions first):
    `mean`, `last` (the last valid position: the current visit, or the prompt's last token) or
    `mean+last` concatenated."""
    mean = masked_mean(hidden, mask)
    if how == "mean":
        return mean
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = hidden[torch.arange(len(hidden), device=hidden.device), (mask.long() * positions).argmax(dim=1)]
    return last if how == "last" else torch.cat([mean, last], dim=-1)


def set_backbone_trainable(model: MedRecModel, what: str) -> None:
    """What of the frozen backbone the experts phase trains too (`experts.train_backbone`)."""
    if what == "none":
        return
    if not isinstance(model.backbone, CodesBackbone):
        raise ValueError(f"train_backbone={what!r} needs the codes backbone")
    for module in model.backbone.embedding_modules():
        module.requires_grad_(True)


def build_model(cfg: Config, vocab: Vocab, *, phase: str, num_clusters: int | None = None,
                titles: Any = None, lm: nn.Module | None = None, drugs: pd.DataFrame | None = None,
                drug_groups: Sequence[int] | None = None) -> MedRecModel:
    """A fresh model for `phase`. `titles` (trixmed.text.CodeTitles) feeds the codes backbone's title
    words and the drug tower's titles; None loads the bundled CodeTitles.default() where needed. `lm`
    (hf only) is a causal LM built by the caller instead of the one model.hf names. `drugs`
    (`Dataset.drugs`, model.head drug_tower only) holds each drug's molecules. `drug_groups`
    (model.drug_groups only; trixmed.cluster.drug_groups) is each drug's group id, in vocabulary
    order: the warm-up needs it, an experts model takes it from the warm-up state."""
    mcfg = cfg.model
    codes_words = mcfg.backbone == "codes" and mcfg.codes.title_words
    if titles is None and (codes_words or mcfg.head == "drug_tower"):
        from trixmed.text.titles import CodeTitles

        titles = CodeTitles.default()
    tables = None
    if codes_words:
        tables, words = build_title_words(vocab, titles)
        tables = (tables, len(words))
    inputs = None
    if mcfg.head == "drug_tower":
        if drugs is None:
            raise ValueError("model.head=drug_tower needs the dataset's drug table (Dataset.drugs)")
        if drugs["code"].tolist() != vocab.med:
            raise ValueError("the drug table's codes are not the medication vocabulary, in its order")
        inputs = DrugInputs([list(s) for s in drugs["smiles"]], [titles.med(c) for c in vocab.med])
    model = _build(mcfg, vocab.sizes(), phase=phase, num_clusters=num_clusters, title_tables=tables, lm=lm, drugs=inputs)
    if model.num_groups and drug_groups is not None:
        ids = torch.as_tensor(list(drug_groups), dtype=torch.long)
        if ids.shape != model.drug_group.shape or ids.min() < 0 or ids.max() >= model.num_groups:
            raise ValueError(f"drug_groups must give each of the {len(vocab.med)} drugs a group in 0..{model.num_groups - 1}")
        model.drug_group.copy_(ids)
    elif model.num_groups and phase == "warmup":
        raise ValueError("model.drug_groups needs each drug's group id (trixmed.cluster.drug_groups)")
    return model


def _build(mcfg: ModelConfig, sizes: dict[str, int], *, phase: str, num_clusters: int | None,
           title_tables: tuple[dict[str, Tensor], int] | None, lm: nn.Module | None = None,
           drugs: DrugInputs | None = None) -> MedRecModel:
    """`drugs` None leaves a drug tower unfilled: a loaded model's saved state fills it."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    moe = mcfg.moe
    if phase == "experts" and moe.router == "triage" and not (num_clusters and num_clusters > 0):
        raise ValueError("triage routing needs num_clusters (from the stratify stage)")
    lora = mcfg.lora
    title_embeddings = None
    if mcfg.backbone == "codes":
        tables, num_words = title_tables if title_tables else (None, 0)
        backbone: nn.Module = CodesBackbone(mcfg.codes, sizes, tables, num_words)
        if phase == "experts":
            backbone.requires_grad_(False)
        if phase == "warmup" or moe.router == "none":
            adapted = adapt_linears(backbone, lora.targets, lambda lin: LoRALinear(lin, lora.rank, lora.alpha, lora.dropout))
        else:
            adapted = adapt_linears(backbone, lora.targets,
                                    lambda lin: MoELoRALinear(lin, moe.num_experts, lora.rank, lora.alpha, lora.dropout))
        if not adapted:
            raise TrixmedError("model.lora.targets", f"{lora.targets} match no linear layer of the codes backbone")
    else:
        from trixmed.models.checkpoint import load_causal_lm, locate
        from trixmed.models.hf import HFBackbone

        name = "the given model" if lm is not None else str(locate(mcfg.hf).where)
        backbone = HFBackbone(lm if lm is not None else load_causal_lm(mcfg.hf), lora,   # peft: base frozen, LoRA trainable
                              gradient_checkpointing=mcfg.hf.gradient_checkpointing, name=name)
        if drugs is not None:
            from trixmed.models.checkpoint import load_tokenizer

            title_embeddings = backbone.text_embeddings(load_tokenizer(mcfg.hf), drugs.titles)
        if phase == "experts" and moe.router != "none":
            _peft_to_moe(backbone, moe.num_experts, lora)
    model = MedRecModel(mcfg, backbone, sizes, phase, num_clusters)
    if drugs is not None:
        fingerprints, missing = morgan_fingerprints(drugs.smiles, mcfg.drug_tower.fingerprint_radius,
                                                    mcfg.drug_tower.fingerprint_bits)
        model.head.set_drugs(torch.from_numpy(fingerprints), torch.from_numpy(missing), title_embeddings)
    return model


def _peft_to_moe(backbone: nn.Module, num_experts: int, lora) -> None:
    """Swap each peft LoRA layer for an MoE-LoRA layer on the same frozen base linear."""
    from peft.tuners.lora import LoraLayer

    for name, m in list(backbone.named_modules()):
        if isinstance(m, LoraLayer):
            parent_name, _, child = name.rpartition(".")
            moe = MoELoRALinear(m.get_base_layer(), num_experts, lora.rank, lora.alpha, lora.dropout)
            moe.load_adapter(m.lora_A["default"].weight, m.lora_B["default"].weight)
            setattr(backbone.get_submodule(parent_name), child, moe)


def save_model(model: MedRecModel, directory: str | Path, state: dict[str, Tensor] | None = None) -> None:
    """Weights as safetensors + model.json; hf warm-up adapters also via peft `save_pretrained`.

    codes: the whole state; hf: everything but the frozen base (it stays in model.hf.path).
    `state` replaces the model's own state dict where the caller assembled the full weights
    (parameters gathered from the ranks that hold them).
    """
    from safetensors.torch import save_file

    if state is None:
        state = model.state_dict()
    if model.cfg.backbone == "hf":
        keep = model.trainable_state_dict().keys() | model.adapter_state_dict().keys()
        state = {k: v for k, v in state.items() if k in keep}
    with atomic_dir(directory) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
        sizes = {k: model.sizes[k] for k in ("diag", "proc", "med")}
        title = getattr(model.backbone, "word_emb", None)
        write_json(tmp / META_FILE, {
            "model": to_dict(model.cfg), "phase": model.phase, "num_clusters": model.num_clusters, "sizes": sizes,
            "title_words": title.num_embeddings - 1 if title is not None else None,
        })
        if model.cfg.backbone == "hf" and not model.moe_layers:
            model.backbone.peft.save_pretrained(str(tmp / "adapter"))


def _read_meta(directory: Path) -> tuple[dict[str, Any], ModelConfig]:
    """A saved model's model.json and the model config in it."""
    for name in (META_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise TrixmedError(directory / name, "missing; not a saved trixmed model")
    meta = read_json(directory / META_FILE)
    return meta, from_dict(ModelConfig, meta["model"], str(directory / META_FILE), "model")


def saved_drug_groups(directory: str | Path) -> list[int] | None:
    """Each drug's group id in a saved model (model.drug_groups), None without groups; read from
    the weights file without building the model."""
    from safetensors import safe_open

    directory = Path(directory)
    _read_meta(directory)
    with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as f:
        return f.get_tensor("drug_group").tolist() if "drug_group" in f.keys() else None


def saved_model_config(directory: str | Path) -> ModelConfig:
    """The model config a saved model was built with."""
    return _read_meta(Path(directory))[1]


def load_model(directory: str | Path, cfg: Config, vocab: Vocab) -> MedRecModel:
    """Rebuild a saved model. Its own model config wins, except the hf checkpoint source
    (model.hf.path / gguf / package) when cfg sets one."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta, mcfg = _read_meta(directory)
    mcfg = dataclasses.replace(mcfg, hf=mcfg.hf.with_source_of(cfg.model.hf))
    sizes = vocab.sizes()
    for kind, n in meta["sizes"].items():
        if sizes[kind] != n:
            raise TrixmedError(directory / META_FILE, f"{kind} vocabulary has {n} codes, the dataset has {sizes[kind]}")
    state = load_file(str(directory / WEIGHTS_FILE))
    tables = None
    if meta["title_words"] is not None:
        tables = ({k: state[f"backbone.title_words_{k}"] for k in ("diag", "proc", "med")}, meta["title_words"])
    model = _build(mcfg, sizes, phase=meta["phase"], num_clusters=meta["num_clusters"], title_tables=tables)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or (mcfg.backbone == "codes" and missing):
        raise TrixmedError(directory / WEIGHTS_FILE, f"does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model
