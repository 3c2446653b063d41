"""Feedback: create preference campaigns, watch generation, check label quality, export and import."""
import json

import altair as alt
import pandas as pd
import streamlit as st

from tunelab import configs, datasets, feedback, jobs, models, untrusted, workspace
from tunelab.datasets import formats
from tunelab.generate import SamplingSettings
from pages import _ui

UPLOAD_TYPES = tuple(formats.FILE_TYPES)  # what the dataset importer reads: .json, .jsonl, .csv, .parquet

user = _ui.guard("feedback")
st.title("Feedback")
conn, ws = _ui.db(), _ui.ws()


# ---------------------------------------------------------------- new campaign
with st.expander("New campaign", expanded=not feedback.list_campaigns(conn)):
    specs = [str(s) for s in models.chat_choices(conn)]
    with st.form("new_campaign"):
        name = st.text_input("Name")
        chosen = st.multiselect("Models (two or more; MODEL+RUN is a run's result on that model)", specs)
        dataset = st.text_input("Prompts from a dataset (name or name@version)")
        pasted = st.text_area("…or paste prompts, one per line")
        prompts_file = st.file_uploader("…or upload them: .txt (one a line), or a JSONL, JSON, CSV or Parquet file "
                                        "with a prompt or instruction column (or any dataset's prompt turns)",
                                        type=["txt", *UPLOAD_TYPES], key="prompts_file")
        left, right = st.columns(2)
        with left:
            config = _ui.config_form_fields(feedback.CampaignConfig, "cc", multiline={"guidelines"})
        with right:
            sampling = _ui.config_form_fields(SamplingSettings, "ss", multiline={"system_prompt"})
        submitted = st.form_submit_button("Create and generate", type="primary")
    if submitted:
        with _ui.user_errors():
            given = [p for p in pasted.splitlines() if p.strip()] or None
            if given is None and prompts_file is not None:
                with workspace.saved_upload(prompts_file.name, prompts_file.getvalue(),
                                            (".txt", *UPLOAD_TYPES)) as path:
                    given = datasets.read_prompts(path, prompts_file.name)
            c = feedback.create_campaign(conn, ws, name, chosen, prompts=given,
                                         dataset=None if given is not None else (dataset.strip() or None),
                                         config=configs.from_mapping(feedback.CampaignConfig, config, "form"),
                                         settings=configs.from_mapping(SamplingSettings, sampling, "form"),
                                         created_by=user.id)
            feedback.start_generation(conn, ws, c.name)
            st.session_state.fb_campaign = c.name
            st.rerun()

# ---------------------------------------------------------------- campaigns
campaigns = feedback.list_campaigns(conn)
if not campaigns:
    st.info("No campaigns yet. Create one above, or import judgments below.")
else:
    st.dataframe([{"campaign": c.name, "status": c.status, "progress": round(c.progress * 100),
                   "models": ", ".join(c.models), "source": c.source, "overlap": c.overlap} for c in campaigns],
                 hide_index=True, column_config={"progress": st.column_config.ProgressColumn("progress", format="%d%%")})
    names = [c.name for c in campaigns]
    if st.session_state.get("fb_campaign") not in names:
        st.session_state.fb_campaign = names[0]
    selected = st.selectbox("Campaign", names, key="fb_campaign")

    @st.fragment(run_every=2)
    def generation_progress() -> None:
        _ui.guard("feedback")  # a fragment rerun (its Retry button included) skips the page's own guard
        jobs.reconcile(conn)  # once per refresh: a generation process that died shows as failed
        c = feedback.get_campaign(conn, selected)
        busy = c.status in ("pending", "generating")
        if busy:
            st.progress(c.progress, text=f"Generating: {c.progress_message or 'starting'}")
        elif st.session_state.pop("fb_busy", None) == selected:
            st.rerun(scope="app")  # generation just ended: redraw the quality figures
        if busy:
            st.session_state.fb_busy = selected
        elif c.status == "failed":
            _ui.show_error(f"Generation failed: {c.error}")
            if st.button("Retry generation"):
                with _ui.user_errors():
                    feedback.start_generation(conn, ws, c.name)
                    st.rerun()

    generation_progress()

    q = feedback.quality(conn, selected)
    st.subheader("Quality")
    cols = st.columns(6)
    cols[0].metric("Votes", q["votes"])
    cols[1].metric("Pairs complete", f"{q['pairs_complete']} / {q['pairs']}")
    cols[2].metric("Annotators", q["annotators"])
    cols[3].metric("Cohen's κ", "—" if q["cohen_kappa"] is None else q["cohen_kappa"],
                   help="Two annotators only, on the pairs both rated.")
    cols[4].metric("Krippendorff's α", "—" if q["krippendorff_alpha"] is None else q["krippendorff_alpha"],
                   help="Any number of annotators, nominal labels, missing ratings allowed.")
    cols[5].metric("Left side wins", "—" if q["left_win_rate"] is None else f"{q['left_win_rate']:.0%}",
                   help="Of decisive votes; about 50% means no position bias.")
    if q["flagged"]:
        st.warning(f"Far from consensus or failing gold pairs: {', '.join(q['flagged'])}")
    if q["per_annotator"]:
        per = pd.DataFrame(q["per_annotator"]).drop(columns=["annotator_id"])
        st.dataframe(per, hide_index=True)
        chart_rows = per.dropna(subset=["agreement_with_majority"])
        if not chart_rows.empty:
            st.altair_chart(alt.Chart(chart_rows).mark_bar().encode(
                x=alt.X("agreement_with_majority:Q", scale=alt.Scale(domain=[0, 1]), title="agreement with majority"),
                y=alt.Y("annotator:N", sort="-x", title=None),
                color=alt.Color("flagged:N", scale=alt.Scale(domain=[False, True], range=["#4c78a8", "#e45756"]))),
                width="stretch")
        st.bar_chart(pd.Series(q["choices"], name="votes"), horizontal=True, height=180)

    # ------------------------------------------------------------ judges against people, triage
    if q["judges"]:
        st.markdown("**Judges against people**")
        num = st.column_config.NumberColumn
        st.dataframe(pd.DataFrame(q["judges"]), hide_index=True, column_config={
            "judge": st.column_config.TextColumn("judge", help="The judge's name in this campaign."),
            "kind": st.column_config.TextColumn("kind", help="reward model, chat model, or an OpenAI-compatible "
                                                "endpoint."),
            "judged": num("judged", help="Pairs the judge gave a verdict on."),
            "compared": num("compared", help="Pairs both the judge and people judged where people have a majority "
                            "label (a pair whose people are level is not compared)."),
            "agreement_with_people": num("agreement", format="%.2f", help="Share of the compared pairs where the "
                                         "judge's verdict equals the people's majority label."),
            "cohen_kappa": num("Cohen's κ", format="%.2f", help="Judge against the people's majority on the "
                               "compared pairs, corrected for chance: 1 is full agreement, 0 what chance gives."),
            "position_consistency": num("position consistency", format="%.2f", help="Of the verdicts asked in both "
                                        "orders, the share that stayed the same when A and B were swapped (blank: "
                                        "the judge reads no order, as a reward model)."),
            "judge_prefers_longer": num("judge prefers longer", format="%.2f", help="Of the judge's decisive "
                                        "verdicts on pairs both judged whose answers differ in length, the share "
                                        "that chose the longer answer."),
            "people_prefer_longer": num("people prefer longer", format="%.2f", help="The same share for people's "
                                        "decisive votes on those pairs; a judge well above it has a length bias."),
            "length_pairs": num("pairs by length", help="Pairs both judged whose two answers differ in length.")})
        if "fb_triage_done" in st.session_state:
            st.success(st.session_state.pop("fb_triage_done"))
        st.caption(f"Triage: people get only the pairs a judge is unsure of (a small |margin|, a verdict that flips "
                   f"when A and B swap, a tie); its confident verdicts stand. Now {q['pairs_triaged']} of "
                   f"{q['pairs']} pairs are left to a judge.")
        t1, t2, t3, t4 = st.columns([2, 1, 1, 1], vertical_alignment="bottom")
        triage_judge = t1.selectbox("Triage with judge", [r["judge"] for r in q["judges"]], key="triage_judge")
        min_margin = t2.number_input("Min |margin|", min_value=0.0, value=feedback.MIN_MARGIN, step=0.05,
                                     key="triage_margin", help="Least |margin| of a verdict that stands: P(a) − P(b) "
                                     "for a chat or endpoint judge; reward units for a reward model.")
        if t3.button("Triage", key="triage_go"):
            with _ui.user_errors():
                doc = feedback.triage(conn, selected, triage_judge, min_margin=min_margin)
                st.session_state.fb_triage_done = (f"{doc['to_people']} pairs to people, {doc['to_judge']} left "
                                                   f"to judge {doc['judge']}.")
                st.rerun()
        if t4.button("Undo triage", key="triage_undo", disabled=not q["pairs_triaged"]):
            with _ui.user_errors():
                doc = feedback.untriage(conn, selected)
                st.session_state.fb_triage_done = f"{doc['restored']} pairs back to people."
                st.rerun()

    # ------------------------------------------------------------ export
    st.subheader("Export")
    a, b, c_, d = st.columns(4)
    policy = feedback.ExportPolicy(
        min_votes=a.number_input("Min votes per pair", 1, value=1),
        min_agreement=b.slider("Min agreement", 0.0, 1.0, 0.5, 0.05),
        drop_ties=not c_.checkbox("Keep ties"), drop_both_bad=not d.checkbox("Keep both-bad"))
    rows, counts = feedback.aggregate(conn, selected, policy)
    st.caption(f"{len(rows)} preference rows; " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))
    e1, e2 = st.columns(2)
    e1.download_button("TRL preferences (JSONL)", "".join(json.dumps(r) + "\n" for r in rows),
                       file_name=f"{selected}-preferences.jsonl", mime="application/jsonl")
    e2.download_button("Arena battles (JSONL)",
                       "".join(json.dumps(r) + "\n" for r in feedback.arena_battles(conn, selected)),
                       file_name=f"{selected}-battles.jsonl", mime="application/jsonl")
    with st.form("register"):
        dataset_name = st.text_input("Register the preferences as dataset", value=f"{selected}-prefs")
        if st.form_submit_button("Register"):
            with _ui.user_errors():
                doc = feedback.export(conn, ws, selected, "trl", ws.home / "exports" / f"{selected}-preferences.jsonl",
                                      policy, register=dataset_name.strip())
                st.success(f"Registered {doc['dataset']} ({doc['rows']} rows).")
                st.session_state[f"registered_{selected}"] = doc["dataset"]
    registered = st.session_state.get(f"registered_{selected}")
    if registered:
        st.markdown(f"**Next, with `{untrusted.markdown(registered)}`:**")
        l1, l2, l3 = st.columns(3)
        l1.page_link("pages/launch.py", label="Train a reward model on these votes", icon=":material/star:",
                     query_params={"method": "reward", "dataset": registered})
        l2.page_link("pages/launch.py", label="Improve the policy with DPO", icon=":material/trending_up:",
                     query_params={"method": "dpo", "dataset": registered})
        l3.page_link("pages/launch.py", label="Improve the policy with GRPO", icon=":material/trending_up:",
                     query_params={"method": "grpo", "dataset": registered})

    # ------------------------------------------------------------ judges
    with st.expander("Judges", key="judges_box"):
        st.caption("A model votes on this campaign's pairs as a non-human annotator, in a background job; its "
                   "verdicts are kept apart from people's votes. A reward model's verdict is the sign of its score "
                   "margin (a tie inside the tie band); chat and endpoint judges are asked the template below with "
                   "A first, then B first, and a verdict stands only when both orders agree.")
        judge_kind = st.radio("Judge kind", feedback.judges.KINDS, horizontal=True, key="judge_kind",
                              format_func={"reward": "reward model", "chat": "chat model",
                                           "endpoint": "OpenAI-compatible endpoint"}.get)
        with st.form("judge_form"):
            extra = {}
            if judge_kind == "reward":
                judge_value = st.selectbox("Reward run (method: reward)", models.reward_runs(conn))
                extra["tie_band"] = st.number_input("Tie band", min_value=0.0, value=feedback.DEFAULT_TIE_BAND,
                                                    step=0.05, help="|reward(a) − reward(b)| below this is a tie.")
            elif judge_kind == "chat":
                judge_value = st.selectbox("Chat model", [str(s) for s in models.chat_choices(conn)])
            else:
                judge_value = st.text_input("Base URL", placeholder="http://localhost:8000/v1")
                extra["model"] = st.text_input("Model", help="The model name the server knows.")
                extra["api_key_env"] = st.text_input(
                    "API key variable", placeholder="TUNELAB_JUDGE_OPENAI_KEY", help="The environment variable of "
                    "the tunelab server that holds the key, named TUNELAB_JUDGE_…; blank for a server without "
                    "keys. The key itself is never stored.").strip() or None
            judge_name = st.text_input("Judge name", placeholder="blank: the kind and the model")
            start = st.form_submit_button("Start judging")
        if start:
            with _ui.user_errors():
                spec = feedback.make_spec(judge_kind, judge_value or "", **extra)
                feedback.start_judge(conn, ws, selected, judge_kind, spec, judge_name.strip() or None)
                st.rerun()
        if st.toggle("Show the judge's template", key="judge_template"):
            st.code(feedback.TEMPLATE, language=None, wrap_lines=True)

        @st.fragment(run_every=2)
        def judge_progress() -> None:
            _ui.guard("feedback")  # a fragment rerun skips the page's own guard
            judged = feedback.judges_overview(conn, selected)
            for j in judged:
                if j["status"] in jobs.ACTIVE:
                    st.progress(j["progress"], text=f"{j['judge']}: {j['message']}")
                elif j["status"] not in (None, "completed"):
                    _ui.show_error(f"Judge {j['judge']}: its job {j['status']}: {j['error'] or ''}")
            if judged:
                st.dataframe([{"judge": j["judge"], "kind": j["kind"], "judged": f"{j['judged']} / {j['pairs']}",
                               "verdicts": ", ".join(f"{k} {v}" for k, v in j["choices"].items()),
                               "same in both orders": j["position_consistent"], "unparsed replies": j["unparsed"],
                               "status": j["status"]} for j in judged], hide_index=True)

        judge_progress()

    # ------------------------------------------------------------ gold pairs
    with st.expander("Add gold pairs", key="gold_box"):
        st.caption("A preference file (JSONL, JSON, CSV or Parquet) with prompt, chosen, rejected: 'chosen' is the "
                   "known better answer. Every annotator sees each gold pair once, mixed in with the rest.")
        gold = st.file_uploader("Gold file", type=list(UPLOAD_TYPES), key="gold_file")
        if gold is not None and st.button("Add gold pairs"):
            with _ui.user_errors(), workspace.saved_upload(gold.name, gold.getvalue(), UPLOAD_TYPES) as path:
                n = feedback.add_gold_file(conn, selected, path, source_name=gold.name)
                st.success(f"Added {n} gold pairs.")

# ---------------------------------------------------------------- import
with st.expander("Import external judgments", key="import_box"):
    with st.form("import"):
        upload = st.file_uploader("Arena battles or AlpacaEval annotations (JSON, JSONL, CSV or Parquet)",
                                  type=list(UPLOAD_TYPES))
        fmt = st.radio("Format", ["arena", "alpaca_eval"], horizontal=True)
        target = st.text_input("Campaign name")
        if st.form_submit_button("Import") and upload is not None:
            with _ui.user_errors(), workspace.saved_upload(upload.name, upload.getvalue(), UPLOAD_TYPES) as path:
                doc = feedback.import_judgments(conn, path, fmt, target.strip(), source_name=upload.name)
                st.success(f"{doc['votes_added']} votes added, {doc['votes_updated']} updated, {doc['skipped']} skipped.")
