"""Models: base models with size and chat template, and the runs tuned from each (chat with one as MODEL+RUN)."""
import streamlit as st

from tunelab import merging, models, runs
from pages import _ui

_ui.guard("models")
st.title("Models")

conn = _ui.db()
rows = models.list_models(conn)
st.dataframe(
    [{"name": m.name, "kind": m.kind, "source": m.source, "prepared": m.prepared,
      "parameters (M)": round(m.params / 1e6, 1) if m.params else None,
      "size (MB)": round(m.size_bytes / 1e6, 1) if m.size_bytes else None, "path": m.path} for m in rows],
    hide_index=True)

for m in rows:
    with st.expander(f"{m.name}: chat template and tuned runs"):
        if not m.prepared and m.source.startswith("bundled:"):
            if st.button(f"Prepare {m.name}", key=f"prep_{m.name}", help="Convert the bundled GGUF once (~1 min)"):
                bar = st.progress(0.0, "starting")
                with _ui.user_errors():
                    models.prepare(conn, _ui.ws(), m.name, progress=lambda f, msg: bar.progress(f, msg))
                    st.rerun()
        st.code(m.chat_template or "(no chat template)", language="jinja2")
        tuned = models.tuned_runs(conn, m.name)
        if tuned:
            st.caption(f"Use one as {m.name}+RUN_ID: a LoRA run's adapter on {m.name}, or a full run's own model.")
            st.dataframe([{"run": r.id, "method": r.method, "tuning": r.tuning, "dataset": r.dataset} for r in tuned],
                         hide_index=True)
        else:
            st.caption("No completed runs trained from this model yet.")

st.subheader("Register a local model folder")
with st.form("add_model"):
    path = st.text_input("Folder (a Hugging Face model folder with config.json and a tokenizer)")
    name = st.text_input("Name")
    if st.form_submit_button("Register"):
        with _ui.user_errors():
            info = models.add_local(conn, path, name.strip())
            st.success(f"Registered {info.name}.")

st.subheader("Merge adapters")
adapters = {r.id: f"{r.base_model}+{r.id} ({r.method}, {r.dataset})" for r in models.tuned_runs(conn)
            if r.tuning != "full"}
with st.form("merge_adapters"):
    picked = st.multiselect("Adapters (completed LoRA runs on one base)", list(adapters), format_func=adapters.get)
    method = st.selectbox("Method", merging.METHODS, help="linear, ties and dare_ties need one LoRA rank; svd "
                          "merges any ranks (see the README's Merging adapters).")
    weights = st.text_input("Weights, one per adapter in order", placeholder="0.5,0.5")
    density = st.number_input("Density (ties and dare_ties: fraction of entries kept)", 0.01, 1.0, 0.5)
    merge_name = st.text_input("Name of the merged adapter")
    if st.form_submit_button("Merge"):
        with _ui.user_errors():
            run_id = merging.merge_adapters(conn, _ui.ws(), picked, method, merging.parse_weights(weights),
                                            merge_name.strip(),
                                            density if method in merging.NEEDS_DENSITY else None)
            st.success(f"Merged into run {run_id}: use it as {runs.get(conn, run_id).base_model}+{run_id}.")

st.subheader("Serve a model to applications")
# A server is a long-lived process of its own, which the CLI starts and a person stops, not a job.
spec = st.selectbox("Model or adapter", [s.format() for s in models.chat_choices(conn)])
st.code(f"tunelab serve {spec} --port 8000", language="bash")
st.caption("Prints the OpenAI base URL and model name; calls go to /v1/chat/completions (streaming included). "
           "It listens on 127.0.0.1 only unless --host says otherwise.")
