"""Runs: every experiment in one table, a live view of one run (progress, curves, log, stop and resume),
a comparison of several runs (overlaid curves, and the config keys that differ), and the Jobs view: every
background job (runs, evals, campaign generation) in the one queue, with a Stop button.

The page only reads run folders and the DB; it never holds a training model. Each rerun (of the page or
of its refreshing fragment) reconciles the jobs once, since reads change nothing. Viewers see it read-only."""
import time

import altair as alt
import pandas as pd
import streamlit as st
import yaml

from tunelab import cost, jobs, runs
from tunelab.train import config
from pages import _ui

ACTORS = ("admin", "engineer")  # may stop, resume and retry; viewers only look
user = _ui.guard("runs")
can_act = user.role in ACTORS
st.title("Runs")
conn, ws = _ui.db(), _ui.ws()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def table(all_runs: list[runs.Run]) -> pd.DataFrame:
    rows = []
    for r in all_runs:
        c, st_ = r.config, r.progress()
        rows.append({
            "id": r.id, "status": r.status, "method": r.method, "base": r.base_model, "dataset": r.dataset,
            "backend": r.backend + (f" x{n}" if (n := max(c.get("num_workers", 1), c.get("num_processes", 1))) > 1
                                    else ""),
            "tuning": r.tuning, "lr": c.get("learning_rate"),
            "batch": c.get("per_device_train_batch_size", 0) * c.get("gradient_accumulation_steps", 1),
            "max_length": c.get("max_length"), "lora r": c.get("lora", {}).get("r") if r.tuning != "full" else None,
            "step": f"{st_.get('step', 0)}/{st_.get('max_steps') or '?'}",
            "last loss": st_.get("loss"), "eval loss": st_.get("eval_loss"),
            "duration": _duration(r.seconds), "est. duration": _duration(r.est_seconds),
            "cost $": round(r.usd, 4) if r.usd is not None else None,
            "est. cost $": round(r.est_usd, 4) if r.est_usd is not None else None,
            "error": r.error,
        })
    return pd.DataFrame(rows)


def curves(frames: dict[str, list[dict]], field: str, kind: str, title: str):
    data = pd.DataFrame([{"run": rid, "step": m["step"], field: m[field]} for rid, ms in frames.items()
                         for m in ms if m.get("kind") == kind and m.get(field) is not None])
    if data.empty:
        return None
    return (alt.Chart(data, title=title).mark_line(point=len(data) < 60)
            .encode(x="step:Q", y=alt.Y(f"{field}:Q", scale=alt.Scale(zero=False)), color="run:N",
                    tooltip=["run", "step", field]).properties(height=220))


# What the RLHF methods log beyond the loss (core/train/reward.py, dpo.py, grpo.py); a chart shows only
# when some run on screen logged its field.
METHOD_CURVES = [
    ("eval_accuracy", "eval", "reward model: held-out pairwise accuracy"),
    ("accuracy", "train", "reward model: training pairwise accuracy"),
    ("rewards/margins", "train", "DPO: reward margin (chosen - rejected)"),
    ("rewards/accuracies", "train", "DPO: reward accuracy"),
    ("rewards/chosen", "train", "DPO: reward of chosen"),
    ("rewards/rejected", "train", "DPO: reward of rejected"),
    ("reward", "train", "online RL: mean reward"),
    ("reward_std", "train", "online RL: reward spread (std)"),
    ("kl", "train", "online RL: KL to the reference"),
    ("completions/mean_length", "train", "online RL: answer length (tokens)"),
]


def chart_grid(charts: list, where=st) -> None:
    charts = [c for c in charts if c is not None]
    for i in range(0, len(charts), 2):
        for col, chart in zip(where.columns(2), charts[i:i + 2]):
            col.altair_chart(chart, width="stretch")


def show_charts(frames: dict[str, list[dict]], key: str) -> None:
    chart_grid([curves(frames, "loss", "train", "training loss"), curves(frames, "eval_loss", "eval", "eval loss")]
               + [curves(frames, field, kind, title) for field, kind, title in METHOD_CURVES])
    # Drawn when opened: each chart costs the browser about 0.25 s, and these two are for diagnosis.
    box = st.expander("learning rate and gradient norm", key=f"optimizer_{key}", on_change="rerun")
    if box.open:
        chart_grid([curves(frames, "learning_rate", "train", "learning rate"),
                    curves(frames, "grad_norm", "train", "gradient norm")], where=box)


def _stop_job(job_id: int) -> None:
    """The Stop button's callback: it runs before the page's guard, so it checks the role itself."""
    who = _ui.allowed("runs")
    if who is None or who.role not in ACTORS:
        return
    with _ui.user_errors():
        jobs.stop(conn, job_id, wait=False)


def jobs_view() -> None:
    """Every job, newest first; it refreshes itself while any is queued or running."""
    active = any(j.status in jobs.ACTIVE for j in jobs.list_jobs(conn))

    @st.fragment(run_every=2 if active else None)
    def view() -> None:
        can_act = _ui.guard("runs").role in ACTORS  # a fragment rerun skips the page's guard; roles change
        jobs.reconcile(conn)
        found = jobs.list_jobs(conn)
        if not found:
            st.caption("No jobs yet.")
            return
        st.dataframe(pd.DataFrame([{
            "job": j.id, "kind": j.kind, "of": j.target, "status": j.status, "backend": j.backend,
            "progress": 1.0 if j.status == "completed" else float(j.progress().get("progress") or 0.0),
            "message": j.message(), "elapsed": _duration(j.seconds), "error": j.error} for j in found]),
            hide_index=True, width="stretch",
            column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)})
        if can_act:
            for j in (j for j in found if j.status in jobs.ACTIVE):
                st.button("Stop", key=f"stop_job_{j.id}", on_click=_stop_job, args=(j.id,),
                          help=f"Stop job {j.id} ({j.kind} {j.target}): SIGTERM, SIGKILL after 30 s")
    view()


jobs.reconcile(conn)  # once per page rerun: the reads below change nothing
all_runs = runs.list_runs(conn)
if not all_runs:
    st.info("No runs yet." + (" Launch one on the Launch run page or with `tunelab train CONFIG.yaml`."
                              if can_act else ""))
    st.subheader("Jobs")
    jobs_view()
    st.stop()

st.dataframe(table(all_runs), hide_index=True, width="stretch")

ids = [r.id for r in all_runs]
# ?run=ID (the Leaderboard's links) opens that run; else the one just launched (the Launch page), else the newest.
selected = st.query_params.get("run") or st.session_state.get("runs_selected")
# A tab switch reruns the page, so only the tab on screen draws its charts (bench/ui.py: the Runs page).
live_tab, compare_tab, jobs_tab = st.tabs(["Run", "Compare", "Jobs"], key="runs_tab", on_change="rerun")

with live_tab:
    run_id = st.selectbox("run", ids, index=ids.index(selected) if selected in ids else 0, key="runs_pick")
    st.query_params["run"] = run_id  # the URL names the run on screen, to share or reload
    # Only a queued or running run changes, so only its view refreshes itself: redrawing a finished run's
    # charts every 2 s kept a quarter of a core busy for as long as the page was open.
    active = next(r.status for r in all_runs if r.id == run_id) in ("queued", "running")

    @st.fragment(run_every=2 if active else None)
    def live(run_id: str) -> None:
        can_act = _ui.guard("runs").role in ACTORS  # a fragment rerun skips the page's guard; roles change
        jobs.reconcile(conn)  # this fragment reruns alone every 2 s
        run = runs.get(conn, run_id)
        st_ = run.progress()
        step, total = st_.get("step", 0), st_.get("max_steps")
        label = {"running": ":blue", "completed": ":green", "failed": ":red", "interrupted": ":orange"}.get(run.status, "")
        st.markdown(f"**{run.id}** · {run.method} {run.tuning} · {run.base_model} on {run.dataset} · "
                    f"{run.backend}" + (f" (Ray job `{run.ray_job_id}`)" if run.ray_job_id else "") + " · "
                    f"{label}[{run.status}]" + (" (stopping…)" if run.stop_requested_at and run.status == "running" else ""))
        if run.status == "running":
            eta = st_.get("eta_s")
            st.progress(min(1.0, float(st_.get("progress") or 0.0)),
                        f"{st_.get('phase', '')}" + (f" · ETA {_duration(eta)}" if eta is not None else ""))
        if run.error:
            _ui.show_error(run.error)
        act = cost.actual(run)
        a, b, c, d, e = st.columns(5)
        a.metric("Step", f"{step} / {total or '?'}")
        b.metric("Loss", f"{st_['loss']:.4f}" if st_.get("loss") is not None else "–")
        c.metric("Eval loss", f"{st_['eval_loss']:.4f}" if st_.get("eval_loss") is not None else "–")
        d.metric("Tokens/s", f"{act['tokens_per_s']:.1f}" if act["tokens_per_s"] else "–")
        e.metric("Time · cost", f"{_duration(act['seconds'])} · ${act['usd'] or 0:.4f}",
                 help=f"estimated before launch: {_duration(run.est_seconds)} · ${run.est_usd or 0:.4f}")
        show_charts({run.id: runs.read_metrics(ws, run.id)}, key=run.id)
        # Expanders rerun when opened, so their code blocks are drawn only when asked for (bench/ui.py).
        log = st.expander("log (tail)", expanded=run.status in ("failed", "interrupted"), key=f"log_{run.id}",
                          on_change="rerun")
        if log.open:
            log.code(runs.log_tail(run) or "(empty)", language="text")
        if can_act:
            b1, b2, _ = st.columns([1, 1, 4])
            if run.status in ("queued", "running") and b1.button("Stop", key=f"stop_{run.id}",
                                                                   help="Save a checkpoint at the end of this step, then exit"):
                with _ui.user_errors():
                    runs.stop(conn, run.id, wait=False)
                st.rerun(scope="app")
            if run.status in runs.RESUMABLE and b2.button("Resume", key=f"resume_{run.id}",
                                                          help="Continue from the latest checkpoint"):
                with _ui.user_errors():
                    runs.resume(conn, run.id)
                st.rerun(scope="app")
        config_box = st.expander("config", key=f"config_{run.id}", on_change="rerun")
        if config_box.open:
            config_box.code(yaml.safe_dump(run.config, sort_keys=False), language="yaml")
        st.caption(f"folder {run.path} · updated {time.strftime('%H:%M:%S')}")

    if live_tab.open:
        live(run_id)

with compare_tab:
    # Drawn on every run, so that the choice survives a switch to the other tab.
    picked = st.multiselect("runs to compare", ids, default=ids[:2] if len(ids) >= 2 else ids, key="runs_compare")
    if len(picked) < 2:
        st.caption("Pick two or more runs.")
    elif compare_tab.open:
        chosen = [r for r in all_runs if r.id in picked]
        show_charts({r.id: runs.read_metrics(ws, r.id) for r in chosen}, key="compare")
        differs = config.diff({r.id: r.config for r in chosen})
        st.subheader("Config keys that differ")
        if differs:
            st.dataframe(pd.DataFrame([{"key": k, **{rid: str(v) for rid, v in vals.items()}}
                                       for k, vals in differs.items()]), hide_index=True)
        else:
            st.caption("The configs are identical.")

with jobs_tab:
    if jobs_tab.open:
        jobs_view()
