"""What every method's run process shares, so that a method module only builds its TRL trainer.

The job runner (`python -m tunelab.jobs <job id>`) calls `run_job`, which reads `config.yaml`, hands a `RunContext`
to the method's `train(ctx)`, and reports the outcome. The context loads the base model (full, LoRA or
QLoRA, optionally from an earlier run's result), the dataset splits, the common TrainingArguments, and
runs the trainer with `ctx.fit(trainer)`: resume from the latest checkpoint, a graceful stop on SIGTERM,
metrics.jsonl and status.json written by a TrainerCallback, and the result saved in `final/`.

This code never changes the run's status, and imports nothing from tunelab.jobs or tunelab.runs: it reports
through the run folder (status.json, metrics.jsonl) and returns the outcome to the job runner, which
records it. What it trains on comes as paths (`resolve_inputs`: the base model, init_from's result, the
dataset version's folder), so that a cluster without the workspace (core/remote.py) trains through the
same `train_in` with downloaded copies and no database, and a `mirror` copies its reports, checkpoints
and result to remote storage.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import time
import traceback
from pathlib import Path

from tunelab.errors import UserError
from tunelab.folders import latest_checkpoint, read_status, write_json_atomic
from tunelab.precision import mixed_precision
from tunelab.train import config as configmod
from tunelab.train import speedups
from tunelab.workspace import Workspace

SAVE_TOTAL_LIMIT = 2  # resume needs only the latest; one more in case the last save was cut short


class Stopped(Exception):
    """A stop was requested (SIGTERM) before or during training."""


class NaNLoss(Exception):
    """The loss, gradient norm or eval loss stopped being a finite number: the run has diverged."""


def device() -> dict:
    """Where this process trains, and in which mixed precision (see mixed_precision)."""
    import torch
    cuda = torch.cuda.is_available()
    precision = mixed_precision(torch.cuda.get_device_capability(0) if cuda else None)
    return {"kind": "cuda" if cuda else "cpu", "bf16": precision == "bf16", "fp16": precision == "fp16",
            "name": torch.cuda.get_device_name(0) if cuda else "cpu"}


def one_device(environ) -> str:
    """CUDA_VISIBLE_DEVICES for a run process that trains by itself: the first device it may see.

    With several GPUs visible, transformers sets n_gpu to all of them and wraps the model in nn.DataParallel,
    which TRL's trainers refuse; data parallelism is num_processes' or num_workers' job (distributed.py).
    An empty value (no GPU allowed) stays empty."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    return "0" if visible is None else visible.split(",")[0].strip()


# ---------------------------------------------------------------- the context a method trains with

class RunContext:
    rank = 0  # a data-parallel rank's number (core/train/distributed.py); only rank 0 writes reports

    def __init__(self, folder: Path, db, ws: Workspace | None, cfg: configmod.RunConfig, inputs: dict | None = None,
                 mirror=None):
        self.folder = folder
        self.db = db  # None on a cluster without the workspace (core/remote.py)
        self.ws = ws
        self.cfg = cfg
        self.inputs = inputs if inputs is not None else resolve_inputs(db, ws, cfg)
        self.mirror = mirror  # core/remote.Mirror: copies reports, checkpoints and final/ to remote storage
        self.run_id = folder.name
        self.device = device()
        speedups.lm_head_on_labelled_positions_only()  # every method's process trains through this context
        self.stop_requested = False
        self.training = False
        self.status: dict = {"run_id": self.run_id, "state": "running", "pid": os.getpid(), "step": 0,
                             "max_steps": None, "progress": 0.0, "device": self.device["name"]}

    # -- reporting

    def report(self, **fields) -> None:
        self.status.update(fields, updated_at=time.time())
        if self.rank == 0:
            write_json_atomic(self.folder / "status.json", self.status)

    def phase(self, message: str) -> None:
        print(f"[tunelab {time.strftime('%H:%M:%S')} pid {os.getpid()}] {message}", flush=True)
        self.report(phase=message)

    # -- inputs

    def base_dir(self) -> Path:
        return Path(self.inputs["base_model"])

    def init_dir(self) -> Path | None:
        """The result folder of init_from's run, when set."""
        return Path(self.inputs["init"]) if self.inputs.get("init") else None

    def model_source(self, what: str = ""):
        """(model_dir, init_adapter, tokenizer, dtype): where the starting weights come from, for every method.

        init_from's result when it is a full model; else the base, with init_from's adapter (if any) to apply.
        Full tuning keeps fp32 master weights; a frozen LoRA base may sit in bf16 where the GPU has it.
        """
        import torch
        from transformers import AutoTokenizer

        cfg = self.cfg
        self.phase(f"loading {cfg.base_model}{what}" + (f" from run {cfg.init_from}" if cfg.init_from else ""))
        init = self.init_dir()
        init_adapter = init if init is not None and (init / "adapter_config.json").exists() else None
        model_dir = init if init is not None and init_adapter is None else self.base_dir()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        dtype = torch.bfloat16 if self.device["bf16"] and cfg.tuning != "full" else torch.float32
        return model_dir, init_adapter, tokenizer, dtype

    def load_model(self):
        """(model, tokenizer, peft_config): the base, or init_from's result, set up for cfg.tuning.

        A fresh LoRA/QLoRA run returns a LoraConfig for TRL to wrap the model with; starting from an earlier
        LoRA run loads its adapter as trainable instead (or merges it in, for full tuning).
        """
        import torch
        from transformers import AutoModelForCausalLM

        cfg = self.cfg
        model_dir, init, tokenizer, dtype = self.model_source()
        kwargs: dict = {"dtype": dtype}
        if cfg.tuning == "qlora":
            configmod.check_qlora()
            from transformers import BitsAndBytesConfig
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if self.device["bf16"] else torch.float16)
            kwargs["device_map"] = {"": 0}
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
        if init is not None:
            from peft import PeftModel
            if cfg.tuning == "full":
                return PeftModel.from_pretrained(model, str(init)).merge_and_unload(), tokenizer, None
            if cfg.tuning == "qlora":
                from peft import prepare_model_for_kbit_training
                model = prepare_model_for_kbit_training(model, cfg.gradient_checkpointing)
            return PeftModel.from_pretrained(model, str(init), is_trainable=True), tokenizer, None
        if cfg.tuning == "full":
            return model, tokenizer, None
        from peft import LoraConfig
        lora = cfg.lora
        peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=lora.target_modules, task_type="CAUSAL_LM")
        return model, tokenizer, peft_config

    def dataset_rows(self) -> dict[str, list[dict]]:
        """Split name -> canonical rows of the pinned dataset version."""
        return dataset_rows(Path(self.inputs["dataset"]))

    def training_args(self, has_eval: bool) -> dict:
        """TrainingArguments every TRL config takes, from the shared keys."""
        cfg = self.cfg
        return dict(
            output_dir=str(self.folder),
            learning_rate=cfg.learning_rate,
            max_steps=cfg.max_steps,
            num_train_epochs=cfg.num_train_epochs,
            per_device_train_batch_size=cfg.per_device_train_batch_size,
            per_device_eval_batch_size=cfg.per_device_train_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            lr_scheduler_type=cfg.lr_scheduler_type,
            warmup_steps=cfg.warmup_ratio,  # transformers 5: a value below 1 is a fraction of the steps
            logging_strategy="steps",
            logging_steps=cfg.logging_steps,
            save_strategy="steps",
            save_steps=cfg.save_steps,
            save_total_limit=SAVE_TOTAL_LIMIT,
            eval_strategy="steps" if has_eval else "no",
            eval_steps=cfg.eval_steps,
            seed=cfg.seed,
            data_seed=cfg.seed,
            gradient_checkpointing=cfg.gradient_checkpointing,
            bf16=self.device["bf16"],
            fp16=self.device["fp16"],
            # Liger's fused RMSNorm, SwiGLU and RoPE kernels (Triton): on a GPU, where `pip install liger-kernel`
            # put them. Its fused linear cross-entropy stays off for every method: it replaces the model's forward
            # with a causal LM's, which calls lm_head, and a reward model is a sequence classifier without one
            # (TRL turns it off for its other trainers, RewardTrainer does not); TRL keeps its own fused LM head.
            use_liger_kernel=self.device["kind"] == "cuda" and importlib.util.find_spec("liger_kernel") is not None,
            liger_kernel_config={"fused_linear_cross_entropy": False},
            dataloader_pin_memory=self.device["kind"] == "cuda",
            report_to="none",
            logging_nan_inf_filter=False,  # a NaN loss must show (and fail the run), not be averaged away
            disable_tqdm=True,  # train.log gets one readable line per logging step instead
        )

    # -- running

    def fit(self, trainer, restore=None) -> None:
        """Train (resuming from the latest checkpoint if any), then save the result in final/.

        `restore()` runs before the final save, to undo training-only changes (e.g. a marked chat template).
        """
        resume = latest_checkpoint(self.folder)
        if resume:
            self.phase(f"resuming from {resume[1].name}")
        if self.rank == 0:
            truncate_metrics(self.folder / "metrics.jsonl", resume[0] if resume else 0)
        from transformers.trainer_callback import PrinterCallback
        trainer.remove_callback(PrinterCallback)  # MetricsCallback prints a shorter line per log step
        trainer.add_callback(MetricsCallback(self))
        if self.mirror is not None and self.rank == 0:
            trainer.add_callback(self.mirror.checkpoint_callback())
        self.training = True
        trainer.train(resume_from_checkpoint=str(resume[1]) if resume else None)
        self.training = False
        if self.stop_requested:
            raise Stopped()
        self.phase("saving the result to final/")
        final = self.folder / "final"
        if restore is not None:
            restore()
        trainer.save_model(str(final))  # the adapter alone (PEFT format) or the whole model, with the tokenizer
        if self.mirror is not None and self.rank == 0:
            self.mirror.push_final(final)


def resolve_inputs(db, ws: Workspace, cfg: configmod.RunConfig) -> dict[str, Path | None]:
    """The folders a run trains from: base_model, init (init_from's final/, or None), dataset (the pinned
    version's folder of <split>.jsonl files, its content hash checked), and for GRPO and RLOO reward (the
    reward run's final/) and reward_base (the base its adapter sits on, or None for a whole model)."""
    from tunelab import datasets, models
    init = None
    if cfg.init_from:
        row = db.execute("SELECT folder FROM runs WHERE id = ?", [cfg.init_from]).fetchone()
        if row is None or not (Path(row[0]) / "final").is_dir():
            raise UserError(f"key 'init_from': run {cfg.init_from} has no result in its final/ folder")
        init = Path(row[0]) / "final"
    split_files = datasets.resolve(db, ws, cfg.dataset).files  # checked against the version's content hash
    inputs = {"base_model": models.model_path(db, ws, cfg.base_model), "init": init,
              "dataset": next(iter(split_files.values())).parent}
    if getattr(cfg, "reward_model", None):  # GRPO and RLOO score answers with a reward run's result
        from tunelab import evaluate
        from tunelab.train import reward
        inputs["reward"] = reward.reward_dir(ws, cfg.reward_model)
        inputs["reward_base"] = evaluate.reward_base(inputs["reward"], db, ws)
    return inputs


def dataset_rows(folder: Path) -> dict[str, list[dict]]:
    """Split name -> rows, from a dataset version's folder (or a copy of it)."""
    from tunelab.datasets.store import SPLITS
    out = {}
    for split in SPLITS:
        path = Path(folder) / f"{split}.jsonl"
        if path.exists():
            with open(path, encoding="utf-8") as fh:
                out[split] = [json.loads(line) for line in fh if line.strip()]
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines past the checkpoint we resume from: those steps are trained again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


# Logged keys that are bookkeeping rather than training signal, or already in a metrics line under another name.
_NOT_METRICS = {"loss", "eval_loss", "learning_rate", "grad_norm", "epoch", "num_tokens", "eval_num_tokens",
                "total_flos", "step_time"}


def method_metrics(logs: dict) -> dict:
    """What a method's trainer logs beyond the loss (reward accuracy, DPO rewards/margins, GRPO reward and kl,
    ...), so that every method's charts come from metrics.jsonl; timings and non-numbers are left out."""
    return {k: float(v) for k, v in logs.items()
            if k not in _NOT_METRICS and not k.endswith(("_runtime", "_per_second"))
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _metrics_callback_base():
    from transformers import TrainerCallback
    return TrainerCallback


class MetricsCallback(_metrics_callback_base()):
    """metrics.jsonl (a line per logging step, and per evaluation) and status.json; stops on request."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.path = ctx.folder / "metrics.jsonl"
        # Seconds and tokens of earlier attempts, up to the checkpoint this one resumes from.
        lines = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()] if self.path.exists() else []
        self.elapsed_before = max((x.get("elapsed", 0.0) for x in lines), default=0.0)
        self.tokens_before = max((x.get("tokens") or 0 for x in lines), default=0)
        self.start = time.time()
        self.first_step: int | None = None
        self.tokens = self.tokens_before
        self.last_loss: float | None = None
        self.last_eval: float | None = None

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.start

    def _write(self, doc: dict) -> None:
        if self.ctx.rank != 0:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(doc) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self.first_step = state.global_step
        self.ctx.phase(f"training: {state.max_steps} steps" + (f", from step {state.global_step}"
                                                                 if state.global_step else ""))
        self.ctx.report(max_steps=state.max_steps, step=state.global_step,
                        progress=state.global_step / max(1, state.max_steps))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        step = state.global_step
        for key in ("loss", "grad_norm", "eval_loss"):
            if key in logs and logs[key] is not None and not math.isfinite(float(logs[key])):
                raise NaNLoss(f"{key} became {float(logs[key])} at step {step}; lower learning_rate (now "
                              f"{args.learning_rate}) or check the data")
        if "loss" in logs:
            loss = float(logs["loss"])
            if "num_tokens" in logs:  # TRL counts real (non-padding) tokens since this attempt began
                self.tokens = self.tokens_before + int(logs["num_tokens"])
            self.last_loss = loss
            doc = {"kind": "train", "step": step, "loss": loss, "learning_rate": logs.get("learning_rate"),
                   "grad_norm": logs.get("grad_norm"), "tokens": self.tokens, "elapsed": round(self.elapsed(), 3),
                   "epoch": logs.get("epoch"), **method_metrics(logs)}
            self._write(doc)
            self.ctx.report(loss=loss, tokens=self.tokens)
            print(f"step {step}/{state.max_steps} loss {loss:.4f} lr {doc['learning_rate']:.3g} "
                  f"grad_norm {doc['grad_norm'] or 0:.3g} tokens {self.tokens}", flush=True)
        if "eval_loss" in logs:
            self.last_eval = float(logs["eval_loss"])
            self._write({"kind": "eval", "step": step, "eval_loss": self.last_eval,
                         "elapsed": round(self.elapsed(), 3), **method_metrics(logs)})
            print(f"step {step} eval_loss {self.last_eval:.4f}", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        step, total = state.global_step, max(1, state.max_steps)
        done_here = step - (self.first_step or 0)
        spent = time.time() - self.start
        eta = spent / done_here * (total - step) if done_here else None
        self.ctx.report(step=step, max_steps=state.max_steps, progress=step / total,
                        eta_s=round(eta, 1) if eta is not None else None, elapsed_s=round(self.elapsed(), 1),
                        tokens=self.tokens, tokens_per_s=round(self.tokens / self.elapsed(), 2) if self.tokens else None,
                        loss=self.last_loss, eval_loss=self.last_eval)
        if self.ctx.stop_requested:
            # Save a checkpoint at this step, then leave the loop: resume continues from here.
            control.should_save = True
            control.should_training_stop = True
        return control


# ---------------------------------------------------------------- the process

def describe_failure(exc: BaseException) -> str:
    """One line a person can act on; the full traceback is in train.log."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, NaNLoss):
        return f"training diverged: {exc}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return (f"out of memory ({type(exc).__name__}: {text[:200]}); lower per_device_train_batch_size or "
                "max_length, or turn on gradient_checkpointing")
    return f"{type(exc).__name__}: {text[:400]} (traceback in train.log)"


def run_job(db, ws: Workspace, run_id: str, folder: Path) -> tuple[str, str | None]:
    """Run one run folder to its end (the `train` job's entry point); returns (completed | stopped |
    failed, error), also written to status.json."""
    return train_in(folder, lambda folder, cfg: RunContext(folder, db, ws, cfg))


def train_in(folder: Path, make_context) -> tuple[str, str | None]:
    """Train the run folder's config.yaml with the context `make_context(folder, cfg)` gives; a SIGTERM stops
    at the end of the step with a checkpoint. Returns (completed | stopped | failed, error), also written to
    status.json."""
    folder = Path(folder).resolve()
    ctx: RunContext | None = None

    def on_sigterm(signum, frame):
        if ctx is not None:
            ctx.stop_requested = True
            print("[tunelab] stop requested: saving a checkpoint at the end of this step", flush=True)
        if ctx is None or not ctx.training:
            raise Stopped()

    signal.signal(signal.SIGTERM, on_sigterm)
    state, error = "failed", None
    try:
        cfg = configmod.load_file(folder / "config.yaml")
        from tunelab.train import distributed
        if not distributed.wanted(cfg):  # before anything starts CUDA, which reads it once
            os.environ["CUDA_VISIBLE_DEVICES"] = one_device(os.environ)
        ctx = make_context(folder, cfg)
        ctx.report(started_at=time.time(), error=None)
        (distributed.train if distributed.wanted(cfg) else configmod.methods()[cfg.method].train)(ctx)
        state = "completed"
    except Stopped:
        state = "stopped"
    except BaseException as exc:  # any failure is reported; KeyboardInterrupt too
        traceback.print_exc()
        error = describe_failure(exc)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the outcome is being recorded; do not cut it short
    status = read_status(folder)
    status.update(state=state, error=error, finished_at=time.time())
    if state == "completed":
        status["progress"] = 1.0
    write_json_atomic(folder / "status.json", status)
    print(f"[tunelab] run {state}" + (f": {error}" if error else ""), flush=True)
    return state, error
