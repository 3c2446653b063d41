"""Evaluate: launch eval runs (a model, an adapter, the prompting / RAG baselines, or a fine-tuned model with
prompting or RAG) and follow them."""
import dataclasses
import datetime as dt
import json

import pandas as pd
import streamlit as st

from tunelab import checks as checks_mod
from tunelab import datasets, evaluate, jobs, models, untrusted
from pages import _ui

_ui.guard("evaluate")
st.title("Evaluate")
st.caption("Held-out loss and perplexity, exact match, ROUGE-L, BLEU and chrF on greedy answers, format (the "
           "percent of answers passing the behaviour checks), an optional reward-model score, and forgetting "
           "(general-text perplexity against the base). Run the prompting and RAG baselines on the same set to see "
           "whether fine-tuning beats them, and a fine-tuned MODEL+RUN with prompting or RAG to see whether they "
           "add up.")
conn, ws = _ui.db(), _ui.ws()
HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(evaluate.EvalConfig)}
DEFAULT = evaluate.EvalConfig(model="", dataset="")

specs = models.chat_choices(conn)
dataset_refs = [d["name"] for d in datasets.list_datasets(conn)]
if not specs or not dataset_refs:
    st.info("Register a model and import a dataset first (Models and Datasets pages).")
else:
    with st.form("launch_eval"):
        c1, c2 = st.columns(2)
        spec = c1.selectbox("Model (MODEL+RUN is a run's result on that model)", specs,
                            help=f"{HELP['model']} {HELP['adapter']}")
        dataset = c2.selectbox("Eval dataset", dataset_refs, help=HELP["dataset"])
        c1, c2, c3 = st.columns(3)
        baseline = c1.radio("Prompting or RAG (on MODEL+RUN: fine-tuned + it)", ["none", *evaluate.BASELINES],
                            horizontal=True, help=HELP["baseline"])
        k = c2.number_input("k examples", 1, 20, DEFAULT.k, help=HELP["k"])
        limit = c3.number_input("Rows (limit)", 1, 100_000, DEFAULT.limit, help=HELP["limit"])
        c1, c2, c3 = st.columns(3)
        max_new_tokens = c1.number_input("Max new tokens", 1, 4096, DEFAULT.max_new_tokens,
                                         help=HELP["max_new_tokens"])
        reward = c2.selectbox("Reward model run (optional)", ["none", *models.reward_runs(conn)], help=HELP["reward"])
        reference = c3.text_input("Reference set (optional)", help=HELP["reference"])
        checks = st.file_uploader("Behaviour checks file (optional; default: the dataset's own)",
                                  type=[s.lstrip(".") for s in checks_mod.UPLOAD_SUFFIXES], help=HELP["checks"])
        system_prompt = st.text_area("Baseline system prompt", DEFAULT.system_prompt, help=HELP["system_prompt"])
        submitted = st.form_submit_button("Launch eval", type="primary")
    if submitted:
        with _ui.user_errors():
            config = evaluate.EvalConfig(
                model=spec.model, dataset=dataset, adapter=spec.run,
                baseline=None if baseline == "none" else baseline, k=int(k), limit=int(limit),
                max_new_tokens=int(max_new_tokens), reward=None if reward == "none" else reward,
                reference=reference.strip() or None, system_prompt=system_prompt,
                checks=str(checks_mod.save_upload(ws, checks.name, checks.getvalue())) if checks else None)
            eval_id = evaluate.launch(conn, ws, config)
            st.success(f"Eval {eval_id} started: {config.label} on {dataset}.")


@st.fragment(run_every=2.0)
def eval_list() -> None:
    _ui.guard("evaluate")  # a fragment rerun (its Stop button included) skips the page's own guard
    jobs.reconcile(conn)  # once per refresh: the read below changes nothing
    rows = evaluate.list_evals(conn)
    st.subheader("Eval runs")
    if not rows:
        st.caption("No eval runs yet.")
        return
    for e in rows:
        if e["status"] in ("queued", "running"):
            st.progress(e["progress"] or 0.0, f"#{e['id']} {e['label']} on {e['dataset']}: {e['message'] or e['status']}")
            if st.button("Stop", key=f"stop_{e['id']}"):
                with _ui.user_errors():
                    evaluate.stop(conn, e["id"])
    table = [{"id": e["id"], "model": e["label"], "dataset": e["dataset"], "status": e["status"],
              "started": dt.datetime.fromtimestamp(e["created_at"]).strftime("%m-%d %H:%M"),
              **{k: (e["metrics"] or {}).get(k) for k in ("perplexity", "exact_match", "rouge_l", "bleu",
                                                           "chrf", "format", "reward", "forgetting")},
              "error": e["error"]} for e in rows]
    st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")


eval_list()

done = [e for e in evaluate.list_evals(conn, status="completed")]
if done:
    st.subheader("Answers of one eval run")
    pick = st.selectbox("Eval run", done, format_func=lambda e: f"#{e['id']} {e['label']} on {e['dataset']}")
    st.json(pick["metrics"], expanded=False)
    outputs = evaluate.evals_dir(ws) / str(pick["id"]) / "outputs.jsonl"
    if outputs.exists():
        answers = [json.loads(line) for line in outputs.read_text().splitlines()]
        if pick["metrics"].get("checks"):  # check names come from a file: no images (untrusted.markdown)
            st.caption(untrusted.markdown(
                f"Behaviour checks ({pick['metrics']['checks_source']}), percent of answers passing: "
                + ", ".join(f"{n} {rate:.0f}%" for n, rate in pick["metrics"]["checks"].items())))
        st.dataframe(pd.DataFrame([{"question": a["prompt"][-1]["content"], "reference": a["reference"],
                                    "answer": a["answer"], "reward": a["reward"],
                                    "failed checks": ", ".join(n for n, ok in (a.get("checks") or {}).items()
                                                               if not ok)} for a in answers]),
                     hide_index=True, width="stretch")
