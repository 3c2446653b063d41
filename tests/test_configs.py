"""The one bridge from config dataclasses (core/configs.py) to YAML keys, CLI flags and form fields: one type
checker for every field type the configs use, YAML and flags giving the same checked config, `tunelab train`
overrides reaching a real run's config.yaml, and the form helper drawing a real Streamlit form."""
import dataclasses
import json
import typing
from dataclasses import dataclass, field

import pytest
import yaml

from tunelab import configs
from tunelab.errors import UserError
from tests.conftest import REPO, run_cli

SAMPLE = REPO / "data" / "samples" / "acme_router_sft.jsonl"


def config_classes() -> list[type]:
    from tunelab.evaluate import EvalConfig
    from tunelab.feedback import CampaignConfig
    from tunelab.generate import SamplingSettings
    from tunelab.train import config
    return [*(m.Config for m in config.methods().values()), config.LoraSettings, EvalConfig, CampaignConfig,
            SamplingSettings]


@dataclass
class Block:
    size: int = field(default=1, metadata={"help": "a number", "min": 1})


@dataclass
class Example:
    """A field of each kind the checker knows, Literal included (the project's configs use metadata choices)."""
    count: int = field(default=2, metadata={"help": "int", "min": 0, "max": 9})
    limit: int | None = field(default=None, metadata={"help": "optional int"})
    rate: float = field(default=0.5, metadata={"help": "float"})
    share: float | None = field(default=None, metadata={"help": "optional float"})
    flag: bool = field(default=False, metadata={"help": "bool"})
    text: str = field(default="", metadata={"help": "str"})
    note: str | None = field(default=None, metadata={"help": "optional str"})
    modules: str | list[str] = field(default="all", metadata={"help": "str or list"})
    names: list[str] = field(default_factory=list, metadata={"help": "list of str"})
    mode: typing.Literal["fast", "slow"] = field(default="fast", metadata={"help": "literal"})
    size: str = field(default="s", metadata={"help": "choices", "choices": ("s", "m")})
    block: Block = field(default_factory=Block, metadata={"help": "nested"})


def test_the_checker_on_every_field_type():
    ok = {"count": 3, "limit": 7, "rate": "2e-4", "share": 1, "flag": True, "text": "hi", "note": None,
          "modules": ["q", "v"], "names": ["a"], "mode": "slow", "size": "m", "block": {"size": 4}}
    got = configs.from_mapping(Example, ok, "x.yaml")
    assert got == Example(3, 7, 2e-4, 1.0, True, "hi", None, ["q", "v"], ["a"], "slow", "m", Block(4))
    assert isinstance(got.share, float) and isinstance(got.rate, float)
    bad = [
        ({"count": "3"}, "x.yaml: key 'count': expected int, got str '3'"),
        ({"count": True}, "key 'count': expected int, got bool True"),
        ({"count": 10}, "key 'count': must be at most 9, got 10"),
        ({"limit": 1.5}, "key 'limit': expected int | None, got float 1.5"),
        ({"rate": "fast"}, "key 'rate': expected float"),
        ({"rate": None}, "key 'rate': must be set (a float)"),
        ({"flag": "yes"}, "key 'flag': expected bool, got str 'yes'"),
        ({"text": 3}, "key 'text': expected str"),
        ({"modules": [1]}, "key 'modules': expected str | list[str]"),
        ({"names": "a"}, "key 'names': expected list[str]"),
        ({"mode": "medium"}, "key 'mode': expected"),
        ({"size": "xl"}, "key 'size': 'xl' is not one of: s, m"),
        ({"block": {"size": 0}}, "key 'block.size': must be at least 1, got 0"),
        ({"block": {"sise": 1}}, "key 'block.sise': unknown key (did you mean 'block.size'?)"),
        ({"block": 3}, "key 'block': must be a mapping with keys size"),
        ({"cuont": 1}, "key 'cuont': unknown key (did you mean 'count'?)"),
    ]
    for raw, expected in bad:
        with pytest.raises(UserError) as err:
            configs.from_mapping(Example, raw, "x.yaml")
        assert expected in str(err.value), (raw, str(err.value))


def test_every_config_field_type_is_known_and_its_default_survives_text():
    """Each field of every project config: its default passes the checker, and its default as a form or flag
    shows it (`FormField.text`) reads back to the same value; a type the checker lacks fails here."""
    for cls in config_classes():
        for f in configs.form_fields(cls, defaults={"base_model": "m", "dataset": "d@1", "model": "m"}):
            if f.kind == "group":
                continue
            assert configs.check(f.default, f.type, _field(cls, f.name), f.name) == f.default, (cls, f.name)
            if f.kind not in ("bool", "int"):  # those get a checkbox or a number input, not text
                back = configs.check(f.value_of(f.text), f.type, _field(cls, f.name), f.name)
                assert back == f.default or (back is None and f.default == ""), (cls, f.name, f.text, back)


def _field(cls, dotted: str) -> dataclasses.Field:
    *blocks, name = dotted.split(".")
    for b in blocks:
        cls = configs.hints(cls)[b]
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def test_flag_and_box_text_reads_as_the_yaml_value():
    hints = configs.hints(Example)
    assert configs.from_text("1e-4", hints["rate"]) == "1e-4"  # a string the float check takes, as in YAML
    assert configs.from_text("16", hints["count"]) == 16
    assert configs.from_text("", hints["limit"]) is None
    assert configs.from_text("false", hints["flag"]) is False
    assert configs.from_text("123", hints["text"]) == "123"  # a text key keeps the text as typed
    assert configs.from_text("q_proj, v_proj", hints["modules"]) == ["q_proj", "v_proj"]
    assert configs.from_text("[q_proj]", hints["modules"]) == ["q_proj"]
    assert configs.from_text("all-linear", hints["modules"]) == "all-linear"


def test_yaml_and_flags_give_the_same_checked_config():
    from tunelab.cli import build_parser
    from tunelab.train import config
    full = ("method: dpo\nbase_model: m\ndataset: prefs@1\nlearning_rate: 1e-4\nbeta: 0.2\ngradient_checkpointing: true\n"
            "lora:\n  r: 16\n  alpha: 8\n  target_modules: [q_proj, v_proj]\n")
    args = build_parser().parse_args([
        "train", "run.yaml", "--method", "dpo", "--learning_rate", "1e-4", "--beta", "0.2", "--gradient_checkpointing",
        "--lora.r", "16", "--lora.alpha", "8", "--lora.target_modules", "[q_proj, v_proj]"])
    from_flags = config.parse_yaml("base_model: m\ndataset: prefs@1\nlora: {alpha: 2}\n", "run.yaml",
                                   configs.given(args))
    assert from_flags == config.parse_yaml(full, "run.yaml")
    assert from_flags.lora.r == 16 and from_flags.learning_rate == 1e-4 and from_flags.beta == 0.2

    from tunelab.evaluate import EvalConfig
    args = build_parser().parse_args(["eval", "m", "--dataset", "qa@2", "--baseline", "rag", "--k", "2",
                                      "--limit", "5", "--max-new-tokens", "8"])
    assert configs.from_flags(EvalConfig, args, {"model": "m"}) == configs.from_mapping(
        EvalConfig, yaml.safe_load("model: m\ndataset: qa@2\nbaseline: rag\nk: 2\nlimit: 5\nmax_new_tokens: 8\n"))
    args = build_parser().parse_args(["eval", "m", "--dataset", "qa", "--k", "two"])
    with pytest.raises(UserError, match="flag --k: key 'k': expected int, got str 'two'"):
        configs.from_flags(EvalConfig, args, {"model": "m"})


@pytest.fixture
def acme(tiny_model):
    """The tiny model and the sample SFT data in a workspace; no run outlives the test."""
    from tunelab import datasets, runs
    db, ws, _ = tiny_model
    ref = datasets.import_file(db, ws, SAMPLE, "acme").version.ref
    yield db, ws, ref
    for run in runs.list_runs(db):
        if run.status in ("queued", "running"):
            runs.stop(db, run.id, grace_s=5)


@pytest.mark.process
@pytest.mark.timeout(240)
def test_train_flags_override_the_yaml_in_the_run_config(acme, tmp_path):
    db, ws, ref = acme
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"base_model": "tiny", "dataset": ref, "learning_rate": 5e-3, "max_steps": 2,
                                    "per_device_train_batch_size": 2, "max_length": 64, "lora": {"r": 4, "alpha": 8}}))
    done = run_cli("train", str(path), "--learning_rate", "1e-4", "--lora.r", "16", "--max-steps", "1",
                   env_home=ws.home, timeout=120)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    saved = yaml.safe_load((ws.runs_dir / run_id / "config.yaml").read_text())
    assert saved["learning_rate"] == 1e-4 and saved["max_steps"] == 1
    assert saved["lora"]["r"] == 16 and saved["lora"]["alpha"] == 8  # the rest of the block stays the file's
    assert json.loads(db.execute("SELECT config_json FROM runs WHERE id = ?", [run_id]).fetchone()[0])["lora"]["r"] == 16


@pytest.mark.process
@pytest.mark.timeout(240)
def test_bad_train_flags_exit_2_naming_the_key(acme, tmp_path):
    db, ws, ref = acme
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"base_model": "tiny", "dataset": ref, "max_steps": 1}))
    cases = [
        (["--lora.r", "sixteen"], "flag --lora.r: key 'lora.r': expected int, got str 'sixteen'"),
        (["--learning_rate", "fast"], "key 'learning_rate': expected float, got str 'fast'"),
        (["--tuning", "half"], "key 'tuning': 'half' is not one of: full, lora, qlora"),
        (["--beta", "0.1"], "flag --beta: key 'beta': unknown key for method 'sft'"),
        (["--foo", "1"], "unrecognized arguments: --foo"),
    ]
    for flags, expected in cases:
        done = run_cli("train", str(path), *flags, env_home=ws.home, timeout=60)
        assert done.returncode == 2 and expected in done.stderr and done.stdout == "", (flags, done.stderr)
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0

    shown = run_cli("train", "--help", timeout=60)
    assert shown.returncode == 0 and "--learning_rate 1e-4" in shown.stdout and "--lora.r INT" in shown.stdout
    assert "--beta FLOAT" in shown.stdout  # a method's own keys are listed too


@pytest.mark.process
@pytest.mark.timeout(240)
def test_generate_flags_go_through_the_bridge(tiny_model):
    _, ws, name = tiny_model
    done = run_cli("generate", "--model", name, "--prompt", "Hello", "--max-new-tokens", "3", "--system", "Be brief",
                   "--json", env_home=ws.home, timeout=180)
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)["settings"]
    assert settings == {"max_new_tokens": 3, "temperature": 0.0, "top_p": 0.9, "seed": 0, "system_prompt": "Be brief"}
    done = run_cli("generate", "--model", name, "--prompt", "Hello", "--top-p", "2", env_home=ws.home, timeout=60)
    assert done.returncode == 2 and "key 'top_p': must be at most 1.0" in done.stderr


@pytest.mark.timeout(120)
def test_the_form_helper_draws_each_field_and_its_values_check_as_yaml(monkeypatch):
    import sys

    from streamlit.testing.v1 import AppTest
    # AppTest runs the page as sys.modules["__main__"] and leaves it there; a later test's spawned
    # processes would then re-run that page instead of their own code.
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])

    def page():
        import streamlit as st

        from tunelab.train import config
        from pages import _ui
        values = _ui.config_form_fields(config.config_class("sft"), "t", skip={"method"},
                                        options={"base_model": ["tiny"], "dataset": ["acme@1"], "init_from": ["r1"]})
        st.session_state.cfg = config.from_dict(values, "form")

    at = AppTest.from_function(page, default_timeout=60).run()
    assert not at.exception
    from tunelab.train import config
    assert at.session_state.cfg == config.from_dict({"base_model": "tiny", "dataset": "acme@1"})
    assert [s.label for s in at.selectbox][:3] == ["base_model", "dataset", "init_from"]
    assert at.selectbox(key="t_init_from").value is None  # an optional pick starts at (none)
    assert at.checkbox(key="t_packing").value is True
    assert at.number_input(key="t_lora.r").value == 16
    at.text_input(key="t_learning_rate").set_value("1e-4")
    at.number_input(key="t_lora.r").set_value(8)
    at.selectbox(key="t_tuning").set_value("full")
    at.text_input(key="t_lora.target_modules").set_value("q_proj, v_proj").run()
    cfg = at.session_state.cfg
    assert (cfg.learning_rate, cfg.lora.r, cfg.tuning, cfg.lora.target_modules) == (1e-4, 8, "full", ["q_proj", "v_proj"])
    at.text_input(key="t_learning_rate").set_value("fast").run()
    assert "form: key 'learning_rate': expected float, got str 'fast'" in str(at.exception[0].message)


@pytest.mark.process
@pytest.mark.timeout(60)
def test_listing_the_methods_imports_no_transformers():
    """config.methods() finds each method by its source, so the Launch page's list of methods does not pay
    for importing transformers (runtime.py and distributed.py do, and are no methods)."""
    import subprocess
    import sys
    code = ("import json, sys; from tunelab.train import config; "
            "print(json.dumps([sorted(config.methods()), 'transformers' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    found, imported = json.loads(done.stdout)
    assert {"sft", "reward", "dpo", "grpo", "rloo"} <= set(found) and not {"runtime", "distributed"} & set(found)
    assert not imported
