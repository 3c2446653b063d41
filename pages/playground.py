"""Playground: chat with a model (a base model, or a base with a run's result: its LoRA adapter or its fully
tuned model), with sampling settings; or send one prompt to two models with the same settings and read the
answers side by side.

Loaded models are cached (st.cache_resource) for inference only; training never happens in the app."""
from pathlib import Path

import streamlit as st

from tunelab import configs, generate, models, untrusted
from pages import _ui

_ui.guard("playground")
st.title("Playground")
conn, ws = _ui.db(), _ui.ws()


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def load(model_dir: str, adapter_dir: str | None):
    return generate.load(Path(model_dir), Path(adapter_dir) if adapter_dir else None)


def model_of(spec: str):
    path, adapter = models.ModelSpec.parse(spec).folders(conn, ws)
    return load(str(path), str(adapter) if adapter else None)


def sampling_settings() -> generate.SamplingSettings:
    """Sidebar inputs drawn from SamplingSettings' fields and help text; a bad value stops the page, named."""
    with st.sidebar:
        st.subheader("Sampling")
        values = _ui.config_form_fields(generate.SamplingSettings, "pg", multiline={"system_prompt"})
        with _ui.user_errors():
            return configs.from_mapping(generate.SamplingSettings, values, "sampling")
        st.stop()


specs = [str(s) for s in models.chat_choices(conn)]
settings = sampling_settings()
chat_tab, compare_tab = st.tabs(["Chat", "Compare side by side"])

with chat_tab:
    spec = st.selectbox("model", specs, key="pg_model", help="A model, or MODEL+RUN for a run's result on it.")
    history = st.session_state.setdefault("pg_history", {}).setdefault(spec, [])
    if st.button("New chat", key="pg_clear"):
        history.clear()
    for m in history:
        with st.chat_message(m["role"]):
            st.text(m["content"])
    prompt = st.chat_input("Message", key="pg_input")
    if prompt:
        history.append({"role": "user", "content": prompt})
        with st.chat_message("user"):
            st.text(prompt)
        with _ui.user_errors(), st.chat_message("assistant"), st.spinner("Thinking…"):
            model, tokenizer = model_of(spec)
            [answer] = generate.generate(model, tokenizer, [list(history)], settings)
            history.append({"role": "assistant", "content": answer})
            st.text(answer)

with compare_tab:
    with st.form("pg_compare"):
        left, right = st.columns(2)
        a = left.selectbox("model A", specs, key="pg_a")
        b = right.selectbox("model B", specs, index=min(1, len(specs) - 1), key="pg_b")
        text = st.text_area("prompt", key="pg_compare_prompt")
        go = st.form_submit_button("Ask both", type="primary")
    if go and text.strip():
        cols = st.columns(2)
        for col, spec in zip(cols, (a, b)):
            with col, _ui.user_errors(), st.spinner(f"{spec}…"):
                model, tokenizer = model_of(spec)
                [answer] = generate.generate(model, tokenizer, [text.strip()], settings)
                st.markdown(f"**{untrusted.markdown(spec)}**")
                st.text(answer)
        st.caption(f"Same settings for both: {settings.to_dict()}")
