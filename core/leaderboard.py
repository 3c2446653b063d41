"""The leaderboard: one row per model, joining human ratings, eval results and training runs.

- Ratings come from campaign votes (`feedback.battles`) through `ratings.rate`: Bradley–Terry on the
  400·log10 scale with the anchor at 1000 (default: the bundled model, else a registered base model,
  else the first model without an adapter), bootstrap 95% intervals, ranks from those intervals, and win rate against
  the anchor.
  The votes come from a source (`feedback.SOURCES`): people (the default), a judge's verdicts, or both
  (people's votes where a pair has any, else the judge's); the board counts each, so its intervals
  say what they rest on (`basis`).
- Eval results are the latest completed eval run per row label on one eval dataset (default: the
  dataset of the most recently finished eval). Baselines are rows of their own: `model [prompting]`,
  `model [rag]`.
- Training facts come from the run behind `NAME+RUN_ID` (its LoRA adapter, or its whole model for full
  tuning) or a merged model (source `run:<id>`): method, tuning, data used (name@version), training time
  and cost.

`demo` runs the whole loop on the embedded defaults: import the sample SFT set and the sample votes, a short
LoRA SFT of the bundled model and DPO from it on the votes, eval of base, prompting, RAG, the SFT adapter alone
and with RAG, and the DPO adapter, and this leaderboard.
"""
from __future__ import annotations

import csv
import hashlib
import io
import time
from pathlib import Path
from typing import Callable

from tunelab import evaluate, models, ratings, samples, untrusted
from tunelab.errors import UserError

ELO_MAX_VOTES = 200_000   # boards with more votes leave out the online Elo column (see build)
METRICS = ("loss", "perplexity", "exact_match", "rouge_l", "bleu", "chrf", "length_words", "format", "reward",
           "reference_perplexity", "forgetting")
COLUMNS = ("model", "about", "rank", "rating", "ci_low", "ci_high", "votes", "win_rate", "elo", *METRICS, "method",
           "tuning", "data", "train_seconds", "cost_usd", "run_id", "run_status", "base_model", "adapter",
           "baseline", "eval_id", "eval_dataset", "run_name")


def _split_label(label: str) -> tuple[str, str | None, str | None]:
    """'model+run [rag]' -> ('model', 'run', 'rag'). A label that is no model spec (imported votes may
    name any model) is a model of its own."""
    baseline = None
    if label.endswith("]") and " [" in label:
        label, baseline = label[:-1].rsplit(" [", 1)
    try:
        spec = models.ModelSpec.parse(label)
    except UserError:
        return label, None, baseline
    return spec.model, spec.run, baseline


def _run_of(db, base: str, adapter: str | None) -> str | None:
    if adapter:
        return adapter
    try:
        source = models.get_model(db, base).source
    except UserError:  # a model named in votes need not be registered here (imported battles)
        return None
    return source.split(":", 1)[1] if source.startswith("run:") else None


def _training(db, run_id: str) -> dict:
    from tunelab import runs
    try:
        run = runs.get(db, run_id)
    except UserError:  # imported votes may name a run this workspace never had
        return {}
    return {"method": run.method, "tuning": run.tuning, "data": run.dataset, "train_seconds": run.seconds,
            "cost_usd": run.usd, "run_status": run.status, "run_name": run.config.get("name")}


def default_anchor(db, names: list[str]) -> str | None:
    """The bundled model if it has votes, else a registered base model, else the first plain name."""
    plain = [n for n in names if _split_label(n)[1] is None]
    registered = {m.name for m in models.list_models(db) if m.kind == "base"}
    for choice in ([models.DEFAULT_MODEL] if models.DEFAULT_MODEL in plain else [],
                   [n for n in plain if n in registered], plain, names):
        if choice:
            return choice[0]
    return None


def build(db, campaign: str | None = None, dataset: str | None = None, anchor: str | None = None,
          rounds: int = ratings.ROUNDS, seed: int = 0, source: str = "people", judge: str | None = None) -> dict:
    """{'rows': [...], 'anchor', 'campaign', 'dataset', 'votes', 'source', 'people_votes', 'sample_votes', 'judge_votes',
    'judges', 'updated_at'}; rows best first. `source` and `judge` pick the votes (`feedback.battle_counts`)."""
    from tunelab import feedback
    counts = feedback.battle_counts(db, campaign, source=source, judge=judge)
    names, decisive, ties = ratings.from_counts(counts["groups"])
    anchor = anchor or default_anchor(db, names)
    votes = counts["people_votes"] + counts["judge_votes"] + counts["sample_votes"]
    # Online Elo needs every vote in order, a pass in Python; past ELO_MAX_VOTES the page would wait on
    # it, so the column is left out there (the ranking is the Bradley–Terry rating's, in any case).
    elo = ratings.online_elo(feedback.battles(db, campaign, source=source, judge=judge)) \
        if votes <= ELO_MAX_VOTES else None
    rated = {r.model: r for r in ratings.rate_counts(names, decisive, ties, anchor=anchor, rounds=rounds, seed=seed,
                                                     elo=elo)}

    evals = evaluate.list_evals(db, dataset=dataset, status="completed")
    if evals and not dataset:
        newest = max(evals, key=lambda e: e["finished_at"] or 0)["dataset"]
        evals = [e for e in evals if e["dataset"] == newest]
    latest: dict[str, dict] = {}
    for e in evals:  # newest first, so the first seen per label wins
        latest.setdefault(e["label"], e)

    rows = []
    for label in sorted(set(rated) | set(latest)):
        base, adapter, baseline = _split_label(label)
        row = dict.fromkeys(COLUMNS)
        row.update(model=label, base_model=base, adapter=adapter, baseline=baseline)
        if label in rated:
            r = rated[label]
            row.update(rank=r.rank, rating=r.rating, ci_low=r.ci_low, ci_high=r.ci_high, votes=r.votes,
                       win_rate=r.win_rate, elo=r.elo)
        else:
            row["votes"] = 0
        if label in latest:
            e = latest[label]
            row.update({k: e["metrics"].get(k) for k in METRICS})
            row.update(eval_id=e["id"], eval_dataset=e["dataset"])
        run_id = _run_of(db, base, adapter)
        if run_id:
            row.update(run_id=run_id, **_training(db, run_id))
        elif baseline:
            k = latest[label]["config"]["k"] if label in latest else None
            row.update(method=baseline, data=f"{row['eval_dataset']} train split, k={k}" if k else None)
        else:
            row["method"] = "base"
        row["about"] = _about(row)
        rows.append(row)
    rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0, -(r["rating"] or 0), -(r["rouge_l"] or 0)))
    stamps = [counts["updated_at"] or 0] + [e["finished_at"] or 0 for e in latest.values()]
    return {"rows": rows, "anchor": anchor if rated else None, "campaign": campaign,
            "dataset": next(iter(latest.values()))["dataset"] if latest else dataset,
            "votes": votes, "source": source, "people_votes": counts["people_votes"],
            "sample_votes": counts["sample_votes"],
            "judge_votes": counts["judge_votes"], "judges": counts["judges"],
            "updated_at": max(stamps) or None, "built_at": time.time()}


def _about(row: dict) -> str:
    """The row as people name it: the run's name, else its method, tuning and data; and the baseline."""
    if row["run_id"]:
        what = row["run_name"] or " ".join(x for x in (row["method"] and row["method"].upper(), row["tuning"] and
                                                       row["tuning"].replace("lora", "LoRA").replace("qLoRA", "QLoRA"),
                                                       row["data"] and f"on {row['data']}") if x)
    elif row["baseline"] or row["method"] == "base":
        what = "base model"
    else:
        what = ""
    extra = {"rag": "with retrieved examples (RAG)", "prompting": "with worked examples in the prompt"}
    if row["baseline"]:
        what = f"{what} {extra.get(row['baseline'], row['baseline'])}".strip()
    return what


# How a stakeholder reads the board: a heading per column and how its figures are written, as people
# read them (a rating to the point, a share as a percentage, a time in minutes). `display` uses it.
def _fixed(digits: int, suffix: str = "", sign: bool = False):
    return lambda v: f"{v:{'+' if sign else ''}.{digits}f}{suffix}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


VIEW = {
    "rank": ("Rank", _fixed(0)),
    "model": ("Model", str),
    "about": ("What it is", str),
    "rating": ("Rating", _fixed(0)),
    "interval": ("95% interval", str),
    "votes": ("Votes", _fixed(0)),
    "win_rate": ("Win rate vs anchor", lambda v: f"{100 * v:.0f}%"),
    "elo": ("Elo", _fixed(0)),
    "rouge_l": ("ROUGE-L", _fixed(1)),
    "exact_match": ("Exact match %", _fixed(0)),
    "bleu": ("BLEU", _fixed(1)),
    "chrf": ("chrF", _fixed(1)),
    "format": ("Format %", _fixed(0)),
    "reward": ("Reward", _fixed(2)),
    "perplexity": ("Perplexity", _fixed(1)),
    "length_words": ("Words", _fixed(0)),
    "forgetting": ("Forgetting", _fixed(1, "%", sign=True)),
    "method": ("Method", str),
    "data": ("Data", str),
    "train_seconds": ("Training time", _duration),
    "cost_usd": ("Cost", lambda v: f"${v:.2f}" if v >= 0.995 else f"${v:.3f}" if v >= 0.001 else "< $0.001"),
}


def display(rows: list[dict], columns: tuple[str, ...] = tuple(VIEW)) -> list[dict]:
    """The rows as a stakeholder reads them: headed columns, figures rounded, a missing value blank, and
    no column that no row fills (with no votes there is no rating, interval, win rate or Elo)."""
    def cell(row: dict, key: str):
        if key == "interval":
            return f"{row['ci_low']:.0f} – {row['ci_high']:.0f}" if row["ci_low"] is not None else None
        if key == "votes" and not row["votes"]:
            return None
        value = row.get(key)
        return None if value is None or value == "" else VIEW[key][1](value)
    cells = [{key: cell(row, key) for key in columns} for row in rows]
    kept = [key for key in columns if any(c[key] is not None for c in cells)]
    return [{VIEW[key][0]: "" if c[key] is None else c[key] for key in kept} for c in cells]


def tradeoff(rows: list[dict]) -> dict | None:
    """What the board's scatter plots: each evaluated row's content score (ROUGE-L) against its format
    adherence, or against its cost when no eval checked the format; None with fewer than two rows."""
    scored = [r for r in rows if r["rouge_l"] is not None]
    y = "format" if any(r["format"] is not None for r in scored) else "cost_usd"
    points = [{"model": r["model"], "about": r["about"], "content": r["rouge_l"], "other": r[y] or 0.0}
              for r in scored if r[y] is not None or y == "cost_usd"]
    if len(points) < 2:
        return None
    return {"x": "ROUGE-L (content)", "y": "format % (behaviour checks passed)" if y == "format"
            else "training cost ($)", "points": points}


def basis(board: dict) -> str:
    """What the board's intervals rest on, for a caption: people's votes, judge verdicts, or both."""
    people, judged, sample = board["people_votes"], board["judge_votes"], board.get("sample_votes", 0)
    parts = [] if board["source"] == "judge" or (sample and not people) else [
        f"{people} {'person' if people == 1 else 'people'}'s vote{'' if people == 1 else 's'}"]
    if sample:
        parts.append(f"{sample} sample vote{'' if sample == 1 else 's'} (written as sample data, not cast by people)")
    if board["source"] != "people":
        parts.append(f"{judged} judge verdict{'' if judged == 1 else 's'} (judge {', '.join(board['judges']) or '-'})")
    return "intervals rest on " + " and ".join(parts)


def to_csv(rows: list[dict]) -> str:
    """The rows as CSV for a spreadsheet; model, data and run names come from users, so a text cell
    that would run as a formula is neutralised (`untrusted.csv_cell`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: untrusted.csv_cell(v) for k, v in row.items()} for row in rows)
    return out.getvalue()


# ---------------------------------------------------------------- the whole loop on the defaults

DEMO_DATA = samples.path("acme_router_sft.jsonl")
DEMO_DATASET = "acme-router"
DEMO_VALIDATION = 0.2   # 30 of the 150 sample rows are held out for the evals
# About 50 s of LoRA SFT on 2 idle CPU cores for SmolLM2-135M (~200 trained tokens/s with packing):
# the sample answers share one "Answer: ... / Steps: 1. 2. 3." format, which a few steps pick up.
DEMO_TRAIN = {"method": "sft", "tuning": "lora", "learning_rate": 1e-3, "max_steps": 12,
              "per_device_train_batch_size": 4, "max_length": 256, "packing": True, "warmup_ratio": 0.0,
              "logging_steps": 1, "save_steps": 1000, "eval_steps": 1000, "seed": 0}
# One batch of 20: generating 20 answers together took half the time of batches of 8 (bench/generate.py).
DEMO_EVAL = {"limit": 20, "max_new_tokens": 96, "k": 3, "per_device_eval_batch_size": 20}
# The preference step: the sample votes (data/samples/acme_router_votes.jsonl, written by bench/sample_votes.py)
# prefer the format-keeping answer; 4 LoRA DPO steps from the SFT adapter (about half a minute on 2 CPU cores;
# the loss is about 0.3 by then, and 8 steps moved the answers off the format).
DEMO_VOTES = samples.path("acme_router_votes.jsonl")
DEMO_VOTES_CAMPAIGN = "acme-router-sample-votes"
DEMO_PREFERENCES = "acme-router-votes"
DEMO_DPO = {"method": "dpo", "tuning": "lora", "learning_rate": 5e-4, "beta": 0.1, "max_steps": 4,
            "per_device_train_batch_size": 4, "max_length": 256, "warmup_ratio": 0.0, "logging_steps": 1,
            "save_steps": 1000, "eval_steps": 1000, "seed": 0}


def demo_dataset(db, ws, path: Path, name: str, report: Callable[[float, str], None]):
    """The split sample dataset, imported once: a later demo reuses the version made from the same file."""
    from tunelab import datasets
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    known = {d["name"] for d in datasets.list_datasets(db)}
    if name in known:
        for version in reversed(datasets.versions(db, ws, name)):
            if "validation" in version.files and datasets.lineage(db, ws, version.ref)[0].source_hash == digest:
                return version
    report(0.0, f"importing {path.name}")
    imported = datasets.import_file(db, ws, path, name).version
    return datasets.split(db, ws, imported.ref, val=DEMO_VALIDATION, seed=0)


def demo_votes(db, ws, report: Callable[[float, str], None]):
    """The sample votes as a campaign labelled sample (feedback.SAMPLE_SOURCE: written for the demo, not cast
    by people, and left out of every board of all campaigns), and their TRL preference rows as a dataset;
    imported once, a later demo reuses both."""
    from tunelab import datasets, feedback
    if DEMO_VOTES_CAMPAIGN not in {c.name for c in feedback.list_campaigns(db)}:
        report(0.0, f"importing {DEMO_VOTES.name} (sample votes)")
        feedback.import_judgments(db, DEMO_VOTES, "arena", DEMO_VOTES_CAMPAIGN, sample=True)
    if DEMO_PREFERENCES in {d["name"] for d in datasets.list_datasets(db)}:
        return datasets.resolve(db, ws, DEMO_PREFERENCES)
    done = feedback.export(db, ws, DEMO_VOTES_CAMPAIGN, "trl", ws.exports_dir / f"{DEMO_PREFERENCES}.jsonl",
                           register=DEMO_PREFERENCES)
    return datasets.resolve(db, ws, done["dataset"])


def _trained(db, ws, config: dict, report: Callable[[float, str], None]):
    from tunelab import runs
    run_id = runs.launch(db, ws, config)
    run = runs.wait(db, run_id, progress=lambda f, m: report(f, f"training {run_id} ({config['method']}): {m}"))
    if run.status != "completed":
        raise UserError(f"demo training run {run_id} {run.status}: {run.error or ''} (see {run.path / 'train.log'})")
    return run


def demo(db, ws, model: str = models.DEFAULT_MODEL, train: dict | None = None, eval_settings: dict | None = None,
         progress: Callable[[float, str], None] | None = None) -> dict:
    """Import, fine-tune (LoRA SFT, then DPO from it on the sample votes), evaluate (base, prompting, RAG, the
    SFT adapter alone and with RAG, the DPO adapter) and build the leaderboard. `train` overrides both runs'
    settings (the CLI's --max-steps). The result says how long each phase took (`seconds`)."""
    from tunelab import feedback
    report = progress or (lambda f, m: None)
    seconds, clock = {}, time.time()

    def lap(phase: str) -> None:
        nonlocal clock
        seconds[phase], clock = round(time.time() - clock, 1), time.time()

    report(0.0, f"preparing {model}")
    models.model_path(db, ws, model, progress=lambda f, m: report(0.05 * f, m))
    version = demo_dataset(db, ws, DEMO_DATA, DEMO_DATASET, lambda f, m: report(0.05, m))
    preferences = demo_votes(db, ws, lambda f, m: report(0.05, m))
    lap("prepare")

    run = _trained(db, ws, {**DEMO_TRAIN, **(train or {}), "base_model": model, "dataset": version.ref},
                   lambda f, m: report(0.06 + 0.3 * f, m))
    lap("train sft")
    dpo = _trained(db, ws, {**DEMO_DPO, **(train or {}), "base_model": model, "dataset": preferences.ref,
                            "init_from": run.id}, lambda f, m: report(0.36 + 0.14 * f, m))
    lap("train dpo")

    settings = {**DEMO_EVAL, **(eval_settings or {})}
    plans = [{}, {"baseline": "prompting"}, {"baseline": "rag"}, {"adapter": run.id},
             {"adapter": run.id, "baseline": "rag"}, {"adapter": dpo.id}]
    evals = {}
    for i, plan in enumerate(plans):
        config = evaluate.EvalConfig(model=model, dataset=version.ref, **settings, **plan)
        eval_id = evaluate.create(db, ws, config)
        lo, span = 0.5 + 0.49 * i / len(plans), 0.49 / len(plans)
        # In this process: the same recorded eval run as `tunelab eval`, without a process start per eval.
        evaluate.execute(db, ws, eval_id, lambda f, m: report(lo + span * f, f"eval {config.label}: {m}"))
        evals[config.label] = eval_id
        lap(f"eval {config.label}")
    board = build(db, dataset=version.ref)
    report(1.0, "done")
    return {"dataset": version.ref, "run": run.id, "train_seconds": run.seconds, "dpo_run": dpo.id,
            "dpo_seconds": dpo.seconds, "preferences": preferences.ref,
            "sample_votes": {"campaign": DEMO_VOTES_CAMPAIGN, "source": feedback.SAMPLE_SOURCE, "file": DEMO_VOTES.name},
            "evals": evals, "seconds": seconds, "leaderboard": board}
