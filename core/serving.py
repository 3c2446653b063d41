"""Serving a model spec to applications over an OpenAI-compatible API (`tunelab serve NAME[+RUN]`):
/v1/chat/completions, streaming included, on an existing engine; tunelab only picks the folders and
builds the engine's command (`plan`), and the CLI hands the process over to it.

Engines:
- transformers (CPU, or one GPU): `transformers serve` pinned to one model folder. It loads a folder with
  config.json, so an adapter is served as a merged copy of base + adapter, written once into
  <home>/serve/<spec>/ and kept while the adapter's files are unchanged; a base model or a full run's
  model is a link there to its own folder. The server starts in <home>/serve with the spec as its model
  path, so clients name the model as tunelab does (`tiny+r3`).
- vllm (where a CUDA GPU and the vllm package exist): `vllm serve BASE --enable-lora --lora-modules
  SPEC=ADAPTER`, the adapter applied unmerged; clients name the model SPEC too.

The server binds 127.0.0.1 unless told otherwise: neither engine checks who calls, so serving on another
address is the caller's explicit choice (the CLI warns).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tunelab import merging, models
from tunelab.errors import UserError
from tunelab.models import ModelSpec
from tunelab.workspace import Workspace

ENGINES = ("auto", "transformers", "vllm")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
LOOPBACK = ("127.0.0.1", "localhost", "::1")
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts above 1


@dataclass(frozen=True)
class Plan:
    engine: str
    model: str          # the name clients send as `model`
    url: str            # the OpenAI base URL (…/v1)
    command: list[str]
    cwd: Path
    env: dict


def serve_dir(ws: Workspace) -> Path:
    return ws.home / "serve"


def pick_engine(engine: str) -> str:
    """`auto` is vllm where it can run (a CUDA GPU and the package), else transformers."""
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    import torch
    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "transformers"


def plan(db, ws: Workspace, spec_text: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
         engine: str = "auto", progress=None) -> Plan:
    """What to run to serve `spec_text` (NAME or NAME+RUN): the engine's command, its folder and
    environment, and the URL and model name clients use. Writes the merged copy an adapter needs for
    the transformers engine."""
    spec = ModelSpec.parse(spec_text).check(db, ws)  # registered, not a reward model, a completed run
    if not 0 < port < 65536:
        raise UserError(f"--port {port}: choose a port between 1 and 65535")
    engine = pick_engine(engine)
    base, adapter = spec.folders(db, ws, progress)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    env = dict(os.environ, HF_HUB_OFFLINE="1")  # a local model: nothing is fetched from the Hub
    if engine == "vllm":
        return Plan(engine, spec.format(), url, vllm_command(spec, base, adapter, host, port), Path.cwd(), env)
    folder = local_folder(ws, spec, base, adapter, progress)
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", folder.name, "--host", host,
               "--port", str(port), "--log-level", "info"]
    return Plan(engine, spec.format(), url, command, folder.parent, env)


def vllm_command(spec: ModelSpec, base: Path, adapter: Path | None, host: str, port: int) -> list[str]:
    """`vllm serve` of the base under the spec's model name, or of the base with the adapter as a LoRA
    module named after the spec (vLLM applies it per request, unmerged)."""
    command = [shutil.which("vllm") or "vllm", "serve", str(base), "--host", host, "--port", str(port)]
    if adapter is None:
        return command + ["--served-model-name", spec.format()]
    rank = merging.adapter_rank(adapter)
    max_rank = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
    if max_rank is None:
        raise UserError(f"model spec {spec}: its LoRA rank {rank} is above vLLM's largest, {VLLM_LORA_RANKS[-1]}; "
                        "use --engine transformers")
    return command + ["--served-model-name", spec.model, "--enable-lora", "--lora-modules",
                      f"{spec.format()}={adapter}", "--max-lora-rank", str(max_rank)]


def _fingerprint(base: Path, adapter: Path) -> str:
    """What a merged copy was made from: the base folder and the adapter's bytes."""
    digest = hashlib.sha256(str(base.resolve()).encode())
    for f in sorted(adapter.glob("adapter_model.*")):
        digest.update(f.read_bytes())
    return digest.hexdigest()


def local_folder(ws: Workspace, spec: ModelSpec, base: Path, adapter: Path | None, progress=None) -> Path:
    """<home>/serve/<spec>: a link to the model's folder, or for an adapter a merged copy of base and
    adapter (with the run's tokenizer), written once and again only when the adapter changed."""
    report = progress or (lambda f, m: None)
    root = serve_dir(ws)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = root / spec.format()  # check_name'd parts and one '+': one path component
    tmp = root / f".{spec.format()}.{os.getpid()}"
    if adapter is None:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(base.resolve(), target_is_directory=True)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # a merged copy from an earlier run with this id
        os.replace(tmp, target)
        return target
    stamp = _fingerprint(base, adapter)
    if (target / "tunelab_source.json").exists() and not target.is_symlink():
        if json.loads((target / "tunelab_source.json").read_text()).get("fingerprint") == stamp:
            return target
    report(0.2, f"merging {spec} into one model folder for transformers serve (once)")
    shutil.rmtree(tmp, ignore_errors=True)
    models.write_merged(base, adapter, tmp)
    (tmp / "tunelab_source.json").write_text(json.dumps({"spec": spec.format(), "base": str(base),
                                                       "adapter": str(adapter), "fingerprint": stamp}))
    if target.is_symlink():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    report(1.0, "merged copy written")
    return target
