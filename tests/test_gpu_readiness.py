"""The CUDA paths, checked on CPU: the choices tunelab makes for a GPU are pure functions of what the machine
reports (compute capability, CUDA_VISIBLE_DEVICES, the config), so they are tested with given values here.
bench/gpu.sh runs the real thing on a GPU machine."""
import signal
import subprocess
from pathlib import Path

import pytest

from tunelab import precision
from tunelab.errors import UserError
from tunelab.train import config as configmod
from tunelab.train import reward, runtime

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("capability, expected", [
    ((9, 0), "bf16"),   # H100, H200
    ((8, 0), "bf16"),   # A100: native bf16 starts here
    ((8, 6), "bf16"),   # RTX 30xx, A10
    ((7, 5), "fp16"),   # T4: torch.cuda.is_bf16_supported() says yes, but emulates it
    ((7, 0), "fp16"),   # V100
    (None, None),       # CPU: neither
])
def test_mixed_precision_follows_the_compute_capability(capability, expected):
    assert precision.mixed_precision(capability) == expected


def test_this_cpu_machine_trains_in_float32():
    dev = runtime.device()
    assert dev["kind"] == "cpu" and dev["bf16"] is False and dev["fp16"] is False


def test_a_reward_run_on_a_t4_uses_fp16_and_keeps_liger_off_the_classifier_forward(tmp_path):
    """Liger's fused linear cross-entropy swaps the model's forward for a causal LM's, which calls lm_head:
    a reward model (a sequence classifier) has none, and TRL's RewardTrainer, unlike its other trainers, does
    not turn it off. The args transformers hands to Liger must keep it off."""
    from trl import RewardConfig
    ctx = runtime.RunContext(tmp_path, None, None, reward.Config(base_model="m", dataset="d"), inputs={})
    pre_ampere = precision.mixed_precision((7, 5))
    ctx.device = {"kind": "cuda", "bf16": pre_ampere == "bf16", "fp16": pre_ampere == "fp16", "name": "Tesla T4"}
    args = RewardConfig(**ctx.training_args(has_eval=False), max_length=64)
    assert args.fp16 is True and args.bf16 is False
    assert args.liger_kernel_config == {"fused_linear_cross_entropy": False}


@pytest.mark.parametrize("visible, one", [
    (None, "0"),                      # every GPU of the host visible: keep the first
    ("3,5", "3"),                     # already narrowed by a scheduler: keep its first
    ("GPU-1b2c,GPU-9f00", "GPU-1b2c"),  # UUIDs work the same
    ("", ""),                         # no GPU allowed stays none
])
def test_a_lone_run_process_sees_one_gpu(visible, one):
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert runtime.one_device(environ) == one


@pytest.mark.parametrize("extra, expected", [("", "3"), ("num_processes: 2\n", "3,5")])
def test_the_run_process_narrows_cuda_visible_devices_before_training(tmp_path, monkeypatch, extra, expected):
    """With several GPUs visible transformers sets n_gpu to all of them and TRL refuses to train; a
    num_processes run's ranks pick their own device, so there the variable stays as it was."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # restored after the test
    (tmp_path / "config.yaml").write_text(f"method: sft\nbase_model: m\ndataset: d\n{extra}")
    seen = {}

    def make_context(folder, cfg):
        import os
        seen["visible"] = os.environ["CUDA_VISIBLE_DEVICES"]
        raise runtime.Stopped()  # before any training

    previous = signal.getsignal(signal.SIGTERM)
    try:
        state, _ = runtime.train_in(tmp_path, make_context)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert state == "stopped" and seen["visible"] == expected


def ray_config(**keys):
    return configmod.from_dict({"method": "sft", "base_model": "m", "dataset": "d", "backend": "ray", **keys})


@pytest.mark.parametrize("gpus", [0.5, 1.5])
def test_fractional_gpus_per_worker_with_several_workers_is_refused(gpus):
    with pytest.raises(UserError, match="key 'gpus_per_worker'.*NCCL"):
        configmod.resolve_backend(ray_config(num_workers=2, gpus_per_worker=gpus))


@pytest.mark.parametrize("keys", [{"num_workers": 2, "gpus_per_worker": 1.0}, {"num_workers": 2, "gpus_per_worker": 0.0},
                                  {"num_workers": 1, "gpus_per_worker": 0.5}])
def test_whole_gpus_or_a_single_worker_pass_that_check(keys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # The next check asks the cluster, and there is none to ask here: that is the error left.
    with pytest.raises(UserError) as err:
        configmod.resolve_backend(ray_config(**keys))
    assert "gpus_per_worker" not in str(err.value) and ("ray_address" in str(err.value) or "'backend'" in str(err.value))


def gpu_sh(*args, cwd=REPO):
    return subprocess.run(["bash", "bench/gpu.sh", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.process
@pytest.mark.timeout(120)
def test_gpu_sh_gives_each_bench_the_options_it_takes():
    assert subprocess.run(["bash", "-n", "bench/gpu.sh"], cwd=REPO).returncode == 0
    out = gpu_sh("args", "--rows", "64", "--max-steps=4", "--setups", "plain,tunelab", "--tuning", "full")
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["bench/train_throughput.py"] == "--rows 64 --max-steps 4 --setups plain,tunelab"
    assert lines["bench/cpu_limit.py"] == "--rows 64 --max-steps 4 --tuning full"
    for bad, says in ((["--bogus", "1"], "no bench takes --bogus"), (["--rows"], "--rows needs a value"),
                      (["stray"], "unexpected argument")):
        out = gpu_sh("args", *bad)
        assert out.returncode == 2 and says in out.stderr


def test_gpu_sh_carries_bitsandbytes_for_qlora():
    text = (REPO / "bench" / "gpu.sh").read_text()
    packages = text.split('PACKAGES="', 1)[1].split('"', 1)[0].split()
    assert "bitsandbytes" in packages
    assert "manylinux_2_24_x86_64" in text  # bitsandbytes' wheel tag; without it pip takes a 105 MB old one


def test_models_answer_in_half_precision_where_the_cpu_has_it_and_the_override_wins(monkeypatch, tiny_model_dir):
    import torch
    from tunelab import generate
    monkeypatch.delenv("TUNELAB_INFERENCE_DTYPE", raising=False)
    native = precision.cpu_has_native_bf16()
    assert precision.inference_dtype() == (torch.bfloat16 if native else torch.float32)
    assert generate.load(tiny_model_dir)[0].dtype == precision.inference_dtype()
    monkeypatch.setenv("TUNELAB_INFERENCE_DTYPE", "float32")
    assert generate.load(tiny_model_dir)[0].dtype == torch.float32
    monkeypatch.setenv("TUNELAB_INFERENCE_DTYPE", "half")
    with pytest.raises(UserError, match="TUNELAB_INFERENCE_DTYPE='half': choose one of float32, bfloat16, float16"):
        precision.inference_dtype()
