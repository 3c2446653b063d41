"""Launch a training run: a form built from the method's config dataclass (help text included), the YAML it
makes, and a time and cost estimate before anything starts."""
import streamlit as st

from tunelab import cost, datasets, models, runs
from tunelab.train import config
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
done = [r for r in runs.list_runs(conn) if r.status == "completed"]
done_runs, reward_runs = [r.id for r in done], models.reward_runs(conn)
if not refs:
    st.info(f"No {' or '.join(cls.dataset_kinds)} dataset yet: import one on the Datasets page first.")
    st.stop()

with st.form("launch"):
    values = {"method": method, **_ui.config_form_fields(
        cls, f"cfg_{method}", skip={"method"}, columns=2, defaults={"dataset": asked.get("dataset")},
        options={"base_model": model_names, "dataset": refs, "init_from": done_runs, "reward_model": reward_runs})}
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
