"""Models: base models with size and chat template, and the runs tuned from each (chat with one as MODEL+RUN)."""
import streamlit as st

from tunelab import models
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
