"""`tunelab serve`: the tiny model and a tiny LoRA adapter served by `transformers serve` as a real process,
called with the `openai` client (plain and streaming) under the model name tunelab prints; the adapter's
merged copy is written once; the vLLM command where a GPU would run it; bad choices exit 2."""
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from safetensors.torch import load_file

from tunelab import runs
from tests.conftest import REPO, _free_port, make_dataset, run_cli, stop_leftover_runs


@pytest.fixture
def adapter_run(tiny_model, tmp_path):
    """A completed two-step LoRA run on the tiny model: yields (db, ws, run id)."""
    db, ws, _ = tiny_model
    ref = make_dataset(db, ws, tmp_path).ref
    run_id = runs.launch(db, ws, {"base_model": "tiny", "dataset": ref, "max_steps": 2, "learning_rate": 5e-2,
                                  "per_device_train_batch_size": 2, "max_length": 64, "save_steps": 100,
                                  "eval_steps": 100, "warmup_ratio": 0.0, "lora": {"r": 4, "alpha": 8}},
                         estimate=False)
    try:
        run = runs.wait(db, run_id, poll_s=0.5, timeout_s=300)
        assert run.status == "completed", (run.error, runs.log_tail(run))
        yield db, ws, run_id
    finally:
        stop_leftover_runs(db)


class Server:
    """`tunelab serve SPEC` as a process of its own, until `stop`."""

    def __init__(self, home, spec: str, *flags: str):
        self.port = _free_port()
        self.log = open(home.parent / f"serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "serve", spec, "--port", str(self.port),
                                      *flags], cwd=REPO, env=dict(os.environ, TUNELAB_HOME=str(home)),
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError(f"tunelab serve did not start:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def printed(self, key: str) -> str:
        return re.search(rf"^{key}: (\S+)$", self.output(), re.M).group(1)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and anything it started
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def chat_both_ways(server: Server, expected_model: str) -> None:
    """The printed URL and model answer through the openai client, in one piece and streamed."""
    from openai import BadRequestError, OpenAI
    url, model = server.printed("url"), server.printed("model")
    assert (url, model) == (f"http://127.0.0.1:{server.port}/v1", expected_model)
    client = OpenAI(base_url=url, api_key="unused")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=6)
    assert reply.choices[0].message.role == "assistant" and isinstance(reply.choices[0].message.content, str)
    assert reply.usage.completion_tokens == 6 and reply.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=6, stream=True))
    assert len(chunks) >= 3 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 1
    with pytest.raises(BadRequestError):  # another model name is refused, not silently served
        client.chat.completions.create(model="someone-else", messages=messages, max_tokens=2)


@pytest.mark.process
@pytest.mark.timeout(300)
def test_serves_a_base_model_to_the_openai_client(tiny_model):
    _, ws, _ = tiny_model
    server = Server(ws.home, "tiny")
    try:
        chat_both_ways(server, "tiny")
        assert "engine: transformers" in server.output()
    finally:
        server.stop()
    assert server.proc.returncode is not None


@pytest.mark.process
@pytest.mark.timeout(600)
def test_serves_an_adapter_as_a_merged_copy_made_once(adapter_run, tiny_model_dir):
    db, ws, run_id = adapter_run
    spec = f"tiny+{run_id}"
    server = Server(ws.home, spec)
    try:
        chat_both_ways(server, spec)
    finally:
        server.stop()

    # The served folder is base + scale·B·A in every adapted layer (hand-computed from the run's adapter).
    folder = ws.home / "serve" / spec
    merged, base = load_file(folder / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    adapter = load_file(ws.runs_dir / run_id / "final" / "adapter_model.safetensors")
    layers = [k[len("base_model.model."):-len(".lora_A.weight")] for k in adapter if k.endswith("lora_A.weight")]
    assert layers
    for layer in layers:
        delta = 2.0 * adapter[f"base_model.model.{layer}.lora_B.weight"] @ adapter[f"base_model.model.{layer}.lora_A.weight"]
        torch.testing.assert_close(merged[f"{layer}.weight"], base[f"{layer}.weight"] + delta)
    assert any(not torch.equal(merged[f"{layer}.weight"], base[f"{layer}.weight"]) for layer in layers)

    # A second start reuses the copy: nothing is merged or written again.
    written = (folder / "model.safetensors").stat().st_mtime_ns
    again = run_cli("serve", spec, "--dry-run", env_home=ws.home)
    assert again.returncode == 0, again.stderr
    assert (folder / "model.safetensors").stat().st_mtime_ns == written


@pytest.mark.process
@pytest.mark.timeout(300)
def test_vllm_command_serves_the_adapter_unmerged(adapter_run, tiny_model_dir):
    """No GPU or vllm here: the command is built (--dry-run) but not run; a real start is refused, exit 2."""
    _, ws, run_id = adapter_run
    spec = f"tiny+{run_id}"
    done = run_cli("serve", spec, "--engine", "vllm", "--dry-run", "--port", "9001", env_home=ws.home)
    assert done.returncode == 0, done.stderr
    command = re.search(r"^engine: vllm \(in .*\): (.*)$", done.stdout, re.M).group(1).split()
    final = ws.runs_dir / run_id / "final"
    assert command[1:] == ["serve", str(tiny_model_dir.resolve()), "--host", "127.0.0.1", "--port", "9001", "--served-model-name", "tiny", "--enable-lora",
                           "--lora-modules", f"{spec}={final}", "--max-lora-rank", "8"]
    assert f"model: {spec}" in done.stdout
    if not torch.cuda.is_available():
        started = run_cli("serve", spec, "--engine", "vllm", env_home=ws.home)
        assert started.returncode == 2 and "--engine vllm: the vllm command is not installed" in started.stderr


@pytest.mark.process
@pytest.mark.timeout(120)
@pytest.mark.parametrize("args, message", [
    (["nope"], "model 'nope' is not registered"),
    (["tiny+r99"], "there is no run 'r99'"),
    (["tiny", "--port", "70000"], "--port 70000"),
])
def test_bad_choices_exit_2(tiny_model, args, message):
    _, ws, _ = tiny_model
    done = run_cli("serve", *args, "--dry-run", env_home=ws.home)
    assert done.returncode == 2 and message in done.stderr, done.stderr


@pytest.mark.process
@pytest.mark.timeout(120)
def test_another_address_is_explicit_and_warned(tiny_model):
    _, ws, _ = tiny_model
    local = run_cli("serve", "tiny", "--dry-run", env_home=ws.home)
    assert "--host 127.0.0.1" in local.stdout and "warning" not in local.stderr
    shared = run_cli("serve", "tiny", "--dry-run", "--host", "0.0.0.0", env_home=ws.home)
    assert "url: http://0.0.0.0:8000/v1" in shared.stdout and "warning: serving on 0.0.0.0" in shared.stderr
