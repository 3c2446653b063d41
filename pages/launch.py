"""Launch a training run: a form built from the method's config dataclass (help text included), the YAML it
makes, and a time and cost estimate before anything starts."""
import dataclasses
import re
import typing

import streamlit as st

from core import cost, datasets, models, runs
from core.train import config
from pages import _ui

_ui.guard("launch")
st.title("Launch a training run")
conn, ws = _ui.db(), _ui.ws()

methods = config.methods()
# Other pages link here pre-filled, e.g. a campaign's votes: ?method=reward&dataset=votes@1
asked = st.query_params.to_dict()
names = sorted(methods)
method = st.selectbox("method", names, index=names.index(asked["method"] if asked.get("method") in methods else "sft"),
                      format_func=lambda m: f"{m} ({methods[m].LABEL})" if hasattr(methods[m], "LABEL") else m,
                      help="Training method: each is a module in core/train/ with its own keys.")
cls = methods[method].Config

model_names = [m.name for m in models.list_models(conn)]
refs = [v.ref for d in datasets.list_datasets(conn) for v in reversed(datasets.versions(conn, ws, d["name"]))
        if v.kind in cls.dataset_kinds]
done_runs = [r.id for r in runs.list_runs(conn) if r.status == "completed"]
if not refs:
    st.info(f"No {' or '.join(cls.dataset_kinds)} dataset yet: import one on the Datasets page first.")
    st.stop()


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _widget(name: str, f: dataclasses.Field, tp, default, key: str):
    """One input per config field, chosen by its type; numbers as text so 2e-4 reads as written."""
    help_text = f.metadata.get("help")
    if "choices" in f.metadata:
        options = list(f.metadata["choices"])
        return st.selectbox(name, options, index=options.index(default), help=help_text, key=key)
    if tp is bool:
        return st.checkbox(name, value=default, help=help_text, key=key)
    if tp is int:
        return st.number_input(name, value=default, step=1, help=help_text, key=key)
    value = st.text_input(name, value="" if default is None else str(default), help=help_text, key=key).strip()
    if int in typing.get_args(tp) and re.fullmatch(r"-?\d+", value):  # an optional int
        return int(value)
    return value or None


values: dict = {"method": method}
with st.form("launch"):
    left, right = st.columns(2)
    for i, (name, f, tp) in enumerate(config.field_help(cls)):
        if name == "method":
            continue
        with left if i % 2 else right:
            key = f"cfg_{method}_{name}"
            if name == "base_model":
                values[name] = st.selectbox(name, model_names, help=f.metadata["help"], key=key)
            elif name == "dataset":
                values[name] = st.selectbox(name, refs, index=refs.index(asked["dataset"])
                                            if asked.get("dataset") in refs else 0, help=f.metadata["help"], key=key)
            elif name == "reward_model":
                reward_runs = [r.id for r in runs.list_runs(conn) if r.status == "completed" and r.method == "reward"]
                picked = st.selectbox(name, reward_runs or ["(none: train a reward model first)"],
                                      help=f.metadata["help"], key=key)
                values[name] = picked if reward_runs else None
            elif name == "init_from":
                picked = st.selectbox(name, ["(none)"] + done_runs, help=f.metadata["help"], key=key)
                values[name] = None if picked == "(none)" else picked
            elif name == "lora":
                lora = {}
                st.caption("LoRA (used by tuning lora and qlora)")
                for sub, sf, stp in config.field_help(config.LoraSettings):
                    default = _default(sf)
                    if sub == "target_modules":
                        text = st.text_input("lora.target_modules", value=default, help=sf.metadata["help"],
                                             key=f"{key}_{sub}")
                        lora[sub] = text.strip() if "," not in text else [t.strip() for t in text.split(",") if t.strip()]
                    else:
                        lora[sub] = _widget(f"lora.{sub}", sf, stp, default, f"{key}_{sub}")
                values[name] = lora
            else:
                values[name] = _widget(name, f, tp, _default(f), key)
    c1, c2 = st.columns(2)
    preview = c1.form_submit_button("Preview config and estimate")
    launch = c2.form_submit_button("Launch", type="primary")


def _resolved():
    return config.resolve(conn, ws, config.from_dict(values, "form"))


def _show_estimate(est: cost.Estimate) -> None:
    a, b, c, d = st.columns(4)
    a.metric("Estimated time", f"{est.seconds / 60:.1f} min")
    b.metric("Estimated cost", f"${est.usd:.4f}", help=f"at ${est.hour_usd}/hour on {est.device}")
    c.metric("Steps", est.steps)
    d.metric("Trained tokens", f"{est.tokens:,}")
    st.caption(f"{est.flops:.3g} FLOPs at {est.flops_per_s / 1e9:.1f} GFLOP/s ({est.basis}); "
               f"{est.params / 1e6:.1f}M parameters.")


if preview or launch:
    with _ui.user_errors():
        cfg = _resolved()
        st.subheader("Config")
        st.code(config.to_yaml(cfg), language="yaml")
        _show_estimate(cost.estimate(conn, ws, cfg))
        if launch:
            run_id = runs.launch(conn, ws, cfg, estimate=True)
            status = runs.get(conn, run_id).status
            st.success(f"Launched run {run_id} ({status}).")
            st.page_link("pages/runs.py", label=f"Watch {run_id} on the Runs page", icon=":material/monitoring:")
            st.session_state["runs_selected"] = run_id
