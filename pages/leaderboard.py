"""Leaderboard: one row per model with its human rating (95% interval, rank), eval metrics, forgetting and
training facts; read-only, the viewer's home."""
import datetime as dt
import json

import altair as alt
import pandas as pd
import streamlit as st

from tunelab import db as dbmod, evaluate, feedback, leaderboard
from tunelab.feedback.judgments import list_judges
from pages import _ui

user = _ui.guard("leaderboard")
st.title("Leaderboard")
conn = _ui.db()


@st.cache_resource(show_spinner=False)
def changes(path: str):
    """The server's one counter of commits to the workspace's database (db.change_counter)."""
    return dbmod.change_counter(path)


@st.cache_data(max_entries=32, show_spinner=False)
def board_of(_conn, version: int, campaign: str | None, dataset: str | None, source: str, judge: str | None) -> dict:
    """`leaderboard.build`, kept while nothing is committed to the database (`version`): with 2M votes a build
    takes about 2 s of the page's 3 s goal (bench/leaderboard_scale.py --page), and a reload, another
    viewer or a rerun for a download needs none. A vote, verdict, eval or run landing changes `version`."""
    return leaderboard.build(_conn, campaign=campaign, dataset=dataset, source=source, judge=judge)


all_campaigns = feedback.list_campaigns(conn)
campaigns = [c.name for c in all_campaigns]
eval_sets = sorted({e["dataset"] for e in evaluate.list_evals(conn, status="completed")})
left, mid, right = st.columns(3)
campaign = left.selectbox("Campaign (human votes)", ["All campaigns", *campaigns], key="lb_campaign")
source = mid.selectbox("Votes from", feedback.SOURCES, key="lb_source",
                       help="people: annotators' votes; judge: a judge's verdicts; both: people's votes on a pair when "
                            "it has any, else the judge's (the pairs triage left to the judge).")
eval_set = right.selectbox("Eval set (task metrics)", ["Latest evaluated", *eval_sets], key="lb_dataset")
judge = None
if source != "people":
    judges = sorted({j.name for c in all_campaigns if campaign in ("All campaigns", c.name)
                     for j in list_judges(conn, c.id)})
    if len(judges) > 1:  # across campaigns, each may have its own single judge
        judge = st.selectbox("Judge", [None, *judges] if campaign == "All campaigns" else judges, key="lb_judge",
                             format_func=lambda j: j or "each campaign's own judge")
board = None
with _ui.user_errors():
    board = board_of(conn, changes(str(_ui.ws().db_path))(), None if campaign == "All campaigns" else campaign,
                     None if eval_set == "Latest evaluated" else eval_set, source, judge)
if board is None:
    st.stop()
rows = board["rows"]

updated = dt.datetime.fromtimestamp(board["updated_at"]).strftime("%Y-%m-%d %H:%M") if board["updated_at"] else "never"
ratings_note = (f"{board['votes']} votes: {leaderboard.basis(board)} · ratings are Bradley–Terry on Arena's scale: "
                f"400 points is 10:1 odds, {board['anchor'] or 'the anchor'} is fixed at 1000; the interval is a 95% "
                "bootstrap interval; models whose intervals overlap share a rank" if board["votes"] else "no votes yet")
st.caption(f"Last updated {updated} · eval set {board['dataset'] or '(none)'} · {ratings_note}.")
if not rows:
    st.info("Nothing to rank yet: run an eval (Evaluate page or `tunelab eval`), collect votes in a campaign, "
            "or run `tunelab demo`.")
    st.stop()

rated = [r for r in rows if r["rating"] is not None]
if rated:
    frame = pd.DataFrame(rated)
    base = alt.Chart(frame).encode(y=alt.Y("model:N", sort="-x", title=None))
    chart = (base.mark_rule(strokeWidth=2).encode(x=alt.X("ci_low:Q", title="rating (95% interval)",
                                                            scale=alt.Scale(zero=False)), x2="ci_high:Q")
             + base.mark_point(filled=True, size=80).encode(
                 x="rating:Q", tooltip=["model", "about", alt.Tooltip("rating:Q", format=".0f"), "rank", "votes",
                                        alt.Tooltip("win_rate:Q", format=".0%")]))
    st.altair_chart(chart.properties(height=40 * len(rated) + 40), width="stretch")
else:  # no votes yet: the task metrics are what there is to compare
    scored = pd.DataFrame([r for r in rows if r["rouge_l"] is not None])
    if not scored.empty:
        metrics = [m for m in ("rouge_l", "exact_match", "format") if scored[m].notna().any()]
        long = scored.melt(id_vars=["model", "about"], value_vars=metrics, var_name="metric", value_name="score")
        st.altair_chart(alt.Chart(long.dropna()).mark_bar().encode(
            x=alt.X("score:Q", title="score (0-100)"), y=alt.Y("model:N", title=None, sort="-x"),
            color=alt.Color("metric:N", title=None), yOffset="metric:N",
            tooltip=["model", "about", "metric", alt.Tooltip("score:Q", format=".1f")]
        ).properties(height=30 * len(long) + 40), width="stretch")
        st.caption("No votes yet, so no ratings: the bars are the eval's task metrics.")

plot = leaderboard.tradeoff(rows)
if plot:
    points = alt.Chart(pd.DataFrame(plot["points"])).encode(
        x=alt.X("content:Q", title=plot["x"], scale=alt.Scale(zero=False)),
        y=alt.Y("other:Q", title=plot["y"], scale=alt.Scale(zero=False)),
        tooltip=["model", "about", alt.Tooltip("content:Q", format=".1f"), alt.Tooltip("other:Q", format=".2f")])
    st.altair_chart((points.mark_point(filled=True, size=90)
                     + points.mark_text(align="left", dx=8, dy=-6).encode(text="model:N")).properties(height=320),
                    width="stretch")

st.table(pd.DataFrame(leaderboard.display(rows)).set_index("Model"))

a, b = st.columns(2)
a.download_button("Download CSV", leaderboard.to_csv(rows), file_name="leaderboard.csv", mime="text/csv",
                  key="lb_csv")
b.download_button("Download JSON", json.dumps(board, indent=2, default=str), file_name="leaderboard.json",
                  mime="application/json", key="lb_json")

linked = [r for r in rows if r["run_id"]]
if linked and user.can_open("runs"):
    st.subheader("Runs behind these rows")
    for r in linked:
        st.page_link("pages/runs.py", label=f"{r['model']}: run {r['run_id']} ({r['method']}, {r['data']})",
                     query_params={"run": r["run_id"]}, icon=":material/monitoring:")
