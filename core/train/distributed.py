"""Data-parallel training: one run over N processes (ranks), each holding a whole copy of the model.

    backend: ray,   num_workers: N    Ray Train's TorchTrainer starts N workers on the cluster
    backend: local, num_processes: N  N processes on this machine (one per GPU; gloo on CPU)

The run process (`python -m tunelab.jobs <job id>`, runtime.run_job) stays the one that reports the outcome:
`train(ctx)` here starts the ranks and waits for them. Each rank runs the method's own `train(ctx)`
unchanged: the launcher sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, transformers' Trainer
joins the process group, gives each rank its share of every batch (the effective batch is N times
per_device_train_batch_size) and averages the gradients. Only rank 0 writes status.json,
metrics.jsonl, checkpoints and final/, so resume and charts work as for one process.

Local ranks are started with torch.multiprocessing rather than torchrun: torchrun puts each rank in a
session of its own, out of reach of the SIGKILL that tunelab.runs sends the run's process group after a
stop's grace period; these ranks stay in the run's group.

Stopping: the run process gets SIGTERM as a single-process run does, and writes `stop.request` in the
run folder. Every rank checks it (and a SIGTERM of its own) at each step end, and the ranks agree by an
all-reduce, so that they all save the same checkpoint and leave the loop at the same step.

With remote storage (core/remote.py: a cluster that shares no disk with the studio) the run folder is a
local copy on each node: each Ray Train rank makes its own from the storage URI (inputs, the latest
checkpoint), rank 0 copies its reports, checkpoints and final/ back, the stop request is an object in
storage that rank 0 polls, and Ray Train keeps its own state under the same URI (`storage_path`).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path

from tunelab.train import config as configmod
from tunelab.train import runtime
from tunelab.workspace import Workspace

STOP_FILE = "stop.request"


def wanted(cfg: configmod.RunConfig) -> bool:
    """Does this run train over several ranks (rather than in the run process itself)?"""
    return (cfg.backend == "ray" and cfg.num_workers > 1) or cfg.num_processes > 1


# ---------------------------------------------------------------- the run process

def train(ctx: runtime.RunContext) -> None:
    """Start the ranks, wait for them, and raise Stopped if a stop was asked for."""
    stop_file = ctx.folder / STOP_FILE
    stop_file.unlink(missing_ok=True)
    done = threading.Event()

    def forward_stop():  # runtime.run_job's SIGTERM handler only sets the flag while `training` is true
        while not done.wait(0.2):
            if ctx.stop_requested:
                ctx.mirror.request_stop() if ctx.mirror is not None else stop_file.touch()
                return

    ctx.training = True
    forwarder = threading.Thread(target=forward_stop, daemon=True)
    forwarder.start()
    try:
        if ctx.cfg.backend == "ray":
            _run_ray(ctx)
        else:
            _run_local(ctx)
    except Exception:
        if not ctx.stop_requested:  # a rank killed by the stop is no failure
            raise
    finally:
        done.set()
        forwarder.join()  # else a touch already under way could land after the unlink below
        ctx.training = False
        stop_file.unlink(missing_ok=True)
    if ctx.stop_requested:
        raise runtime.Stopped()
    if not (ctx.mirror.has_final() if ctx.mirror is not None else (ctx.folder / "final").is_dir()):
        raise RuntimeError("the ranks ended without saving final/ (see train.log)")


def _run_local(ctx: runtime.RunContext) -> None:
    import torch.multiprocessing as mp

    n = ctx.cfg.num_processes
    with socket.socket() as s:  # the rendezvous port for the ranks' process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx.phase(f"starting {n} processes (data parallel on this machine)")
    try:
        mp.start_processes(_local_rank, args=(str(ctx.folder), os.getpid(), n, port), nprocs=n,
                           start_method="spawn")
    except mp.ProcessRaisedException as exc:
        lines = [x for x in str(exc).strip().splitlines() if x.strip()]
        raise RuntimeError(f"rank {exc.error_index} failed: {lines[-1] if lines else exc}") from None


def _run_ray(ctx: runtime.RunContext) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = ctx.cfg
    ctx.phase(f"starting {cfg.num_workers} Ray Train workers ({cfg.cpus_per_worker:g} CPU, "
              f"{cfg.gpus_per_worker:g} GPU each)")
    graceful = signal.getsignal(signal.SIGTERM)
    ray.init()  # a Ray job's own cluster (RAY_ADDRESS is set for it); the workers' lines come to train.log
    signal.signal(signal.SIGTERM, graceful)  # ray.init's own handler exits at once, mid-step
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}
    if ctx.mirror is None:
        loop_config = {"folder": str(ctx.folder), "owner_pid": os.getpid()}
        # Ray Train keeps a little state of its own; checkpoints and metrics go where a local run's go.
        run_config = RunConfig(name="ray_train", storage_path=str(ctx.folder))
    else:  # each rank makes its own run folder from the storage URI; Ray Train's state goes there too
        loop_config = {"mirror": ctx.mirror.spec(), "owner_pid": os.getpid()}
        run_config = RunConfig(name="ray_train", storage_path=ctx.mirror.store.path(ctx.mirror.prefix),
                               storage_filesystem=ctx.mirror.store.fs)
    trainer = TorchTrainer(
        _ray_rank, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=bool(cfg.gpus_per_worker),
                                     resources_per_worker=resources),
        run_config=run_config)
    try:
        trainer.fit()
    except Exception as exc:
        # Ray wraps the rank's exception; its last line is the one a person can act on.
        lines = [x for x in str(exc).strip().splitlines() if x.strip()]
        raise RuntimeError(f"a Ray Train worker failed: {lines[-1] if lines else type(exc).__name__}") from None


# ---------------------------------------------------------------- the ranks

def _local_rank(rank: int, folder: str, owner_pid: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # the cores are shared, not multiplied
    _rank_main(Path(folder), owner_pid, own_signals=True)


def _ray_rank(config: dict) -> None:
    # Ray Train runs this in a thread (no signal handlers there); stops arrive through stop.request.
    if "mirror" in config:
        from tunelab import remote
        remote.train_rank(config["mirror"], config["owner_pid"])
    else:
        _rank_main(Path(config["folder"]), config["owner_pid"], own_signals=False)


def _rank_main(folder: Path, owner_pid: int, own_signals: bool) -> None:
    from tunelab import db as dbmod  # not on a cluster without the workspace (remote.train_rank)
    ws = Workspace(folder.parent.parent)
    db = dbmod.connect(ws.db_path)
    try:
        train_rank(RankContext(folder, db, ws, configmod.load_file(folder / "config.yaml"), int(os.environ["RANK"]),
                               owner_pid), own_signals)
    finally:
        db.close()


def train_rank(ctx: RankContext, own_signals: bool) -> None:
    """Run the method's training as one rank; a stop ends it quietly (the run process reports it)."""
    import torch
    if not torch.cuda.is_available():
        # Without it transformers treats a CPU process as a lone one and each rank trains its own copy.
        os.environ["ACCELERATE_USE_CPU"] = "true"
    if ctx.rank:
        sys.stdout = open(os.devnull, "w")  # rank 0 speaks for all; errors still reach stderr
    if own_signals:
        def on_sigterm(signum, frame):
            ctx.stop_requested = True
            if not ctx.training:
                raise runtime.Stopped()
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        configmod.methods()[ctx.cfg.method].train(ctx)
    except runtime.Stopped:
        pass  # the run process reports the stop


class RankContext(runtime.RunContext):
    """A rank's RunContext: reports as the run process (its pid), through rank 0 only, and stops in step."""

    def __init__(self, folder, db, ws, cfg, rank: int, owner_pid: int, inputs: dict | None = None, mirror=None):
        super().__init__(folder, db, ws, cfg, inputs, mirror)
        self.rank = rank
        self.status["pid"] = owner_pid

    def fit(self, trainer, restore=None) -> None:
        world = int(os.environ["WORLD_SIZE"])
        if trainer.args.world_size != world:  # else each rank would train a copy of its own, silently
            raise RuntimeError(f"transformers sees {trainer.args.world_size} process(es), not the {world} ranks")
        self.report(world_size=world)
        trainer.add_callback(StopTogether(self))  # before MetricsCallback, which acts on the agreed flag
        super().fit(trainer, restore)


class StopTogether(runtime._metrics_callback_base()):
    """All ranks stop at the same step end if any was asked to (a rank stopping alone would leave the
    others waiting in the next gradient all-reduce)."""

    def __init__(self, ctx: RankContext):
        self.ctx = ctx
        self.stop_file = ctx.folder / STOP_FILE

    def on_step_end(self, args, state, control, **kwargs):
        import torch
        import torch.distributed as dist
        flag = torch.tensor([float(self.ctx.stop_requested or self.stop_file.exists())], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.ctx.stop_requested = bool(flag.item())
        return control
