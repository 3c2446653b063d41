"""Datasets: import a file and see what it is and what is wrong; browse rows as chats and as the
model sees them; token lengths; clean, split and export, each step a new version with its lineage."""
import html
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from tunelab import datasets, models, untrusted, workspace
from tunelab.datasets import cleaning, formats, inspection
from pages import _ui

_ui.guard("datasets")
st.title("Datasets")
conn, ws = _ui.db(), _ui.ws()


@st.cache_data(max_entries=8, show_spinner=False)
def load_rows(_version, key: str, split: str) -> list[dict]:
    """Rows of a version; versions are immutable, so ref and content hash make a safe cache key."""
    return _version.load(split)


@st.cache_resource(max_entries=2, show_spinner="Loading the tokenizer…")
def tokenizer_of(model: str):
    return inspection.load_tokenizer(conn, ws, model)


def preview_table(rows: list[dict], kind: str, limit: int = 20) -> pd.DataFrame:
    out = []
    for i, row in enumerate(rows[:limit], start=1):
        conv = inspection.conversations(row)[0]
        line = {"row": i, "turns": len(conv), "prompt": inspection.prompt_messages(row)[-1]["content"][:200]}
        if kind == "preference":
            line.update(chosen=row["chosen"][-1]["content"][:200], rejected=row["rejected"][-1]["content"][:200])
        elif kind == "kto":
            line.update(completion=row["completion"][-1]["content"][:200], label=row["label"])
        elif kind == "sft":
            line["answer"] = conv[-1]["content"][:200]
        out.append(line)
    return pd.DataFrame(out)


def show_chat(conv: list[dict]) -> None:
    for m in conv:
        with st.chat_message(m["role"]):
            if m["role"] in ("system", "tool"):
                st.caption(m["role"])
            st.text(m["content"])


def show_templated(pieces: list[tuple[str, bool]]) -> None:
    spans = "".join(
        f'<span style="background:#c8f7c5;color:#0b3d0b">{html.escape(t)}</span>' if trained
        else f'<span style="color:#888">{html.escape(t)}</span>' for t, trained in pieces)
    st.html(f'<pre data-testid="templated" style="white-space:pre-wrap;font-size:0.85em">{spans}</pre>')
    st.caption(f"{sum(t for _, t in pieces)} of {len(pieces)} tokens trained "
               "(green: the loss counts them; grey: masked).")


# ---------------------------------------------------------------- import

existing = datasets.list_datasets(conn)
with st.expander("Import a file", expanded=not existing or "last_import" in st.session_state):
    with st.form("import"):
        upload = st.file_uploader("File: JSON, JSONL, CSV or Parquet", type=["json", "jsonl", "csv", "parquet"])
        c1, c2 = st.columns(2)
        name = c1.text_input("Dataset name", help="Importing under an existing name adds a version.")
        fmt = c2.selectbox("Format", ["auto", *formats.FORMATS], help="auto: detected from the columns")
        mapping = st.text_area("Column mapping (optional)", placeholder="one target=source a line, e.g.\n"
                               "instruction=question\noutput=answer", height=80)
        skip = st.checkbox("Skip invalid records (import the good ones and list the bad)")
        submitted = st.form_submit_button("Import", type="primary")
    if submitted:
        st.session_state.pop("last_import", None)
        if upload is None:
            st.error("Choose a file first.")
        else:
            dataset_name = name.strip() or Path(upload.name).stem
            bar = st.progress(0.0, "uploading")
            with _ui.user_errors(), workspace.saved_upload(upload.name, upload.getvalue(),
                                                          tuple(formats.FILE_TYPES)) as path:
                result = datasets.import_file(
                    conn, ws, path, dataset_name, fmt=fmt,
                    mapping=[line for line in mapping.splitlines() if line.strip()], skip_invalid=skip,
                    progress=lambda f, m: bar.progress(f, m), source_name=upload.name)
                st.session_state.last_import = result.to_dict()
                st.session_state.selected_dataset = result.version.name
            bar.empty()
    last = st.session_state.get("last_import")
    if last:
        st.success(f"Imported {last['imported']} of {last['records']} records as **{last['ref']}**. "
                   f"Detected format: **{last['detected_format']}** (kind {last['kind']}).")
        if last["skipped"]:
            st.warning(untrusted.markdown(f"Skipped {last['skipped']} bad records:\n\n" + "\n".join(
                f"- {p['where']}: {p['reason']}" for p in last["skipped_records"][:50])))

existing = datasets.list_datasets(conn)
if not existing:
    st.info("No datasets yet. Try data/samples/acme_router_sft.jsonl: a support bot that always answers "
            "in the same format.")
    st.stop()

st.subheader("All datasets")
st.dataframe(pd.DataFrame(existing)[["name", "latest", "kind", "rows", "versions", "last_step"]], hide_index=True)

# ---------------------------------------------------------------- one version

names = [d["name"] for d in existing]
default = names.index(st.session_state.get("selected_dataset")) if st.session_state.get(
    "selected_dataset") in names else 0
c1, c2 = st.columns([3, 1])
chosen_name = c1.selectbox("Dataset", names, index=default)
all_versions = datasets.versions(conn, ws, chosen_name)
chosen_v = c2.selectbox("Version", [v.version for v in reversed(all_versions)])
version = datasets.resolve(conn, ws, f"{chosen_name}@{chosen_v}")

m = st.columns(5)
m[0].metric("Rows", f"{version.rows:,}")
m[1].metric("Kind", version.kind)
m[2].metric("Format", version.format or "—")
m[3].metric("Splits", ", ".join(f"{s} {n}" for s, n in version.splits.items()))
m[4].metric("Content hash", version.content_hash[:10], help=version.content_hash)

st.markdown("**Lineage**")
st.dataframe(pd.DataFrame([{
    "version": v.ref, "step": v.transform, "rows": v.rows,
    "details": f"from {v.source_name}" if v.transform == "import" else ", ".join(
        f"{k}={val}" for k, val in v.params.items()),
    "from": v.parent or ""} for v in datasets.lineage(conn, ws, version.ref)]), hide_index=True)
if version.transform != "import" and version.report:
    with st.expander(f"What {version.transform} did"):
        rep = {k: v for k, v in version.report.items() if k != "examples"}
        st.write(rep)
        for ex in version.report.get("examples", []):
            st.json(ex, expanded=False)

split_names = list(version.splits)
split = st.radio("Split", split_names, horizontal=True) if len(split_names) > 1 else split_names[0]
rows = load_rows(version, f"{version.ref}:{version.content_hash}", split)
prepared = [mi.name for mi in models.list_models(conn) if mi.prepared]

tab_rows, tab_stats, tab_clean, tab_split, tab_export = st.tabs(
    ["Preview and browse", "Stats", "Clean", "Split", "Export"])

with tab_rows:
    st.markdown("**Preview**")
    st.table(preview_table(rows, version.kind, limit=10).set_index("row"))
    query = st.text_input("Search rows", placeholder="words to find in any message")
    hits = inspection.search(rows, query)
    st.caption(f"{len(hits):,} matching rows")
    if hits:
        pick = st.number_input("Row", min_value=1, max_value=len(hits), value=1,
                               help="position among the matching rows") - 1
        row = rows[hits[pick]]
        st.caption(f"row {hits[pick] + 1} of {len(rows)}")
        chat_col, tmpl_col = st.columns(2)
        with chat_col:
            st.markdown("**As a chat**")
            for n, conv in enumerate(inspection.conversations(row)):
                if version.kind == "preference":
                    st.markdown("*chosen*" if n == 0 else "*rejected*")
                show_chat(conv)
            if version.kind == "kto":
                st.caption(f"label: {'desirable' if row['label'] else 'undesirable'}")
        with tmpl_col:
            st.markdown("**As the model sees it**")
            if not prepared:
                st.caption("Prepare a model on the Models page to see the chat-templated text.")
            else:
                model = st.selectbox("Model", prepared, key="tmpl_model")
                assistant_only = st.checkbox("Train on assistant tokens only", value=True)
                with _ui.user_errors():
                    show_templated(inspection.render_tokens(tokenizer_of(model), row, assistant_only))

with tab_stats:
    turns = inspection.turn_stats(rows)
    c1, c2 = st.columns(2)
    c1.markdown("**Messages by role**")
    c1.altair_chart(alt.Chart(pd.DataFrame({"role": list(turns["roles"]), "messages": list(turns["roles"].values())}))
                    .mark_bar().encode(x="role:N", y="messages:Q"), width="stretch")
    c2.markdown("**Messages per row**")
    c2.altair_chart(alt.Chart(pd.DataFrame({"messages per row": list(turns["turns"]),
                                            "rows": list(turns["turns"].values())}))
                    .mark_bar().encode(x="messages per row:O", y="rows:Q"), width="stretch")
    st.markdown("**Token lengths**")
    if not prepared:
        st.caption("Prepare a model on the Models page to measure token lengths with its tokenizer.")
    else:
        c1, c2 = st.columns(2)
        model = c1.selectbox("Tokenizer of", prepared, key="len_model")
        max_length = c2.number_input("max_length", min_value=16, value=1024, step=64)
        if st.button("Measure token lengths"):
            bar = st.progress(0.0, "tokenizing")
            with _ui.user_errors():
                lengths = inspection.token_lengths(rows, tokenizer_of(model), lambda f, msg: bar.progress(f, msg))
                st.session_state.lengths = (version.ref, split, model, lengths)
            bar.empty()
        saved = st.session_state.get("lengths")
        if saved and saved[:3] == (version.ref, split, model):
            stats = inspection.length_stats(saved[3], int(max_length))
            st.altair_chart(alt.Chart(pd.DataFrame(stats["bins"])).mark_bar().encode(
                x=alt.X("from:Q", title="tokens"), x2="to:Q", y=alt.Y("rows:Q")), width="stretch")
            st.write(f"min {stats['min']}, median {stats['median']}, p95 {stats['p95']}, max {stats['max']}: "
                     f"**{stats['over_max_length']} rows exceed max_length {stats['max_length']}** "
                     "(TRL truncates them).")

with tab_clean:
    with st.form("clean"):
        dedup = st.radio("Deduplicate", ["none", "exact", "near"], horizontal=True,
                         help="near: exact first, then MinHash/LSH over word 3-grams")
        threshold = st.slider("Near-duplicate threshold (Jaccard)", 0.5, cleaning.MAX_THRESHOLD, 0.85)
        redact = st.checkbox("Redact PII (emails, phone numbers, card numbers, IP addresses, IBANs)")
        c1, c2 = st.columns(2)
        max_tokens = c1.number_input("Drop rows longer than (tokens, 0 = keep all)", min_value=0, value=0)
        clean_model = c2.selectbox("Tokenizer of", prepared or ["(no prepared model)"], key="clean_model")
        go = st.form_submit_button("Clean", type="primary")
    if go:
        bar = st.progress(0.0, "cleaning")
        with _ui.user_errors():
            reports = datasets.clean(conn, ws, version.ref, dedup=None if dedup == "none" else dedup,
                                     threshold=threshold, redact=redact, max_tokens=max_tokens or None,
                                     model=clean_model if prepared else None,
                                     progress=lambda f, msg: bar.progress(f, msg))
            for r in reports:
                st.success(f"{r['ref']} — {r['step']}: {r['before']} → {r['after']} rows")
                if r.get("entities"):
                    st.write({k: v for k, v in r["entities"].items()})
                for ex in r["examples"]:
                    st.json(ex, expanded=False)
        bar.empty()
    st.caption(f"PII types: {', '.join(cleaning.PII_ENTITIES)}")

with tab_split:
    with st.form("split"):
        c = st.columns(3)
        val = c[0].number_input("Validation fraction", 0.01, 0.9, 0.1)
        test = c[1].number_input("Test fraction", 0.0, 0.9, 0.0)
        seed = c[2].number_input("Seed", 0, 2**31 - 1, 0)
        go = st.form_submit_button("Split", type="primary")
    if go:
        with _ui.user_errors():
            new = datasets.split(conn, ws, version.ref, val=val, test=test, seed=int(seed))
            st.success(f"{new.ref}: " + ", ".join(f"{s} {n}" for s, n in new.splits.items()))

with tab_export:
    with st.form("export"):
        fmt_out = st.selectbox("Format", datasets.EXPORT_FORMATS,
                               help="jsonl/trl: TRL's conversational JSONL; hf: datasets.save_to_disk folder")
        out = st.text_input("Write to (path on this machine)", value=str(ws.home / "exports" / version.name))
        go = st.form_submit_button("Export")
    if go:
        with _ui.user_errors():
            for p in datasets.export(conn, ws, version.ref, fmt_out, out):
                st.success(f"wrote {p}")
    st.download_button(f"Download {split}.jsonl", version.files[split].read_bytes(),
                       file_name=f"{version.name}-v{version.version}-{split}.jsonl", mime="application/jsonl")
