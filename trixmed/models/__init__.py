"""Model core: backbones (codes, hf), LoRA, MoE-LoRA, routers, medication head, collation."""

from trixmed.models.collate import build_collator
from trixmed.models.model import MedRecModel, ModelOutput, build_model, load_model, save_model

__all__ = ["MedRecModel", "ModelOutput", "build_collator", "build_model", "load_model", "save_model"]
