"""Shared fixtures: a temporary workspace, a tiny random Llama model built locally, the real bundled
model prepared once per test session, and a real Streamlit server driven by Debian's Chromium."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"  # fixtures written by tests/data/make_fixtures.py; never ../shared
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh TUNELAB_HOME with its database: yields (db, ws)."""
    from tunelab import db, workspace as wsmod
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    ws = wsmod.current()
    conn = db.connect(ws.db_path)
    yield conn, ws
    conn.close()


def _build_tiny_model(folder: Path) -> Path:
    """A 2-layer random Llama and a byte-level BPE tokenizer trained on a few sentences, no network."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "The capital of France is Paris.", "user assistant system", "Hello, how are you today?",
        "Give three tips for staying healthy. Eat well, sleep, exercise.", "1 2 3 4 5 6 7 8 9 0",
    ] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return _build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny_model(workspace, tiny_model_dir):
    """The tiny model registered as 'tiny' in the temporary workspace: yields (db, ws, name)."""
    from tunelab import models
    conn, ws = workspace
    models.add_local(conn, tiny_model_dir, "tiny")
    return conn, ws, "tiny"


SAMPLE_SFT = REPO / "data" / "samples" / "acme_router_sft.jsonl"


@pytest.fixture
def sft_data(tiny_model):
    """The bundled sample SFT data imported next to the tiny model: yields (db, ws, ref); no run outlives it."""
    from tunelab import datasets
    db, ws, _ = tiny_model
    yield db, ws, datasets.import_file(db, ws, SAMPLE_SFT, "acme").version.ref
    stop_leftover_runs(db)


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The real SmolLM2-135M-Instruct, prepared once per machine in a cache outside the repo."""
    from tunelab import db, models, workspace as wsmod
    cache = Path(os.environ.get("TUNELAB_TEST_CACHE", Path.home() / ".cache" / "tunelab-tests"))
    ws = wsmod.Workspace(cache).ensure()
    conn = db.connect(ws.db_path)
    path = models.prepare(conn, ws, models.DEFAULT_MODEL)
    conn.close()
    return path


@pytest.fixture
def bundled_model(workspace, bundled_model_dir):
    """The prepared bundled model recorded in the temporary workspace: yields (db, ws, name)."""
    from tunelab import models
    conn, ws = workspace
    models.list_models(conn)  # registers the bundled row
    models._record(conn, models.DEFAULT_MODEL, bundled_model_dir)
    return conn, ws, models.DEFAULT_MODEL


def wait_until(predicate, timeout: float = 240.0, every: float = 0.2):
    """Poll until `predicate()` is truthy and return its value; fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s")


def run_cli(*args: str, env_home: Path | None = None, stdin: str | None = None, timeout: int = 600):
    """Run the real `tunelab` console script; returns CompletedProcess."""
    env = dict(os.environ)
    if env_home is not None:
        env["TUNELAB_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=timeout)


def stop_leftover_runs(db) -> None:
    """No run process outlives its test, even a failed one."""
    from tunelab import runs
    for run in runs.list_runs(db):
        if run.status in ("queued", "running"):
            runs.stop(db, run.id, grace_s=5)


# Questions with one-word answers: an eval dataset the tiny model can be scored on.
QA = [("What is the capital of France?", "Paris."),
      ("What is the capital of Germany?", "Berlin."),
      ("How many legs does a spider have?", "Eight."),
      ("What colour is the sky on a clear day?", "Blue."),
      ("What is two plus two?", "Four."),
      ("Which planet is called the red planet?", "Mars."),
      ("What do bees make?", "Honey."),
      ("What is frozen water called?", "Ice.")]


def make_dataset(db, ws, tmp_path, name="qa"):
    """An sft dataset of the QA pairs, split into train and validation (2 rows)."""
    from tunelab import datasets
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                       {"role": "assistant", "content": a}]}) for q, a in QA))
    datasets.import_file(db, ws, path, name)
    return datasets.split(db, ws, name, val=0.25, seed=0)


STRENGTH = {"strong": 1300.0, "mid": 1100.0, "weak": 900.0}


def arena_file(path, strengths: dict[str, float], n: int = 300, seed: int = 0, ties: float = 0.1):
    """Chatbot Arena battle records drawn from known ratings, with conversations as Arena writes them.
    Each vote's expected score (ties as half) is the Bradley–Terry probability of the true ratings."""
    import numpy as np
    rng = np.random.default_rng(seed)
    names = list(strengths)
    with open(path, "w") as fh:
        for i in range(n):
            a, b = rng.choice(len(names), 2, replace=False)
            p = 1 / (1 + 10 ** ((strengths[names[b]] - strengths[names[a]]) / 400))
            # A tie scores half, so decisive votes use p' with (1 - ties)·p' + ties/2 = p.
            decisive = (p - ties / 2) / (1 - ties)
            winner = "tie" if rng.random() < ties else "model_a" if rng.random() < decisive else "model_b"
            q = [{"role": "user", "content": f"question {i}"}]
            fh.write(json.dumps({"model_a": names[a], "model_b": names[b], "winner": winner, "judge": f"j{i % 7}",
                                 "conversation_a": q + [{"role": "assistant", "content": f"{names[a]} says {i}"}],
                                 "conversation_b": q + [{"role": "assistant", "content": f"{names[b]} says {i}"}],
                                 "tstamp": 1_700_000_000 + i}) + "\n")


# ---------------------------------------------------------------- browser

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """A real `streamlit run streamlit_app.py` on a free port, over its own workspace."""

    def __init__(self, home: Path, address: str | None = "127.0.0.1"):
        """`address` None leaves it to .streamlit/config.toml, as the README's command does."""
        self.home = home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, TUNELAB_HOME=str(home), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
        self.log = open(home.parent / f"streamlit-{self.port}.log", "w")
        address_flags = ["--server.address", address] if address else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
             "--server.port", str(self.port), *address_flags,
             "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2).read() == b"ok":
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"streamlit did not start; see {self.log.name}")

    def db(self):
        from tunelab import db
        return db.connect(self.home / "tunelab.db")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def app(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    server = App(home)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does this)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


def sign_in(page, app: App, name: str, password: str, expect_success: bool = True) -> None:
    """Sign in through the server's form (a page opened signed-out is sent there); on success the server
    has set the HttpOnly session cookie and sent the browser back to the app."""
    page.goto(app.url)
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    if expect_success:
        page.get_by_text("Signed in as").wait_for()


def wait_for_app(page) -> None:
    """Wait until Streamlit has finished a run (no 'running' indicator)."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]') || "
        "!document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')")


def upload(page, file_input, file, *, clears: str | None = None) -> None:
    """Give a file uploader a file and wait until the page has rerun with it. A click made while the
    upload is still under way reruns the page with the file before, so a test must not click early.
    `clears` names a text of the previous run that the rerun with the new file removes."""
    file_input.set_input_files(file)
    name = file["name"] if isinstance(file, dict) else Path(file).name
    # a JSON string is a CSS string too, once non-ASCII characters stay themselves (no \u escapes)
    page.locator(f'[data-testid="stFileChipName"][title={json.dumps(name, ensure_ascii=False)}]').last.wait_for()
    page.locator('[data-testid="stFileChipIconSpinner"]').first.wait_for(state="detached")
    if clears:
        page.get_by_text(clears).first.wait_for(state="detached")
    wait_for_app(page)


def wait_for_pair(page, conn, annotator_id: int) -> None:
    """Wait until the vote buttons of the annotator's open pair are drawn. Their keys carry the pair's
    assignment id, and the labeling page drops a key press made before they are there (it was meant for
    the pair before), so a test that presses the moment the progress text changes would lose it. The
    buttons are replaced one by one, so this waits for the last of them (Skip)."""
    [(aid,)] = conn.execute("SELECT id FROM assignments WHERE annotator_id = ? AND status = 'open'",
                            [annotator_id]).fetchall()
    page.locator(f".st-key-skip_{aid}").wait_for()


def load_json(path: Path):
    return json.loads(Path(path).read_text())


def ready_campaign(conn, ws, tiny_model_dir: Path, name: str, prompts: list[str], answers: tuple[list[str], list[str]],
                   guidelines: str = ""):
    """A campaign ready to label without running a model: the tiny model registered as 'tiny' and
    'tiny-b', whose answers to `prompts` are stored as if generated, one vote wanted per pair."""
    from tunelab import feedback, models
    for model in ("tiny", "tiny-b"):
        if model not in {m.name for m in models.list_models(conn)}:
            models.add_local(conn, tiny_model_dir, model)
    c = feedback.create_campaign(conn, ws, name, ["tiny", "tiny-b"], prompts=prompts,
                                 config=feedback.CampaignConfig(overlap=1, guidelines=guidelines))
    ids = [pid for pid, _ in feedback.prompts(conn, c)]
    for model, texts in zip(("tiny", "tiny-b"), answers):
        feedback.store_responses(conn, c, model, 0, ids, texts)
    feedback.build_pairs(conn, c)
    return feedback.get_campaign(conn, name)


# ---------------------------------------------------------------- ratings fixtures (test_ratings*, by hand)

def battles(a: str, b: str, a_wins: int, b_wins: int, ties: int = 0, bothbad: int = 0) -> list[dict]:
    """Arena battle rows of `a` (model_a) against `b` (model_b): that many of each winner, in this order."""
    return ([{"model_a": a, "model_b": b, "winner": "model_a"}] * a_wins
            + [{"model_a": a, "model_b": b, "winner": "model_b"}] * b_wins
            + [{"model_a": a, "model_b": b, "winner": "tie"}] * ties
            + [{"model_a": a, "model_b": b, "winner": "tie (bothbad)"}] * bothbad)


# Strength ratios 9 : 3 : 1 fit these counts exactly (A–B 3:1, B–C 3:1, A–C 9:1), so the MLE is
# A = 1000 + 400·log10(9) = 1381.70 and B = 1000 + 400·log10(3) = 1190.85 with C anchored at 1000.
# Ties count half: A–B is 25 wins, 5 losses and 10 ties, i.e. 30 : 10. Sides are mixed on purpose.
FIXTURE = (battles("A", "B", 25, 5, ties=6, bothbad=4) + battles("C", "B", 10, 30)
           + battles("A", "C", 90, 10))
