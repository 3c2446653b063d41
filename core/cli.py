"""The `tunelab` command. Each subcommand is a thin layer over one core/ function.

Exit codes: 0 ok, 2 user error (message on stderr), 1 bug. `--json` prints one JSON document on
stdout and nothing else (progress bars go to stderr).
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
from contextlib import contextmanager

from tunelab.errors import UserError


# ---------------------------------------------------------------- helpers shared by commands

def _db_ws():
    from tunelab import db, workspace
    ws = workspace.current()
    return db.connect(ws.db_path), ws


def _print_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


@contextmanager
def progress_bar(desc: str):
    """The one progress display of the CLI, fed by core's `progress(fraction, message)` callbacks: a tqdm
    bar on stderr when stderr is a terminal, else (a log, CI, a pipe) one summary line at the end, since
    every redraw of a bar would be a line of its own there."""
    import time

    from tqdm import tqdm
    bar = tqdm(total=100, desc=desc, file=sys.stderr, disable=None,  # None: draw only on a tty
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
    drawing, last, started = not bar.disable, [""], time.monotonic()

    def update(fraction: float, message: str = "") -> None:
        last[0] = message or last[0]
        if drawing:
            bar.n = round(100 * max(0.0, min(1.0, fraction)))
            bar.set_postfix_str(message)
    try:
        yield update
    finally:
        bar.close()
    if not drawing:  # not after an error: its message says what happened
        print(f"{desc}: {last[0] or 'done'} in {time.monotonic() - started:.1f} s", file=sys.stderr)


def _table(rows: list[dict], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "") if r.get(c) is not None else "").ljust(widths[c]) for c in columns))


# ---------------------------------------------------------------- models

def cmd_models_list(args) -> None:
    from tunelab import models
    db, _ = _db_ws()
    rows = [{"name": m.name, "kind": m.kind, "source": m.source, "prepared": m.prepared, "path": m.path,
             "params": m.params, "size_bytes": m.size_bytes} for m in models.list_models(db)]
    if args.json:
        _print_json(rows)
    else:
        _table(rows, ["name", "kind", "source", "prepared", "params", "path"])


def cmd_models_prepare(args) -> None:
    from tunelab import models
    db, ws = _db_ws()
    with progress_bar(f"preparing {args.name}") as update:
        path = models.prepare(db, ws, args.name, progress=update)
    print(path)


def cmd_models_add(args) -> None:
    from tunelab import models
    db, _ = _db_ws()
    info = models.add_local(db, args.path, args.name)
    print(f"registered {info.name} ({info.params or '?'} parameters) from {info.path}")


# ---------------------------------------------------------------- generate

def cmd_generate(args) -> None:
    from tunelab import configs, generate, models
    db, ws = _db_ws()
    settings = configs.from_flags(generate.SamplingSettings, args)
    spec = models.ModelSpec.parse(f"{args.model}+{args.adapter}" if args.adapter else args.model).check(db, ws)
    with progress_bar(f"loading {spec}") as update:
        path, adapter = spec.folders(db, ws, progress=update)
    model, tokenizer = generate.load(path, adapter)
    [answer] = generate.generate(model, tokenizer, [args.prompt], settings)
    if args.json:
        _print_json({"model": spec.model, "adapter": spec.run, "spec": str(spec), "prompt": args.prompt,
                     "answer": answer, "settings": settings.to_dict()})
    else:
        print(answer)


# ---------------------------------------------------------------- users

def _read_password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise UserError("the two passwords differ")
    return first


def cmd_users_add(args) -> None:
    from tunelab import auth
    db, _ = _db_ws()
    user = auth.add_user(db, args.name, args.role, _read_password(args))
    print(f"added {user.name} ({user.role})")


def cmd_users_list(args) -> None:
    from tunelab import auth
    db, _ = _db_ws()
    rows = [{"name": u.name, "role": u.role, "disabled": u.disabled} for u in auth.list_users(db)]
    _print_json(rows) if args.json else _table(rows, ["name", "role", "disabled"])


def cmd_users_role(args) -> None:
    from tunelab import auth
    db, _ = _db_ws()
    auth.set_role(db, args.name, args.role)
    print(f"{args.name} is now {args.role}")


def cmd_users_password(args) -> None:
    from tunelab import auth
    db, _ = _db_ws()
    auth.set_password(db, args.name, _read_password(args))
    print(f"password of {args.name} changed")


def cmd_users_disable(args) -> None:
    from tunelab import auth
    db, _ = _db_ws()
    auth.disable_user(db, args.name)
    print(f"{args.name} is disabled and signed out")


def cmd_users_enable(args) -> None:
    from tunelab import auth
    db, _ = _db_ws()
    auth.enable_user(db, args.name)
    print(f"{args.name} is enabled")


def cmd_users_remove(args) -> None:
    from tunelab import auth
    db, _ = _db_ws()
    auth.remove_user(db, args.name)
    print(f"{args.name} is removed")


# ---------------------------------------------------------------- data

def cmd_data_import(args) -> None:
    from tunelab import datasets
    db, ws = _db_ws()
    with progress_bar(f"importing {args.file}") as update:
        result = datasets.import_file(db, ws, args.file, args.name, fmt=args.format, mapping=args.map,
                                      skip_invalid=args.skip_invalid, progress=update)
    if args.json:
        _print_json(result.to_dict())
        return
    v = result.version
    print(f"imported {v.rows} rows of {result.records} as {v.ref} (format {result.detected_format}, kind {v.kind})")
    if result.skipped:
        print(f"skipped {result.skipped_count} bad records:")
        for problem in result.skipped:
            print(f"  {problem}")
        if result.skipped_count > len(result.skipped):
            print(f"  ... and {result.skipped_count - len(result.skipped)} more")


def cmd_data_list(args) -> None:
    from tunelab import datasets
    db, _ = _db_ws()
    rows = datasets.list_datasets(db)
    _print_json(rows) if args.json else _table(rows, ["name", "latest", "kind", "rows", "versions", "last_step"])


def cmd_data_show(args) -> None:
    from tunelab import datasets
    from tunelab.datasets import inspection
    db, ws = _db_ws()
    version = datasets.resolve(db, ws, args.ref)
    doc = inspection.dataset_overview(version)
    doc["lineage"] = [{"ref": v.ref, "transform": v.transform, "params": v.params, "rows": v.rows,
                       "source": v.source_name} for v in datasets.lineage(db, ws, version.ref)]
    doc["report"] = version.report
    if args.model:
        tokenizer = inspection.load_tokenizer(db, ws, args.model)
        with progress_bar("measuring token lengths") as update:
            lengths = inspection.token_lengths(version.load_all(), tokenizer, update)
        doc["token_lengths"] = {"model": args.model, **inspection.length_stats(lengths, args.max_length)}
    if args.json:
        _print_json(doc)
        return
    print(f"{version.ref}: {version.kind}, {version.rows} rows "
          f"({', '.join(f'{s} {n}' for s, n in version.splits.items())}), sha256 {version.content_hash[:12]}")
    print(f"roles: {doc['turns']['roles']}; messages per row: {doc['turns']['turns']}")
    if "token_lengths" in doc:
        t = doc["token_lengths"]
        print(f"tokens ({args.model}): min {t['min']}, median {t['median']}, p95 {t['p95']}, max {t['max']}; "
              f"{t['over_max_length']} rows over max_length {t['max_length']}")
    print("lineage:")
    for step in doc["lineage"]:
        what = f"from {step['source']}" if step["transform"] == "import" else json.dumps(step["params"])
        print(f"  {step['ref']}  {step['transform']}  {what}  ({step['rows']} rows)")


def cmd_data_export(args) -> None:
    from tunelab import datasets
    db, ws = _db_ws()
    for path in datasets.export(db, ws, args.ref, args.format, args.out):
        print(path)


def cmd_data_clean(args) -> None:
    from tunelab import datasets
    db, ws = _db_ws()
    with progress_bar(f"cleaning {args.ref}") as update:
        reports = datasets.clean(db, ws, args.ref, dedup=args.dedup, threshold=args.threshold,
                                 redact=args.redact_pii, max_tokens=args.max_tokens, min_tokens=args.min_tokens,
                                 model=args.model, progress=update)
    if args.json:
        _print_json(reports)
        return
    for r in reports:
        extra = f", entities {r['entities']}" if "entities" in r else f", removed {r['removed']}"
        print(f"{r['ref']}  {r['step']}: {r['before']} -> {r['after']} rows{extra}")


def cmd_data_split(args) -> None:
    from tunelab import datasets
    db, ws = _db_ws()
    version = datasets.split(db, ws, args.ref, val=args.val, test=args.test, seed=args.seed)
    if args.json:
        _print_json({"ref": version.ref, "splits": version.splits, "content_hash": version.content_hash})
    else:
        print(f"{version.ref}: " + ", ".join(f"{s} {n}" for s, n in version.splits.items()))


# ---------------------------------------------------------------- eval and leaderboard

def _eval_summary(row: dict) -> dict:
    return {"id": row["id"], "label": row["label"], "status": row["status"], "dataset": row["dataset"],
            "error": row["error"], "metrics": row["metrics"]}


def cmd_eval(args) -> None:
    from tunelab import configs, evaluate
    db, ws = _db_ws()
    config = configs.from_flags(evaluate.EvalConfig, args, {"model": args.model})
    eval_id = evaluate.launch(db, ws, config)
    if not args.wait:
        if args.json:
            _print_json({"id": eval_id, "label": config.label, "status": "queued"})
        else:
            print(eval_id)
        return
    with progress_bar(f"eval {eval_id}: {config.label}") as update:
        row = evaluate.wait(db, eval_id, progress=update)
    if row["status"] != "completed":
        raise UserError(f"eval run {eval_id} {row['status']}: {row['error'] or ''} "
                        f"(log: {row['log']})")
    if args.json:
        _print_json(_eval_summary(row))
    else:
        print(f"eval {eval_id}: {row['label']} on {row['dataset']} ({row['metrics']['split']} split, "
              f"{row['metrics']['rows']} rows)")
        for key in ("loss", "perplexity", "exact_match", "rouge_l", "bleu", "chrf", "length_words", "format", "reward",
                    "reference_perplexity", "forgetting"):
            if row["metrics"].get(key) is not None:
                print(f"  {key:22s} {row['metrics'][key]:.4g}")
        for name, rate in (row["metrics"].get("checks") or {}).items():
            print(f"  check {name:16s} {rate:.4g}% pass")
        for note in row["metrics"].get("notes", []):
            print(f"  note: {note}")


def _print_board(board: dict) -> None:
    from tunelab import leaderboard
    anchor = f", anchor {board['anchor']} = 1000" if board["anchor"] else ""
    print(f"campaign: {board['campaign'] or 'all'} ({board['votes']} votes{anchor}); eval set: {board['dataset'] or '-'}; "
          f"{leaderboard.basis(board)}")
    shown = leaderboard.display(board["rows"], ("rank", "model", "about", "rating", "interval", "votes", "win_rate",
                                                "perplexity", "exact_match", "rouge_l", "bleu", "format", "forgetting",
                                                "method", "data", "train_seconds", "cost_usd"))
    _table(shown, list(shown[0]) if shown else [])


def cmd_leaderboard(args) -> None:
    from tunelab import leaderboard
    db, _ = _db_ws()
    board = leaderboard.build(db, campaign=args.campaign, dataset=args.dataset, anchor=args.anchor,
                              source=args.source, judge=args.judge)
    if args.json:
        _print_json(board)
    elif args.csv:
        sys.stdout.write(leaderboard.to_csv(board["rows"]))
    else:
        _print_board(board)


def cmd_demo(args) -> None:
    from tunelab import leaderboard
    db, ws = _db_ws()
    train = {k: v for k, v in (("max_steps", args.max_steps),) if v is not None}
    settings = {k: v for k, v in (("limit", args.limit), ("max_new_tokens", args.max_new_tokens)) if v is not None}
    with progress_bar("demo") as update:
        out = leaderboard.demo(db, ws, model=args.model, train=train, eval_settings=settings, progress=update)
    if args.json:
        _print_json(out)
        return
    votes = out["sample_votes"]
    print(f"dataset {out['dataset']}; LoRA SFT run {out['run']} trained in {out['train_seconds']:.0f} s; DPO run "
          f"{out['dpo_run']} from it in {out['dpo_seconds']:.0f} s on {out['preferences']}, the sample votes of "
          f"campaign {votes['campaign']} (source {votes['source']}: written for the demo, not cast by people); "
          f"evals {', '.join(f'{k} (#{v})' for k, v in out['evals'].items())}")
    _print_board(out["leaderboard"])
    print("The Leaderboard page shows the same rows (streamlit run streamlit_app.py).")


# ---------------------------------------------------------------- feedback

def cmd_feedback_create(args) -> None:
    from tunelab import configs, feedback
    from tunelab.generate import SamplingSettings
    db, ws = _db_ws()
    if bool(args.prompts) == bool(args.prompts_file):
        raise UserError("give --prompts DATASET or --prompts-file FILE")
    from tunelab import datasets
    pasted = datasets.read_prompts(args.prompts_file) if args.prompts_file else None
    config = configs.from_flags(feedback.CampaignConfig, args)
    settings = configs.from_flags(SamplingSettings, args)
    c = feedback.create_campaign(db, ws, args.name, args.models.split(","), prompts=pasted, dataset=args.prompts,
                                 config=config, settings=settings)
    job = feedback.start_generation(db, ws, c.name, args.backend, args.ray_address)
    print(f"campaign {c.name}: generating answers in job {job.id} ({job.status})", file=sys.stderr)
    if args.wait:
        with progress_bar(f"generating {c.name}") as update:
            feedback.wait_generation(db, c.name, progress=update)
    doc = feedback.quality(db, c.name)
    _print_json(doc) if args.json else print(f"{c.name}: {doc['status']}, {doc['pairs']} pairs")


def cmd_feedback_status(args) -> None:
    from tunelab import feedback, jobs
    db, _ = _db_ws()
    jobs.reconcile(db)  # a generation process that died shows as failed
    q = feedback.quality(db, args.name)
    if args.json:
        _print_json(q)
        return
    print(f"{q['campaign']}: {q['status']} ({q['progress']:.0%} {q['progress_message'] or ''}), "
          f"{q['sampling']} sampling"
          + (f" error: {q['error']}" if q["error"] else ""))
    print(f"models: {', '.join(q['models'])}; pairs {q['pairs']} ({q['pairs_complete']} complete), "
          f"gold {q['gold_pairs']}; votes {q['votes']} from {q['annotators']} annotators")
    print(f"Cohen's kappa {q['cohen_kappa']}  Krippendorff's alpha {q['krippendorff_alpha']}  "
          f"agreement {q['percent_agreement']}  left wins {q['left_win_rate']}")
    _table(q["per_annotator"], ["annotator", "votes", "median_seconds", "agreement_with_majority", "gold_accuracy",
                                "left_wins", "flagged"])
    if q["judges"]:
        print("judges against people:")
        _table(q["judges"], ["judge", "kind", "judged", "compared", "agreement_with_people", "cohen_kappa",
                             "position_consistency", "judge_prefers_longer", "people_prefer_longer"])


def cmd_feedback_list(args) -> None:
    from tunelab import feedback, jobs
    db, _ = _db_ws()
    jobs.reconcile(db)
    rows = [{"name": c.name, "status": c.status, "models": ",".join(c.models), "source": c.source,
             "votes": db.execute("SELECT count(*) FROM votes WHERE campaign_id = ?", [c.id]).fetchone()[0],
             "progress": round(c.progress, 3)} for c in feedback.list_campaigns(db)]
    _print_json(rows) if args.json else _table(rows, ["name", "status", "models", "source", "votes", "progress"])


def cmd_feedback_export(args) -> None:
    from tunelab import feedback
    db, ws = _db_ws()
    policy = feedback.ExportPolicy(min_votes=args.min_votes, min_agreement=args.min_agreement,
                                   drop_ties=not args.keep_ties, drop_both_bad=not args.keep_both_bad)
    doc = feedback.export(db, ws, args.name, args.format, args.out, policy, register=args.register,
                          source=args.source, judge=args.judge)
    _print_json(doc) if args.json else print(
        f"wrote {doc['rows']} rows to {doc['out']}" + (f"; registered {doc['dataset']}" if doc.get("dataset") else ""))


def cmd_feedback_import(args) -> None:
    from tunelab import feedback
    db, _ = _db_ws()
    doc = feedback.import_judgments(db, args.file, args.format, args.campaign)
    _print_json(doc) if args.json else print(
        f"{doc['campaign']}: {doc['votes_added']} votes added, {doc['votes_updated']} updated, {doc['skipped']} skipped")


def cmd_feedback_gold(args) -> None:
    from tunelab import feedback
    db, _ = _db_ws()
    print(f"added {feedback.add_gold_file(db, args.name, args.file)} gold pairs to {args.name}")


def cmd_feedback_judge(args) -> None:
    from tunelab import feedback
    from tunelab.feedback import judges
    db, ws = _db_ws()
    kind, spec = feedback.parse_spec(args.judge, tie_band=args.tie_band, model=args.endpoint_model,
                                     api_key_env=args.api_key_env)
    name = (args.name or judges.default_name(kind, spec)).strip()  # as start_judge records it
    job = feedback.start_judge(db, ws, args.campaign, kind, spec, name)
    print(f"judge {name}: judging {args.campaign} in job {job.id} ({job.status})", file=sys.stderr)
    if args.no_wait:
        doc = feedback.judge_summary(db, args.campaign, name)
    else:
        with progress_bar(f"judge {name}") as update:
            doc = feedback.wait_judge(db, args.campaign, name, progress=update)
    if args.json:
        _print_json(doc)
        return
    consistent, unparsed = doc["position_consistent"], doc["unparsed"]
    print(f"{doc['judge']} ({doc['kind']}): {doc['judged']}/{doc['pairs']} pairs judged; "
          + ", ".join(f"{k} {v}" for k, v in doc["choices"].items())
          + (f"; same verdict in both orders {consistent:.0%}" if consistent is not None else "")
          + (f"; {unparsed} of {doc['asked']} replies named no option (counted as tie)" if unparsed else ""))


def cmd_feedback_triage(args) -> None:
    from tunelab import feedback
    db, _ = _db_ws()
    if args.undo:
        doc = feedback.untriage(db, args.name, args.judge)
        _print_json(doc) if args.json else print(
            f"{doc['campaign']}: {doc['restored']} pairs back to people ({doc['to_people']} pairs to people)")
        return
    if not args.judge:
        raise UserError("--judge NAME: the judge whose confident verdicts stand (see `tunelab feedback status`)")
    doc = feedback.triage(db, args.name, args.judge, min_margin=args.min_margin)
    _print_json(doc) if args.json else print(
        f"{doc['campaign']}: {doc['to_people']} pairs to people ({doc['unsure']} the judge is unsure of, "
        f"{doc['not_judged']} not judged), {doc['to_judge']} left to judge {doc['judge']}")


# ---------------------------------------------------------------- training runs

def _run_row(run) -> dict:
    st = run.progress()
    cfg = run.config
    return {"id": run.id, "method": run.method, "base": run.base_model, "dataset": run.dataset,
            "tuning": run.tuning, "status": run.status, "backend": run.backend,
            "step": f"{st.get('step', 0)}/{st['max_steps']}" if st.get("max_steps") else "",
            "loss": round(st["loss"], 4) if st.get("loss") is not None else None,
            "lr": cfg.get("learning_rate"), "seconds": round(run.seconds), "error": run.error}


def _wait_for_run(db, run_id: str) -> None:
    """Progress bar until the run ends; exit 0 completed, 1 failed, stopped or interrupted."""
    from tunelab import runs
    with progress_bar(f"run {run_id}") as update:
        run = runs.wait(db, run_id, progress=update)
    print(f"run {run_id} {run.status}" + (f": {run.error}" if run.error else ""), file=sys.stderr)
    if runs.EXIT_CODES[run.status]:
        raise SystemExit(runs.EXIT_CODES[run.status])


def cmd_train(args) -> None:
    from tunelab import configs, runs
    from tunelab.train import config
    db, ws = _db_ws()
    run_id = runs.launch(db, ws, config.load_file(args.config, configs.given(args)))
    print(run_id, flush=True)
    if args.wait:
        _wait_for_run(db, run_id)


def cmd_runs_list(args) -> None:
    from tunelab import jobs, runs
    db, _ = _db_ws()
    jobs.reconcile(db)  # the reads are pure: bring the table in line with the processes first
    found = runs.list_runs(db)
    if args.json:
        _print_json([r.to_dict() for r in found])
    else:
        _table([_run_row(r) for r in found],
               ["id", "method", "base", "dataset", "tuning", "status", "backend", "step", "loss", "lr", "seconds",
                "error"])


def cmd_runs_show(args) -> None:
    from tunelab import cost, jobs, runs
    db, _ = _db_ws()
    jobs.reconcile(db)
    run = runs.get(db, args.id)
    doc = run.to_dict() | {"actual": cost.actual(run)}
    if args.json:
        _print_json(doc)
        return
    for key in ("id", "status", "method", "base_model", "dataset", "tuning", "init_from", "folder", "error"):
        print(f"{key:>12}: {doc[key] if doc[key] is not None else ''}")
    st = doc["progress"]
    print(f"{'progress':>12}: step {st.get('step', 0)}/{st.get('max_steps') or '?'}, loss {st.get('loss')}, "
          f"eval_loss {st.get('eval_loss')}, tokens {st.get('tokens')}")
    act = doc["actual"]
    est = f"{run.est_seconds:.0f} s, ${run.est_usd:.4f}" if run.est_seconds is not None else "none"
    print(f"{'time, cost':>12}: {act['seconds']:.0f} s, ${act['usd'] or 0:.4f} (estimated {est})")
    print("config:")
    for key, value in doc["config"].items():
        print(f"  {key}: {value}")


def cmd_runs_stop(args) -> None:
    from tunelab import runs
    db, _ = _db_ws()
    run = runs.stop(db, args.id)
    step = run.progress().get("step")
    print(f"run {run.id} {run.status}" + (f" at step {step}" if step else ""))


def cmd_runs_resume(args) -> None:
    from tunelab import runs
    db, _ = _db_ws()
    run = runs.resume(db, args.id)
    print(f"run {run.id} {run.status}")
    if args.wait:
        _wait_for_run(db, run.id)


def _job_row(job) -> dict:
    progress = job.progress().get("progress")
    return {"id": job.id, "kind": job.kind, "target": job.target, "status": job.status, "backend": job.backend,
            "progress": f"{progress:.0%}" if progress is not None and job.status == "running" else "",
            "message": job.message(), "seconds": round(job.seconds), "error": job.error}


def cmd_jobs_list(args) -> None:
    from tunelab import jobs
    db, _ = _db_ws()
    jobs.reconcile(db)  # the reads are pure: bring the table in line with the processes first
    found = jobs.list_jobs(db)
    if args.json:
        _print_json([j.to_dict() for j in found])
    else:
        _table([_job_row(j) for j in found],
               ["id", "kind", "target", "status", "backend", "progress", "message", "seconds", "error"])


def cmd_jobs_show(args) -> None:
    from tunelab import jobs
    db, _ = _db_ws()
    jobs.reconcile(db)
    doc = jobs.get(db, args.id).to_dict()
    if args.json:
        _print_json(doc)
        return
    for key in ("id", "kind", "target", "status", "message", "backend", "ray_job_id", "pid", "folder", "log",
                "seconds", "error"):
        print(f"{key:>10}: {doc[key] if doc[key] is not None else ''}")


def cmd_jobs_stop(args) -> None:
    from tunelab import jobs
    db, _ = _db_ws()
    jobs.reconcile(db)
    job = jobs.stop(db, args.id)
    print(f"job {job.id} ({job.kind} {job.target}) {job.status}")


def cmd_models_merge(args) -> None:
    from tunelab import runs
    db, ws = _db_ws()
    with progress_bar(f"merging {args.run_id}") as update:
        info = runs.merge(db, ws, args.run_id, args.name, progress=update)
    print(f"registered {info.name} ({info.params or '?'} parameters) at {info.path}")


def cmd_models_merge_adapters(args) -> None:
    from tunelab import merging, runs
    db, ws = _db_ws()
    weights = merging.parse_weights(args.weights)
    with progress_bar(f"merging {', '.join(args.run_ids)} ({args.method})") as update:
        run_id = merging.merge_adapters(db, ws, args.run_ids, args.method, weights, args.name, args.density,
                                        progress=update)
    print(f"merged adapter {args.name}: run {run_id}; use it as {runs.get(db, run_id).base_model}+{run_id}",
          file=sys.stderr)
    print(run_id)


def cmd_serve(args) -> None:
    """Print where to call the server, then become the engine's process (its logs, its exit)."""
    import os

    from tunelab import serving
    db, ws = _db_ws()
    with progress_bar(f"preparing {args.spec}") as update:
        plan = serving.plan(db, ws, args.spec, args.host, args.port, args.engine, progress=update)
    db.close()
    print(f"url: {plan.url}\nmodel: {plan.model}\nengine: {plan.engine} (in {plan.cwd}): {' '.join(plan.command)}",
          flush=True)
    if args.host not in serving.LOOPBACK:
        print(f"warning: serving on {args.host}: anyone who reaches it can use the model; the server has no "
              "sign-in", file=sys.stderr, flush=True)
    if args.dry_run:
        return
    if plan.engine == "vllm" and not os.path.exists(plan.command[0]):
        raise UserError("--engine vllm: the vllm command is not installed here (pip install vllm, on a CUDA machine)")
    os.chdir(plan.cwd)
    os.execve(plan.command[0], plan.command, plan.env)


# ---------------------------------------------------------------- reward models

def cmd_score(args) -> None:
    from tunelab.train import reward
    db, ws = _db_ws()
    value = reward.score(db, ws, args.reward, args.prompt, args.response)
    if args.json:
        _print_json({"reward_run": args.reward, "prompt": args.prompt, "response": args.response, "reward": value})
    else:
        print(f"{value:.4f}")


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from tunelab import configs, merging, serving
    from tunelab.evaluate import EvalConfig
    from tunelab.feedback import SOURCES, CampaignConfig
    from tunelab.feedback.triage import MIN_MARGIN
    from tunelab.generate import SamplingSettings
    from tunelab.train import config as train_config

    p = argparse.ArgumentParser(prog="tunelab", description="A local-first fine-tuning studio for LLMs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="base models: list, prepare the bundled one, add a local folder")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    x = msub.add_parser("list", help="registered base models")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_models_list)
    x = msub.add_parser("prepare", help="convert a bundled model to safetensors (once)")
    x.add_argument("name", help="e.g. smollm2-135m-instruct")
    x.set_defaults(func=cmd_models_prepare)
    x = msub.add_parser("add", help="register a local Hugging Face model folder")
    x.add_argument("path", help="folder with config.json and a tokenizer")
    x.add_argument("--name", required=True, help="name to register it under")
    x.set_defaults(func=cmd_models_add)

    x = sub.add_parser("generate", help="answer one prompt with a model (and adapter), using its chat template")
    x.add_argument("--model", default="smollm2-135m-instruct", help="registered model name, or NAME+RUN_ID")
    x.add_argument("--adapter", metavar="RUN_ID", help="a completed run on the model whose result to use: its "
                                                       "LoRA adapter, or for full tuning its whole model")
    x.add_argument("--prompt", required=True, help="the user message")
    configs.add_flags(x, SamplingSettings, defaults={"temperature": 0.0}, aliases={"system_prompt": ["--system"]})
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_generate)

    users = sub.add_parser("users", help="users and roles (admin, engineer, annotator, viewer)")
    usub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    x = usub.add_parser("add", help="add a user; the password comes from a prompt or --password-stdin")
    x.add_argument("name", help="user name")
    x.add_argument("--role", required=True, help="admin|engineer|annotator|viewer")
    x.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    x.set_defaults(func=cmd_users_add)
    x = usub.add_parser("list", help="users, their roles, and whether they are disabled")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_users_list)
    x = usub.add_parser("role", help="change a user's role")
    x.add_argument("name", help="user name")
    x.add_argument("role", help="admin|engineer|annotator|viewer")
    x.set_defaults(func=cmd_users_role)
    x = usub.add_parser("password", help="reset a user's password (signs them out)")
    x.add_argument("name", help="user name")
    x.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    x.set_defaults(func=cmd_users_password)
    x = usub.add_parser("disable", help="stop a user signing in and sign them out (their votes stay)")
    x.add_argument("name", help="user name")
    x.set_defaults(func=cmd_users_disable)
    x = usub.add_parser("enable", help="let a disabled user sign in again")
    x.add_argument("name", help="user name")
    x.set_defaults(func=cmd_users_enable)
    x = usub.add_parser("remove", help="delete a user and their sessions (their votes stay)")
    x.add_argument("name", help="user name")
    x.set_defaults(func=cmd_users_remove)

    data = sub.add_parser("data", help="datasets: import, list, show, clean, split, export")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    x = dsub.add_parser("import", help="import a JSON, JSONL, CSV or Parquet file as a new dataset version")
    x.add_argument("file", help="the file to import")
    x.add_argument("--name", required=True, help="dataset name (a new version if it exists)")
    x.add_argument("--format", default="auto", help="auto|alpaca|sharegpt|messages|prompt-completion|"
                   "preference|kto|prompts (default: detected from the columns)")
    x.add_argument("--map", action="append", metavar="TARGET=SOURCE",
                   help="read field TARGET from the file's column SOURCE (repeatable)")
    x.add_argument("--skip-invalid", action="store_true", help="import the good records and list the bad ones")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_data_import)
    x = dsub.add_parser("list", help="datasets with their latest version")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_data_list)
    x = dsub.add_parser("show", help="a version's stats and lineage")
    x.add_argument("ref", metavar="NAME[@V]", help="dataset, optionally @version (default: latest)")
    x.add_argument("--model", help="also measure token lengths with this model's tokenizer")
    x.add_argument("--max-length", type=int, default=1024, help="count rows longer than this many tokens")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_data_show)
    x = dsub.add_parser("export", help="write a version as JSONL (TRL formats), Parquet or a save_to_disk folder")
    x.add_argument("ref", metavar="NAME[@V]", help="dataset, optionally @version")
    x.add_argument("--format", required=True, help="jsonl|trl|parquet|hf")
    x.add_argument("--out", required=True, help="file (one split) or folder (one file per split)")
    x.set_defaults(func=cmd_data_export)
    x = dsub.add_parser("clean", help="dedup, redact PII, filter by token length; each step a new version")
    x.add_argument("ref", metavar="NAME[@V]", help="dataset, optionally @version")
    x.add_argument("--dedup", choices=["exact", "near"], help="exact, or near (exact then MinHash/LSH)")
    x.add_argument("--threshold", type=float, default=0.85, help="near dedup: Jaccard similarity that counts")
    x.add_argument("--redact-pii", action="store_true",
                   help="replace emails, phone numbers, card numbers, IPs and IBANs with <TYPE>")
    x.add_argument("--max-tokens", type=int, help="drop rows longer than this (chat-templated, --model's tokenizer)")
    x.add_argument("--min-tokens", type=int, help="drop rows shorter than this")
    x.add_argument("--model", help="registered model whose tokenizer measures lengths")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_data_clean)
    x = dsub.add_parser("split", help="train/validation(/test) split by ratio and seed, as a new version")
    x.add_argument("ref", metavar="NAME[@V]", help="dataset, optionally @version")
    x.add_argument("--val", type=float, default=0.1, help="validation fraction")
    x.add_argument("--test", type=float, default=0.0, help="test fraction")
    x.add_argument("--seed", type=int, default=0, help="shuffle seed: the same seed gives the same split")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_data_split)

    x = sub.add_parser("eval", help="evaluate a model, adapter or baseline on an eval dataset (in the background)")
    x.add_argument("model", help="registered model name, or NAME+RUN_ID (a run's result on that model)")
    configs.add_flags(x, EvalConfig, skip={"model"}, required={"dataset"})
    x.add_argument("--wait", action="store_true", help="wait for it, with progress, and print the metrics")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_eval)
    x = sub.add_parser("leaderboard", help="one row per model: human rating with 95%% interval, rank, eval metrics")
    x.add_argument("--campaign", help="ratings from this campaign's votes only (default: all campaigns)")
    x.add_argument("--dataset", help="eval results on this dataset NAME[@V] (default: the latest evaluated)")
    x.add_argument("--anchor", help="model rated exactly 1000 (default: the bundled model, else a base model)")
    x.add_argument("--source", choices=SOURCES, default="people",
                   help="whose votes the ratings rest on: people, a judge's verdicts, or both (people's votes on a "
                        "pair when it has any, else the judge's)")
    x.add_argument("--judge", help="source judge or both: the judge whose verdicts count (default: the campaign's only one)")
    fmt = x.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    x.set_defaults(func=cmd_leaderboard)
    x = sub.add_parser("demo", help="the whole loop on the sample data: import, LoRA SFT, DPO on the sample votes, "
                                    "eval vs prompting, RAG and fine-tuned + RAG, leaderboard (minutes on CPU)")
    x.add_argument("--model", default="smollm2-135m-instruct", help="registered model to fine-tune")
    x.add_argument("--max-steps", type=int, help="training steps of each run (default from tunelab.leaderboard."
                                                 "DEMO_TRAIN and DEMO_DPO)")
    x.add_argument("--limit", type=int, help="eval rows per model (default from tunelab.leaderboard.DEMO_EVAL)")
    x.add_argument("--max-new-tokens", type=int, help="most tokens per eval answer")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_demo)

    fb = sub.add_parser("feedback", help="preference campaigns: create, status, export, import, gold pairs, judges, triage")
    fsub = fb.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    x = fsub.add_parser("create", help="create a campaign and generate its answers in a background process")
    x.add_argument("name", help="campaign name")
    x.add_argument("--prompts", help="dataset whose prompts to use: NAME or NAME@VERSION")
    x.add_argument("--prompts-file", help="prompts from a file (instead of --prompts): .txt, one prompt a line, or "
                   "any file `data import` reads (a prompt or instruction column, or any dataset's prompt turns)")
    x.add_argument("--models", required=True, help="comma-separated model specs: NAME or NAME+RUN_ID")
    configs.add_flags(x, CampaignConfig)
    configs.add_flags(x, SamplingSettings)
    x.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="where generation runs: local (the job queue here) or ray (a job on the cluster)")
    x.add_argument("--ray-address", help="backend ray: the cluster's dashboard address (default: RAY_ADDRESS)")
    x.add_argument("--wait", action="store_true", help="wait for generation, with a progress bar")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_feedback_create)
    x = fsub.add_parser("status", help="generation progress, votes, agreement, per-annotator figures")
    x.add_argument("name", help="campaign name")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_feedback_status)
    x = fsub.add_parser("list", help="campaigns")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_feedback_list)
    x = fsub.add_parser("export", help="aggregated preferences (trl) or raw votes (battles) as JSONL")
    x.add_argument("name", help="campaign name")
    x.add_argument("--format", required=True, choices=["trl", "battles"], help="trl or battles")
    x.add_argument("--out", required=True, help="JSONL file to write")
    x.add_argument("--register", help="also register the trl rows as this preference dataset")
    x.add_argument("--min-votes", type=int, default=1, help="leave out pairs with fewer votes")
    x.add_argument("--min-agreement", type=float, default=0.5, help="least share of votes agreeing with the majority")
    x.add_argument("--keep-ties", action="store_true", help="keep pairs whose majority is a tie (margin 0)")
    x.add_argument("--keep-both-bad", action="store_true", help="keep pairs whose majority is both bad (margin 0)")
    x.add_argument("--source", choices=SOURCES, default="people",
                   help="battles format: people's votes, a judge's verdicts, or both (people's where a pair has any)")
    x.add_argument("--judge", help="source judge or both: the judge whose verdicts to write (default: the only one)")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_feedback_export)
    x = fsub.add_parser("import", help="external judgments (Arena battles, AlpacaEval annotations) as a campaign")
    x.add_argument("file", help="JSON, JSONL, CSV or Parquet file")
    x.add_argument("--format", required=True, choices=["arena", "alpaca_eval"], help="arena or alpaca_eval")
    x.add_argument("--campaign", required=True, help="campaign to create (or add to, if imported before)")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_feedback_import)
    x = fsub.add_parser("gold", help="add gold pairs (prompt, chosen, rejected) to measure accuracy")
    x.add_argument("name", help="campaign name")
    x.add_argument("file", help="a preference file `data import` reads; 'chosen' is the known better answer")
    x.set_defaults(func=cmd_feedback_gold)
    x = fsub.add_parser("judge", help="a model votes on the campaign's pairs (in a background job), apart from "
                        "people's votes", description="SPEC is reward:RUN_ID (a reward-model run; verdict from "
                        "the score margin, tie within --tie-band), chat:MODEL_SPEC (a registered chat model, NAME "
                        "or NAME+RUN_ID) or endpoint:BASE_URL (an OpenAI-compatible server, e.g. "
                        "endpoint:http://localhost:8000/v1, with --endpoint-model and --api-key-env). Chat and "
                        "endpoint judges are asked the template in tunelab.feedback.judges.TEMPLATE in both orders; "
                        "a verdict stands when both orders agree, else it is a tie. Run again to continue a "
                        "stopped or failed judge: pairs already judged are skipped.")
    x.add_argument("campaign", help="campaign name")
    x.add_argument("--judge", required=True, metavar="SPEC",
                   help="reward:RUN_ID, chat:MODEL_SPEC or endpoint:BASE_URL")
    x.add_argument("--name", help="the judge's name in this campaign (default: KIND-WHAT, e.g. reward-RUN_ID)")
    x.add_argument("--tie-band", type=float, metavar="X", help="reward judges: |reward(a) - reward(b)| below X is "
                   "a tie (default tunelab.feedback.judges.DEFAULT_TIE_BAND, 0.1)")
    x.add_argument("--endpoint-model", metavar="M", help="endpoint judges: the model name the server knows")
    x.add_argument("--api-key-env", metavar="VAR", help="endpoint judges: the environment variable holding the "
                   "API key, named TUNELAB_JUDGE_... (the key is never stored); omit for a server without keys")
    x.add_argument("--no-wait", action="store_true", help="start the job and return at once")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_feedback_judge)
    x = fsub.add_parser("triage", help="send people only the pairs a judge is unsure of; its confident verdicts stand")
    x.add_argument("name", help="campaign name")
    x.add_argument("--judge", help="the judge whose confident verdicts stand (with --undo: only its pairs)")
    x.add_argument("--min-margin", type=float, default=MIN_MARGIN,
                   help="least |margin| of a verdict that stands (default %(default)s: P(a) - P(b) of a chat "
                        "judge; a reward judge's margin is in reward units)")
    x.add_argument("--undo", action="store_true", help="give the triaged pairs back to people (K votes each)")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_feedback_triage)

    x = msub.add_parser("merge", help="merge a LoRA run's adapter into its base as a new registered model")
    x.add_argument("run_id", help="a completed LoRA or QLoRA run")
    x.add_argument("--name", required=True, help="name to register the merged model under")
    x.set_defaults(func=cmd_models_merge)
    x = msub.add_parser("merge-adapters", help="combine LoRA runs on one base into a new adapter (PEFT "
                        "add_weighted_adapter); prints the run id that holds it",
                        description="Combine the LoRA adapters of completed runs on one base into a new adapter with "
                        "PEFT's add_weighted_adapter. The result is a completed run of method 'merge': use it as "
                        "BASE+RUN_ID (eval, Playground, campaigns, leaderboard, init_from).")
    x.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="two or more completed LoRA runs on one base")
    x.add_argument("--method", required=True, choices=merging.METHODS,
                   help="linear, ties and dare_ties combine A and B matrices (one rank); svd cuts the weighted sum "
                   "of the updates back to the largest rank (any ranks)")
    x.add_argument("--weights", required=True, metavar="W1,W2,...", help="one weight per run, in order")
    x.add_argument("--density", type=float, metavar="D", help="ties and dare_ties: the fraction of each adapter's "
                   "entries kept, in (0, 1]")
    x.add_argument("--name", required=True, help="what people call the merged adapter (kept in the run's config)")
    x.set_defaults(func=cmd_models_merge_adapters)

    x = sub.add_parser("train", help="launch a training run from a YAML config; prints the run id",
                       description="Launch a training run from a YAML config; prints the run id. Any config key "
                       "can follow as a flag that overrides the file: tunelab train run.yaml --learning_rate 1e-4 "
                       "--lora.r 16. A flag's value is read as a YAML value and checked as the key is in the file "
                       "(a wrong type or a key the method lacks: exit 2, naming the key).")
    x.add_argument("config", help="YAML file with TRL/transformers keys (method, base_model, dataset, tuning, ...)")
    x.add_argument("--wait", action="store_true",
                   help="show progress and exit with the outcome: 0 completed, 1 failed/stopped/interrupted")
    added = configs.add_flags(x.add_argument_group("config keys of every method"), train_config.RunConfig,
                              show_defaults=False)
    for name, module in sorted(train_config.methods().items()):
        added |= configs.add_flags(x.add_argument_group(f"config keys of method {name} (and others listed above)"),
                                   module.Config, skip=added, show_defaults=False)
    x.set_defaults(func=cmd_train)

    runs_p = sub.add_parser("runs", help="training runs: list, show, stop, resume")
    rsub = runs_p.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    x = rsub.add_parser("list", help="every run, newest first")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_runs_list)
    x = rsub.add_parser("show", help="one run: status, progress, time and cost, config")
    x.add_argument("id", help="run id")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_runs_show)
    x = rsub.add_parser("stop", help="stop a run: it saves a checkpoint, then exits (killed after 30 s)")
    x.add_argument("id", help="run id")
    x.set_defaults(func=cmd_runs_stop)
    x = rsub.add_parser("resume", help="continue a stopped, interrupted or failed run from its latest checkpoint")
    x.add_argument("id", help="run id")
    x.add_argument("--wait", action="store_true", help="show progress and exit with the outcome")
    x.set_defaults(func=cmd_runs_resume)

    jobs_p = sub.add_parser("jobs", help="every background process (training, evals, generation): list, show, stop")
    jsub = jobs_p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    x = jsub.add_parser("list", help="every job, newest first, with kind, status, progress and time")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_jobs_list)
    x = jsub.add_parser("show", help="one job: status, progress, process, folder and log")
    x.add_argument("id", type=int, help="job id (see `tunelab jobs list`)")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_jobs_show)
    x = jsub.add_parser("stop", help="stop a job: SIGTERM (a run saves a checkpoint), SIGKILL after 30 s")
    x.add_argument("id", type=int, help="job id")
    x.set_defaults(func=cmd_jobs_stop)

    x = sub.add_parser("serve", help="serve a model or adapter over an OpenAI-compatible API (/v1/chat/completions)",
                       description="Serve NAME or NAME+RUN_ID over an OpenAI-compatible /v1/chat/completions "
                       "(streaming included) with an existing engine: `transformers serve` (an adapter is served "
                       "as a merged copy made once under the workspace's serve/ folder), or vLLM with the "
                       "adapter as a LoRA module where a CUDA GPU and vllm exist. Prints the URL and the model "
                       "name clients send, then runs the server until stopped.")
    x.add_argument("spec", metavar="MODEL[+RUN_ID]", help="a registered model, or one with a completed run's result")
    x.add_argument("--port", type=int, default=8000, help="port to listen on (default %(default)s)")
    x.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s, this machine only); "
                   "another address serves anyone who reaches it, without sign-in")
    x.add_argument("--engine", default="auto", choices=serving.ENGINES,
                   help="auto: vllm where a CUDA GPU and vllm exist, else transformers")
    x.add_argument("--dry-run", action="store_true", help="print the URL, model name and command; start nothing")
    x.set_defaults(func=cmd_serve)

    x = sub.add_parser("score", help="the reward a trained reward model (a method: reward run) gives one answer")
    x.add_argument("--reward", required=True, metavar="RUN_ID", help="a completed reward-model run")
    x.add_argument("--prompt", required=True, help="the user's message")
    x.add_argument("--response", required=True, help="the answer to score")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_score)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
