"""A run's config: one YAML file whose keys are the names TRL and transformers use.

Every method shares `RunConfig`; a method module `core/train/<method>.py` subclasses it as `Config`
with its own fields and defines `train(ctx)`. `method:` in the YAML picks the module, so adding a
method is adding one file. The CLI flags, the Launch page form and the docs all read these dataclasses
through core/configs.py, which also holds the one type checker.

    parse_yaml(text, source, overrides) -> Config   (keys and types checked, line numbers in errors;
                                                     overrides from `tunelab train` flags on top)
    resolve(db, ws, cfg)      -> Config   (model, dataset and init_from checked; dataset pinned)
    to_yaml(cfg)              -> str      (the resolved config, saved as <run>/config.yaml)
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from tunelab import configs
from tunelab.configs import flat
from tunelab.errors import UserError

TUNINGS = ("full", "lora", "qlora")
BACKENDS = ("local", "ray")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")


@dataclass
class LoraSettings:
    r: int = field(default=16, metadata={"help": "LoRA rank: the adapter's inner width.", "min": 1})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha; the update is scaled by alpha / r.", "min": 1})
    dropout: float = field(default=0.0, metadata={
        "help": "Dropout on the adapter's input. Off by default: at 0.05 a SmolLM2-135M LoRA step on CPU took 37% "
                "longer (a random mask for the input of each of the 210 adapted layers), with no better held-out "
                "loss in short fine-tunes (bench/train_throughput.py).", "min": 0.0, "max": 1.0})
    target_modules: str | list[str] = field(default="all-linear", metadata={
        "help": "Which layers get adapters: 'all-linear' (every linear layer but the output head) or a list of "
                "module names such as [q_proj, v_proj]."})


@dataclass
class RunConfig:
    """The keys every training method has."""
    base_model: str = field(metadata={"help": "A registered model (see `tunelab models list`)."})
    dataset: str = field(metadata={"help": "Dataset version as name@version; a bare name means the latest "
                                           "version and is pinned at launch."})
    method: str = field(default="sft", metadata={"help": "Training method: a module in core/train/."})
    name: str | None = field(default=None, metadata={
        "help": "What people call this run (e.g. 'support tone v2'); the leaderboard shows it beside "
                "NAME+RUN_ID. Without one it shows the method, tuning and data."})
    init_from: str | None = field(default=None, metadata={
        "help": "Start from a completed run's result (its adapter or model) instead of the bare base model."})
    tuning: str = field(default="lora", metadata={
        "help": "full: train every weight. lora: train small adapters, base frozen. qlora: LoRA on a 4-bit "
                "base (needs a CUDA GPU and bitsandbytes).", "choices": TUNINGS})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA settings (lora and qlora)."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate (AdamW).", "min": 0.0})
    max_steps: int = field(default=-1, metadata={
        "help": "Optimizer steps to train; -1 means run num_train_epochs instead.", "min": -1})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the data when max_steps is -1.",
                                                           "min": 0.0})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Examples per forward pass.", "min": 1})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "Forward passes per optimizer step; the effective batch is this times the batch size.", "min": 1})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule.",
                                                                "choices": SCHEDULERS})
    warmup_ratio: float = field(default=0.03, metadata={
        "help": "Fraction of the steps spent warming the learning rate up from 0 (transformers 5 takes it as "
                "a fractional warmup_steps).", "min": 0.0, "max": 0.999})
    logging_steps: int = field(default=1, metadata={"help": "Write a metrics line every this many steps.", "min": 1})
    save_steps: int = field(default=50, metadata={
        "help": "Save a checkpoint (weights, optimizer and scheduler) every this many steps; resume starts from "
                "the latest.", "min": 1})
    eval_steps: int = field(default=50, metadata={
        "help": "Compute the loss on the dataset's validation split every this many steps (when it has one).",
        "min": 1})
    seed: int = field(default=42, metadata={"help": "Seed for weights init, data order and dropout."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass: about 40% less memory, about 19% slower on CPU."})
    backend: str = field(default="local", metadata={
        "help": "Where the run process runs: local (a process on this machine) or ray (a job on the Ray cluster at "
                "ray_address; the code, the Python environment and the workspace must be at the same paths on its "
                "nodes, unless the ray_storage setting names storage they share with the studio: an S3 bucket "
                "or a mounted path).", "choices": BACKENDS})
    ray_address: str | None = field(default=None, metadata={
        "help": "backend ray: the cluster's dashboard address, e.g. http://127.0.0.1:8265; unset means the "
                "RAY_ADDRESS environment variable. Pinned at launch."})
    num_workers: int = field(default=1, metadata={
        "help": "backend ray: data-parallel workers under Ray Train (DDP), each with a whole copy of the model; the "
                "effective batch is num_workers x per_device_train_batch_size x gradient_accumulation_steps.",
        "min": 1})
    cpus_per_worker: int = field(default=1, metadata={
        "help": "backend ray: CPUs each worker reserves on the cluster (on CPU, also its torch threads).", "min": 1})
    gpus_per_worker: float | None = field(default=None, metadata={
        "help": "backend ray: GPUs each worker reserves; unset means 1 if the cluster has GPUs, else 0. Pinned "
                "at launch. A whole number when num_workers > 1 (two NCCL ranks cannot share a GPU).", "min": 0.0})
    num_processes: int = field(default=1, metadata={
        "help": "backend local: data-parallel processes on this machine (DDP; one per GPU, or sharing the cores "
                "on CPU); the effective batch is num_processes x per_device_train_batch_size x "
                "gradient_accumulation_steps.", "min": 1})

    # Dataset kinds this method trains on; a method's Config overrides it.
    dataset_kinds: typing.ClassVar[tuple[str, ...]] = ("sft",)


# ---------------------------------------------------------------- methods

@cache
def methods() -> dict[str, types.ModuleType]:
    """Method name -> module: every core/train/<name>.py that defines `Config` and `train` at its top level.
    Each file's source is read first, so that listing the methods (the Launch page does) imports no
    transformers: runtime.py and distributed.py do at import, and they are not methods."""
    found = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        if {"Config", "train"} <= {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}:
            found[path.stem] = importlib.import_module(f"tunelab.train.{path.stem}")
    return found


def config_class(method: str) -> type[RunConfig]:
    known = methods()
    if method not in known:
        raise UserError(f"key 'method': unknown method {method!r}; known: {', '.join(sorted(known))}")
    return known[method].Config


# ---------------------------------------------------------------- parsing (checks in core/configs.py)

def parse_yaml(text: str, source: str = "config", overrides: dict | None = None) -> RunConfig:
    """The config in a YAML text, checked key by key, with `overrides` (from flags: `{'lora': {'r': 16}}`) on
    top, checked the same way. Errors name the file and line, or the flag, and the key."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of keys to values at the top level")
    overrides = overrides or {}
    places = configs.key_lines(text, source) | configs.flag_places(overrides)
    return from_dict(configs.merge(raw, overrides), source, places)


def load_file(path: str | Path, overrides: dict | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    return parse_yaml(path.read_text(), str(path), overrides)


def from_dict(raw: dict, source: str = "config", places: dict[str, str] | None = None) -> RunConfig:
    """Build the method's Config from a mapping (YAML, flags or a form), rejecting unknown keys and wrong types."""
    places = places or {}
    method = raw.get("method", "sft")
    where = f"{places.get('method', source)}: key 'method'"
    if not isinstance(method, str):
        raise UserError(f"{where}: must be a method name, got {method!r}")
    try:
        cls = config_class(method)
    except UserError as exc:
        raise UserError(f"{where}: {str(exc).split(': ', 1)[1]}") from None
    return configs.from_mapping(cls, raw, source, places, owner=f" for method {method!r}")


# ---------------------------------------------------------------- resolution against the workspace

def resolve(db, ws, cfg: RunConfig) -> RunConfig:
    """Check the model, dataset and init_from exist and fit; pin the dataset version. Raises UserError."""
    from tunelab import datasets, models

    if cfg.init_from:
        row = db.execute("SELECT r.base_model, j.status, r.folder FROM runs r JOIN jobs j ON j.kind = 'train' "
                         "AND j.target = r.id WHERE r.id = ?", [cfg.init_from]).fetchone()
        if row is None:
            raise UserError(f"key 'init_from': no run {cfg.init_from!r}")
        base, status, folder = row
        if status != "completed" or not (Path(folder) / "final").is_dir():
            raise UserError(f"key 'init_from': run {cfg.init_from} is {status}, and only a completed run's "
                            "result can be a starting point")
        if cfg.base_model != base:
            raise UserError(f"key 'base_model': {cfg.base_model!r} differs from the base of init_from run "
                            f"{cfg.init_from} ({base!r})")
    try:
        models.get_model(db, cfg.base_model)
    except UserError as exc:
        raise UserError(f"key 'base_model': {exc}") from None
    try:
        version = datasets.resolve(db, ws, cfg.dataset)
    except UserError as exc:
        raise UserError(f"key 'dataset': {exc}") from None
    if version.kind not in cfg.dataset_kinds:
        raise UserError(f"key 'dataset': {version.ref} is a {version.kind!r} dataset; method {cfg.method!r} "
                        f"trains on {' or '.join(cfg.dataset_kinds)} datasets")
    if cfg.tuning == "qlora":
        check_qlora()
    cfg = dataclasses.replace(cfg, dataset=version.ref)
    cfg = resolve_backend(cfg)
    # A method with keys of its own that name other things (e.g. grpo's reward_model run) checks them here.
    method_resolve = getattr(methods()[cfg.method], "resolve", None)
    return method_resolve(db, ws, cfg) if method_resolve else cfg


def resolve_backend(cfg: RunConfig) -> RunConfig:
    """Check the backend and data-parallel keys fit together and the machine or cluster; pin the Ray ones."""
    if cfg.num_workers > 1 and cfg.backend != "ray":
        raise UserError("key 'num_workers': data-parallel workers are for backend ray; on this machine use "
                        "num_processes")
    if cfg.num_workers > 1 and cfg.gpus_per_worker and cfg.gpus_per_worker != int(cfg.gpus_per_worker):
        raise UserError(f"key 'gpus_per_worker': {cfg.gpus_per_worker:g} GPU per worker would let Ray put two of the "
                        f"{cfg.num_workers} workers on one GPU, and NCCL cannot run two ranks on one device; use a "
                        "whole number of GPUs per worker (or 0 for CPU workers), or num_workers: 1 to share a GPU")
    if cfg.num_processes > 1 and cfg.backend != "local":
        raise UserError("key 'num_processes': several processes on this machine are for backend local; on a Ray "
                        "cluster use num_workers")
    if max(cfg.num_workers, cfg.num_processes) > 1 and cfg.tuning == "qlora":
        raise UserError("key 'tuning': qlora trains in one process only (its 4-bit base is placed on GPU 0); use "
                        "lora for data-parallel runs")
    if cfg.num_processes > 1:
        import torch
        if torch.cuda.is_available() and cfg.num_processes > torch.cuda.device_count():
            raise UserError(f"key 'num_processes': {cfg.num_processes} processes need as many GPUs, and this machine "
                            f"has {torch.cuda.device_count()}")
    if cfg.backend == "ray":
        from tunelab import ray_backend
        return ray_backend.resolve(cfg)
    return cfg


def check_qlora() -> None:
    """QLoRA's 4-bit base needs bitsandbytes kernels, which need CUDA: refuse early and say why."""
    import importlib.util

    import torch
    if not torch.cuda.is_available():
        raise UserError("key 'tuning': qlora needs a CUDA GPU (its 4-bit base uses bitsandbytes' CUDA kernels) "
                        "and this machine has none; use tuning: lora, which trains the same adapters on a "
                        "full-precision base")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("key 'tuning': qlora needs the bitsandbytes package: pip install bitsandbytes")


# ---------------------------------------------------------------- output

def to_dict(cfg: RunConfig) -> dict:
    """Field order as declared, method first; lora nested."""
    d = dataclasses.asdict(cfg)
    return {"method": d.pop("method"), **d}


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def diff(configs: dict[str, dict]) -> dict[str, dict[str, object]]:
    """Only the keys whose values differ between the configs: key -> {run id: value}."""
    flats = {rid: flat(c) for rid, c in configs.items()}
    keys = list(dict.fromkeys(k for f in flats.values() for k in f))
    return {k: {rid: f.get(k) for rid, f in flats.items()} for k in keys
            if len({repr(f.get(k)) for f in flats.values()}) > 1}
