"""Home: the pipeline at a glance and the path for a newcomer. Imports no torch or transformers."""
import streamlit as st

from tunelab import jobs, overview
from pages import _ui

_ui.guard("home")
st.title("tunelab")
st.caption("Curate data → train → collect human preferences → RLHF → evaluate. All on this machine.")

jobs.reconcile(_ui.db())  # once per rerun: a run whose process died shows as interrupted, queued jobs start
summary = overview.pipeline_summary(_ui.db())
c = st.columns(5)
c[0].metric("Datasets", summary["datasets"], help=f"{summary['dataset_versions']} versions")
c[1].metric("Runs", summary["runs"])
c[2].metric("Feedback campaigns", summary["campaigns"])
c[3].metric("Votes", summary["votes"])
c[4].metric("Models", summary["models"])
if summary["runs_by_status"]:
    st.caption("Runs by status: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["runs_by_status"].items())))

top = summary["leaderboard_top"]
st.subheader("Leaderboard: top models")
if top:
    from tunelab import leaderboard  # numpy: only once there is a board to show
    st.dataframe(leaderboard.display(top, ("rank", "model", "about", "rating", "interval", "votes", "rouge_l",
                                           "format", "method")), hide_index=True)
else:
    st.caption("No ratings yet: run a feedback campaign or an eval to fill the leaderboard.")

st.subheader("Getting started")
steps = [
    ("1. Import data", "datasets", "Drop in a JSON, JSONL, CSV or Parquet file; see what it is and what is wrong."),
    ("2. Train", "launch", "SFT with LoRA or full fine-tuning on the bundled SmolLM2-135M-Instruct."),
    ("3. Label", "feedback", "Start a campaign: annotators compare two answers, blind, in the browser."),
    ("4. Compare", "leaderboard", "Ratings with honest intervals, task scores, cost and forgetting in one table."),
]
cols = st.columns(len(steps))
for col, (title, page, text) in zip(cols, steps):
    with col.container(border=True):
        st.markdown(f"**{title}**")
        st.caption(text)
        st.page_link(f"pages/{page}.py", label="Open", icon=":material/arrow_forward:")
