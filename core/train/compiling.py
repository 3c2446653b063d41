"""Regional compilation of a training model's decoder blocks, its artifacts kept in the workspace.

A whole-model `torch.compile` made a SmolLM2-135M LoRA step 1.18x faster on CPU but cost about 110 s before
its first step. Here each decoder block is compiled on its own (`block.compile`, PyTorch's regional
compilation recipe): dynamo treats a block's weights as inputs, so the one traced graph serves every layer,
PEFT's LoRA layers included, and `dynamic=True` keeps one graph for packed rows of any length instead of a
recompile per batch. The attention call inside a block stays eager (speedups' packed_sdpa loops over the
conversations of a row, a different count each batch), so a block is two graphs, forward and backward.

Inductor's caches (FX graph and AOTAutograd, both on by default) go to the workspace's compile cache
(`Workspace.compile_cache_dir`) instead of /tmp, so a second run of the same model starts from compiled code.
After a compiled run completes, a marker file named by `cache_key` (torch version, model architecture, LoRA
shape, dtype, attention) says that this cache is warm; `compile: auto` compiles only then.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tunelab.folders import write_json_atomic

CHOICES = ("auto", "on", "off")


def use_cache(folder: Path) -> None:
    """Send Inductor's caches to `folder`; it reads the variable when it compiles, so call this before."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


def cache_key(model, **choices) -> str:
    """What decides the compiled code: torch's version, the model's architecture (its config without names and
    paths), the trainable modules' shapes (LoRA rank, targets), the dtype, and `choices` (e.g. attention)."""
    import torch
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    arch = {k: v for k, v in base.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    trainable = sorted((name.split(".")[-2], tuple(p.shape)) for name, p in model.named_parameters()
                       if p.requires_grad)
    doc = json.dumps([torch.__version__, arch, sorted(set(trainable)), str(base.dtype), choices], sort_keys=True,
                     default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _marker(folder: Path, key: str) -> Path:
    return folder / "warm" / f"{key}.json"


def is_warm(folder: Path | None, key: str) -> bool:
    return folder is not None and _marker(folder, key).exists()


def mark_warm(folder: Path, key: str, **info) -> None:
    """Record that a compiled run with this key completed, so its artifacts sit in `folder`."""
    path = _marker(folder, key)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_json_atomic(path, info)  # a marker half-written by a killed run must not pass for a warm cache


def wanted(setting: str, folder: Path | None, key: str) -> bool:
    """on, off, or auto: on only when a compiled run of this key already filled the cache (a cold compile
    costs more than a short run gains; see the `compile` key's help)."""
    return setting == "on" or (setting == "auto" and is_warm(folder, key))


def decoder_blocks(model) -> list:
    """The model's repeated blocks: the modules whose class transformers lists in `_no_split_modules`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in base.modules() if type(m).__name__ in names]


def compile_blocks(model) -> int:
    """Compile each decoder block in place (state_dict keys unchanged); the number compiled."""
    blocks = decoder_blocks(model)
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)
