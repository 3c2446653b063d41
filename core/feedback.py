"""Human preference collection: campaigns, pairs, claims, votes, quality, export and import.

A campaign is a set of prompts and two or more model specs (`NAME` or `NAME+RUN_ID`). A `generate`
job (core/jobs.py, queued by `start_generation`, local or on Ray) samples N answers per prompt and
model in batches, reporting progress in `<home>/campaigns/<name>/status.json` and its log there.
Pairs are then built per prompt across models; each pair wants K votes (overlap).
Gold pairs carry a known answer and are given to every annotator once, to measure accuracy.

Annotators claim one pair at a time inside BEGIN IMMEDIATE, so concurrent claims never hand out
more than K slots. A claim not voted within `claim_timeout_s` stops counting, and the pair goes
back to the pool. An annotator never gets a pair they already voted on, skipped or abandoned.
UNIQUE(pair_id, annotator_id) on votes makes a repeated submit an update: no vote is ever
duplicated, and none is lost.

Vote labels are in pair terms: 'a' means the pair's response A won, whatever side it was shown on.
"""
from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from core import agreement, db as dbmod, folders, workspace
from core.errors import UserError
from core.generate import SamplingSettings
from core.models import ModelSpec

Progress = Callable[[float, str], None]

CHOICES = ("a", "b", "tie", "both_bad")
SHOWN_CHOICES = ("left", "right", "tie", "both_bad")
STRENGTHS = {1: "slightly", 2: "much"}
WINNER_OF = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}
CHOICE_OF = {v: k for k, v in WINNER_OF.items()}
GOLD_MODEL = "gold"
# An annotator is flagged when, over at least FLAG_MIN_ITEMS pairs that others also rated, they
# agree with the others' majority less than FLAG_AGREEMENT of the time, or when they got less than
# FLAG_GOLD_ACCURACY of at least FLAG_MIN_GOLD gold pairs right. With four labels, chance is 25-50%.
FLAG_AGREEMENT = 0.5
FLAG_MIN_ITEMS = 5
FLAG_GOLD_ACCURACY = 0.7
FLAG_MIN_GOLD = 3


@dataclass
class CampaignConfig:
    """What a campaign compares and how many votes it wants; the CLI flags and the page form come from here."""
    samples: int = field(default=1, metadata={"help": "Answers sampled per prompt and model; pairs are built per sample."})
    overlap: int = field(default=3, metadata={"help": "Annotators who vote on each pair (K), for agreement."})
    guidelines: str = field(default="", metadata={"help": "Instructions shown to annotators (markdown)."})


@dataclass
class Campaign:
    id: int
    name: str
    source: str
    models: list[str]
    samples: int
    overlap: int
    settings: dict
    guidelines: str
    judge: str | None
    status: str            # pending | generating | ready | failed (generating, failed: its job's)
    progress: float
    progress_message: str | None
    pid: int | None
    error: str | None
    created_at: float

    @classmethod
    def from_row(cls, row: dict) -> "Campaign":
        return cls(id=row["id"], name=row["name"], source=row["source"], models=json.loads(row["models_json"]),
                   samples=row["samples"], overlap=row["overlap"], settings=json.loads(row["settings_json"]),
                   guidelines=row["guidelines"], judge=row["judge"], status=row["status"],
                   progress=row["progress"], progress_message=row["progress_message"], pid=row["pid"],
                   error=row["error"], created_at=row["created_at"])


@dataclass
class Assignment:
    """One pair as one annotator sees it: sides already randomized, model names withheld."""
    id: int
    pair_id: int
    campaign_id: int
    annotator_id: int
    prompt: list[dict]
    left: str
    right: str
    shown_at: float


# ---------------------------------------------------------------- campaigns

def _rows(db, sql: str, params=()) -> list[dict]:
    cur = db.execute(sql, list(params))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


# A campaign row says pending or ready; its generation job (core/jobs.py) says the rest.
_SELECT = ("SELECT c.*, j.status AS job_status, j.pid, j.error, j.folder AS job_folder FROM campaigns c "
           "LEFT JOIN jobs j ON j.kind = 'generate' AND j.target = c.name")


def get_campaign(db, name: str) -> Campaign:
    """Changes nothing: `jobs.reconcile` notices a generation process that died."""
    rows = _rows(db, f"{_SELECT} WHERE c.name = ?", [name])
    if not rows:
        known = ", ".join(r[0] for r in db.execute("SELECT name FROM campaigns ORDER BY name").fetchall())
        raise UserError(f"campaign {name!r} does not exist; known campaigns: {known or '(none)'}")
    return _campaign(db, rows[0])


def list_campaigns(db) -> list[Campaign]:
    return [_campaign(db, r) for r in _rows(db, f"{_SELECT} ORDER BY c.created_at DESC")]


def _campaign(db, row: dict) -> Campaign:
    """Generating while its job is queued or running (progress from the job's status.json), failed with
    the job's error if the job ended any other way before the pairs were built."""
    from core import jobs
    job, folder = row.pop("job_status"), row.pop("job_folder")
    if row["status"] != "ready" and job in jobs.ACTIVE:
        report = folders.read_status(jobs.home(db) / folder) if job == "running" else {}
        row.update(status="generating", progress=float(report.get("progress") or 0.0),
                   progress_message=report.get("phase") or job)
    elif row["status"] != "ready" and job is not None and job != "completed":
        row.update(status="failed", error=row["error"] or f"the generation job was {job}")
    return Campaign.from_row(row)


def _as_messages(prompt) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return prompt
    raise UserError(f"prompt {str(prompt)[:80]!r}: expected text or a list of {{role, content}} messages")


def create_campaign(db, ws, name: str, models: list[str], *, prompts: list | None = None,
                    dataset: str | None = None, config: CampaignConfig | None = None,
                    settings: SamplingSettings | None = None, created_by: int | None = None) -> Campaign:
    """Record a campaign and its prompts (from a dataset ref or pasted in). Generation is separate."""
    config = config or CampaignConfig()
    settings = settings or SamplingSettings()
    name = name.strip()
    if not name:
        raise UserError("campaign name: must not be empty")
    models = [str(ModelSpec.parse(m).check(db, ws)) for m in models if m.strip()]
    if len(set(models)) < 2:
        raise UserError(f"models: a campaign compares two or more distinct models, got {models}")
    if config.samples < 1 or config.overlap < 1:
        raise UserError("samples and overlap: must be at least 1")
    if config.samples > 1 and settings.temperature <= 0:
        raise UserError("temperature: must be above 0 when samples > 1, or every sample is the same answer")
    if (prompts is None) == (dataset is None):
        raise UserError("prompts: give either a dataset (name or name@version) or pasted prompts")
    if dataset is not None:
        from core import datasets
        version = datasets.resolve(db, ws, dataset)
        messages = datasets.prompts_of(version)
        source = f"dataset:{version.ref}"
    else:
        messages = [_as_messages(p) for p in prompts if not (isinstance(p, str) and not p.strip())]
        source = "pasted"
    if not messages:
        raise UserError(f"prompts: {source} has no prompts")
    if db.execute("SELECT 1 FROM campaigns WHERE name = ?", [name]).fetchone():
        raise UserError(f"campaign {name!r} already exists")
    with dbmod.transaction(db):
        cid = _insert_campaign(db, name, source, models, config, settings.to_dict(), None, "pending", created_by)
        for i, m in enumerate(messages):
            db.execute("INSERT INTO campaign_prompts(campaign_id, idx, messages_json) VALUES (?, ?, ?)",
                       [cid, i, json.dumps(m)])
    return get_campaign(db, name)


def _insert_campaign(db, name, source, models, config, settings, judge, status, created_by) -> int:
    workspace.check_name(name, "campaign")  # it names export files (the Register button)
    cur = db.execute(
        "INSERT INTO campaigns(name, source, models_json, samples, overlap, settings_json, guidelines, judge, "
        "status, progress, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
        [name, source, json.dumps(models), config.samples, config.overlap, json.dumps(settings),
         config.guidelines, judge, status, created_by, time.time()])
    return cur.lastrowid


def prompts(db, campaign: Campaign) -> list[tuple[int, list[dict]]]:
    """The prompts the models answer (gold prompts come with their answers)."""
    return [(r[0], json.loads(r[1])) for r in db.execute(
        "SELECT id, messages_json FROM campaign_prompts WHERE campaign_id = ? AND NOT gold ORDER BY idx",
        [campaign.id])]


# ---------------------------------------------------------------- generation (a separate process)

def start_generation(db, ws, name: str, backend: str = "local", ray_address: str | None = None):
    """Queue the campaign's generation as a `generate` job (core/jobs.py), in the queue shared with
    training and evals, on this machine or a Ray cluster; a failed or stopped one starts over, keeping
    the answers already stored. Returns the job."""
    from core import jobs
    c = get_campaign(db, name)
    if c.status == "generating":
        raise UserError(f"campaign {name!r} is already generating")
    if c.status == "ready":
        raise UserError(f"campaign {name!r} is ready; its answers are generated")
    job = jobs.find(db, "generate", c.name)
    if job is not None:
        return jobs.requeue(db, job.id)
    if backend == "ray":
        from core import ray_backend
        ray_address = ray_backend.check_address(ray_address)[0]
    return jobs.submit(db, "generate", c.name, ws.home / "campaigns" / c.name, backend, ray_address,
                       {"num_cpus": 1} if backend == "ray" else None)


def wait_generation(db, name: str, progress: Progress | None = None, poll_s: float = 0.5,
                    timeout_s: float | None = None) -> Campaign:
    """Block until generation ends, relaying its progress; raises UserError if it did not complete, and
    TimeoutError after `timeout_s`."""
    from core import jobs
    job = jobs.find(db, "generate", get_campaign(db, name).name)
    if job is not None:
        job = jobs.wait(db, job.id, progress, timeout_s, poll_s)
    c = get_campaign(db, name)
    if c.status != "ready":
        raise UserError(f"campaign {name!r}: generation {job.status if job else 'never started'}: {c.error}")
    return c


def run_job(db, ws, target: str, folder: Path) -> tuple[str, str | None]:
    """The `generate` job's entry point: progress goes to the folder's status.json and the job's log."""
    generate_responses(db, ws, target, progress=folders.progress_writer(folder))
    return "completed", None


def generate_responses(db, ws, name: str, progress: Progress | None = None, batch_size: int = 8) -> None:
    """Sample every (model, sample) over all prompts, store the answers, then build the pairs.

    Runs in the `generate` job's process (run_job), which records the outcome. Answers already stored are
    kept, so a restarted job resumes.
    """
    import gc

    from core import generate
    c = get_campaign(db, name)
    base = SamplingSettings(**c.settings)
    items = prompts(db, c)
    units = [(spec, s) for spec in c.models for s in range(c.samples)]
    for u, spec in enumerate(c.models):
        todo = [s for s in range(c.samples) if _missing(db, c, spec, s, len(items))]
        if not todo:
            continue
        model, tokenizer = generate.load(*ModelSpec.parse(spec).folders(db, ws))
        for s in todo:
            k = units.index((spec, s))
            settings = SamplingSettings(**{**asdict(base), "seed": base.seed + s})

            def report(f: float, msg: str, k=k, spec=spec, s=s) -> None:
                if progress:
                    progress((k + f) / len(units), f"{spec} sample {s + 1}: {msg}")
            report(0.0, "generating")
            answers = generate.generate(model, tokenizer, [m for _, m in items], settings,
                                        batch_size=batch_size, progress=report)
            store_responses(db, c, spec, s, [pid for pid, _ in items], answers, settings)
        del model, tokenizer
        gc.collect()
    n = build_pairs(db, c)
    if progress:
        progress(1.0, f"{n} pairs ready")


def _missing(db, c: Campaign, spec: str, sample: int, n_prompts: int) -> bool:
    have = db.execute("SELECT count(*) FROM responses r JOIN campaign_prompts p ON p.id = r.prompt_id "
                      "WHERE p.campaign_id = ? AND NOT p.gold AND r.model = ? AND r.sample = ?",
                      [c.id, spec, sample]).fetchone()[0]
    return have < n_prompts


def store_responses(db, campaign: Campaign, model: str, sample: int, prompt_ids: list[int], texts: list[str],
                    settings: SamplingSettings | None = None) -> None:
    """Store one model's answers (one per prompt) for one sample index, with the settings and seed used."""
    if len(prompt_ids) != len(texts):
        raise UserError(f"responses of {model}: {len(texts)} answers for {len(prompt_ids)} prompts")
    settings = settings or SamplingSettings(**campaign.settings)
    now = time.time()
    with dbmod.transaction(db):
        for pid, text in zip(prompt_ids, texts):
            db.execute("INSERT INTO responses(prompt_id, model, sample, text, settings_json, seed, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(prompt_id, model, sample) DO UPDATE SET "
                       "text = excluded.text, settings_json = excluded.settings_json, seed = excluded.seed",
                       [pid, model, sample, text, json.dumps(settings.to_dict()), settings.seed, now])


def build_pairs(db, campaign: Campaign) -> int:
    """One pair per prompt, per two models, per sample index, shuffled so annotators see a mix; the
    campaign is then ready to label."""
    rng = random.Random(campaign.id)
    specs = campaign.models
    with dbmod.transaction(db):
        if db.execute("SELECT 1 FROM pairs WHERE campaign_id = ? AND gold IS NULL", [campaign.id]).fetchone():
            return db.execute("SELECT count(*) FROM pairs WHERE campaign_id = ?", [campaign.id]).fetchone()[0]
        resp = {(r[0], r[1], r[2]): r[3] for r in db.execute(
            "SELECT r.prompt_id, r.model, r.sample, r.id FROM responses r JOIN campaign_prompts p "
            "ON p.id = r.prompt_id WHERE p.campaign_id = ?", [campaign.id])}
        n = 0
        for pid, _ in prompts(db, campaign):
            for i in range(len(specs)):
                for j in range(i + 1, len(specs)):
                    for s in range(campaign.samples):
                        ra, rb = resp.get((pid, specs[i], s)), resp.get((pid, specs[j], s))
                        if ra is None or rb is None:
                            raise UserError(f"campaign {campaign.name!r}: prompt {pid} lacks an answer from "
                                            f"{specs[i] if ra is None else specs[j]} (sample {s})")
                        _insert_pair(db, campaign.id, pid, ra, rb, campaign.overlap, None, rng.random())
                        n += 1
        db.execute("UPDATE campaigns SET status = 'ready', progress = 1, progress_message = ? WHERE id = ?",
                   [f"{n} pairs ready", campaign.id])
    return n


def _insert_pair(db, cid, pid, ra, rb, needed, gold, position) -> int:
    return db.execute("INSERT INTO pairs(campaign_id, prompt_id, response_a, response_b, gold, votes_needed, "
                      "position) VALUES (?, ?, ?, ?, ?, ?, ?)", [cid, pid, ra, rb, gold, needed, position]).lastrowid


def add_gold(db, name: str, rows: list[dict], source: str = "gold") -> int:
    """Add gold pairs from preference rows (prompt, chosen, rejected): the known answer is 'chosen'.

    They get random positions among the other pairs and random A/B order, and every annotator sees
    each once, so they cannot be told apart from the rest.
    """
    c = get_campaign(db, name)
    rng = random.Random()
    with dbmod.transaction(db):
        idx = db.execute("SELECT coalesce(max(idx), -1) + 1 FROM campaign_prompts WHERE campaign_id = ?",
                         [c.id]).fetchone()[0]
        for i, row in enumerate(rows):
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
            if missing:
                raise UserError(f"{source} row {i + 1}: missing field(s) {', '.join(missing)}")
            pid = db.execute("INSERT INTO campaign_prompts(campaign_id, idx, messages_json, gold) VALUES (?, ?, ?, 1)",
                             [c.id, idx + i, json.dumps(_as_messages(row["prompt"]))]).lastrowid
            ids = {}
            for sample, key in enumerate(("chosen", "rejected")):
                ids[key] = db.execute(
                    "INSERT INTO responses(prompt_id, model, sample, text, settings_json, seed, created_at) "
                    "VALUES (?, ?, ?, ?, '{}', NULL, ?)", [pid, GOLD_MODEL, sample, _text(row[key]), time.time()]
                ).lastrowid
            if rng.random() < 0.5:
                _insert_pair(db, c.id, pid, ids["chosen"], ids["rejected"], None, "a", rng.random())
            else:
                _insert_pair(db, c.id, pid, ids["rejected"], ids["chosen"], None, "b", rng.random())
    return len(rows)


def _text(value) -> str:
    """An answer given as text or as assistant messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    raise UserError(f"answer {str(value)[:80]!r}: expected text or a list of messages")


# ---------------------------------------------------------------- claims and votes

def claim_timeout(db) -> float:
    from core import workspace
    return float(workspace.get_setting(db, "claim_timeout_s"))


def next_pair(db, campaign_id: int, annotator_id: int, annotator: str, timeout_s: float | None = None,
              now: float | None = None) -> Assignment | None:
    """The annotator's current pair: the one they hold, else a newly claimed one; None when none is left."""
    timeout_s = claim_timeout(db) if timeout_s is None else timeout_s
    now = time.time() if now is None else now
    # A claim younger than half the timeout still reserves its slot: show it again without a write.
    held = db.execute("SELECT id FROM assignments WHERE campaign_id = ? AND annotator_id = ? AND status = 'open' "
                      "AND claimed_at > ? ORDER BY id LIMIT 1", [campaign_id, annotator_id, now - timeout_s / 2]
                      ).fetchone()
    if held:
        return _assignment(db, held[0])
    with dbmod.transaction(db):
        aid = _claim(db, campaign_id, annotator_id, annotator, now - timeout_s, now)
    return None if aid is None else _assignment(db, aid)


def _claim(db, campaign_id: int, annotator_id: int, annotator: str, cutoff: float, now: float) -> int | None:
    """Inside a write transaction: renew the annotator's open claim if its slot is still free, else
    claim the first pair (in shuffled order) with a free slot. Returns the assignment id."""
    held = db.execute("SELECT a.id, a.pair_id, p.votes_needed, p.n_votes FROM assignments a "
                      "JOIN pairs p ON p.id = a.pair_id WHERE a.campaign_id = ? AND a.annotator_id = ? "
                      "AND a.status = 'open' ORDER BY a.id LIMIT 1", [campaign_id, annotator_id]).fetchone()
    if held:
        aid, pair_id, needed, n_votes = held
        others = db.execute("SELECT count(*) FROM assignments WHERE pair_id = ? AND annotator_id != ? AND "
                            "status = 'open' AND claimed_at > ?", [pair_id, annotator_id, cutoff]).fetchone()[0]
        if needed is None or n_votes + others < needed:
            db.execute("UPDATE assignments SET claimed_at = ? WHERE id = ?", [now, aid])
            return aid
        # Came back after the timeout and others filled the pair meanwhile.
        db.execute("UPDATE assignments SET status = 'expired' WHERE id = ?", [aid])
    row = db.execute(_CANDIDATE + " ORDER BY p.position LIMIT 1",
                     {"c": campaign_id, "u": annotator_id, "cutoff": cutoff}).fetchone()
    if row is None:
        return None
    return db.execute("INSERT INTO assignments(pair_id, campaign_id, annotator_id, annotator, left_is_a, "
                      "claimed_at, shown_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'open')",
                      [row[0], campaign_id, annotator_id, annotator, random.random() < 0.5, now, now]).lastrowid


# Pairs this annotator has never been given that still have a free slot: K minus votes minus live claims.
_CANDIDATE = """
SELECT p.id FROM pairs p
WHERE p.campaign_id = :c
  AND NOT EXISTS (SELECT 1 FROM assignments o WHERE o.pair_id = p.id AND o.annotator_id = :u)
  AND (p.votes_needed IS NULL OR p.n_votes + (SELECT count(*) FROM assignments o WHERE o.pair_id = p.id
       AND o.status = 'open' AND o.claimed_at > :cutoff) < p.votes_needed)
"""


def _assignment(db, aid: int) -> Assignment:
    row = db.execute(
        "SELECT a.id, a.pair_id, a.campaign_id, a.annotator_id, a.left_is_a, a.shown_at, cp.messages_json, "
        "ra.text, rb.text FROM assignments a JOIN pairs p ON p.id = a.pair_id "
        "JOIN campaign_prompts cp ON cp.id = p.prompt_id JOIN responses ra ON ra.id = p.response_a "
        "JOIN responses rb ON rb.id = p.response_b WHERE a.id = ?", [aid]).fetchone()
    left, right = (row[7], row[8]) if row[4] else (row[8], row[7])
    return Assignment(id=row[0], pair_id=row[1], campaign_id=row[2], annotator_id=row[3],
                      prompt=json.loads(row[6]), left=left, right=right, shown_at=row[5])


def cast_vote(db, assignment_id: int, choice: str, strength: int | None = None, now: float | None = None) -> None:
    """Record a vote in the terms the annotator saw (left, right, tie, both_bad).

    Strength is 1 (slightly better) or 2 (much better) for left/right. A second submit for the same
    pair by the same annotator updates the vote. A claim that timed out still counts: no vote is lost.
    """
    strength = _check_choice(choice, strength)
    now = time.time() if now is None else now
    with dbmod.transaction(db):
        _record_vote(db, assignment_id, choice, strength, now)


def vote_and_next(db, assignment_id: int, choice: str, strength: int | None = None,
                  timeout_s: float | None = None, now: float | None = None,
                  annotator_id: int | None = None) -> Assignment | None:
    """`cast_vote`, then claim the annotator's next pair, in one transaction: one labeling step.

    Unlike `cast_vote`, only the pair on the annotator's screen counts: their open claim (and theirs,
    when `annotator_id` is given). A second key press sent before the page drew the next pair names the
    pair just voted on: it changes nothing, like a double click, and the next pair stays unvoted.
    A pair skipped, expired, taken back or someone else's is refused with a UserError.
    """
    strength = _check_choice(choice, strength)
    timeout_s = claim_timeout(db) if timeout_s is None else timeout_s
    now = time.time() if now is None else now
    with dbmod.transaction(db):
        row = db.execute("SELECT campaign_id, annotator_id, annotator, status FROM assignments WHERE id = ?",
                         [assignment_id]).fetchone()
        if row is None or row[3] not in ("open", "voted") or annotator_id not in (None, row[1]):
            raise UserError(f"assignment {assignment_id} is not the pair on your screen "
                            f"({'gone' if row is None else row[3]}); the vote was not counted")
        cid, uid, uname, status = row
        if status == "open":
            _record_vote(db, assignment_id, choice, strength, now)
        aid = _claim(db, cid, uid, uname, now - timeout_s, now)
    return None if aid is None else _assignment(db, aid)


def _check_choice(choice: str, strength: int | None) -> int | None:
    if choice not in SHOWN_CHOICES:
        raise UserError(f"choice {choice!r}: expected one of {', '.join(SHOWN_CHOICES)}")
    if choice not in ("left", "right"):
        return None
    strength = 1 if strength is None else strength
    if strength not in STRENGTHS:
        raise UserError(f"strength {strength!r}: expected 1 (slightly) or 2 (much)")
    return strength


def _record_vote(db, assignment_id: int, choice: str, strength: int | None, now: float) -> tuple[int, int, str]:
    """Inside a write transaction: insert or update the vote; returns (campaign, annotator id, name)."""
    row = db.execute("SELECT a.pair_id, a.campaign_id, a.annotator_id, a.annotator, a.left_is_a, a.shown_at, "
                     "ra.model, rb.model FROM assignments a JOIN pairs p ON p.id = a.pair_id "
                     "JOIN responses ra ON ra.id = p.response_a JOIN responses rb ON rb.id = p.response_b "
                     "WHERE a.id = ?", [assignment_id]).fetchone()
    if row is None:
        raise UserError(f"assignment {assignment_id} does not exist (undone or never claimed)")
    pair_id, cid, uid, uname, left_is_a, shown_at, model_a, model_b = row
    label = {"left": "a" if left_is_a else "b", "right": "b" if left_is_a else "a"}.get(choice, choice)
    existed = db.execute("SELECT 1 FROM votes WHERE pair_id = ? AND annotator_id = ?", [pair_id, uid]).fetchone()
    db.execute(
        "INSERT INTO votes(pair_id, campaign_id, annotator_id, annotator, choice, strength, left_is_a, left_model, "
        "shown_at, cast_at, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(pair_id, annotator_id) "
        "DO UPDATE SET choice = excluded.choice, strength = excluded.strength, cast_at = excluded.cast_at, "
        "seconds = excluded.seconds",
        [pair_id, cid, uid, uname, label, strength, left_is_a, model_a if left_is_a else model_b, shown_at, now,
         max(0.0, now - shown_at)])
    if not existed:
        db.execute("UPDATE pairs SET n_votes = n_votes + 1 WHERE id = ?", [pair_id])
    db.execute("UPDATE assignments SET status = 'voted' WHERE id = ?", [assignment_id])
    return cid, uid, uname


def skip(db, assignment_id: int) -> None:
    """Pass on a pair: it goes back to the pool for others and never returns to this annotator."""
    db.execute("UPDATE assignments SET status = 'skipped' WHERE id = ? AND status = 'open'", [assignment_id])


def undo_last(db, campaign_id: int, annotator_id: int, now: float | None = None) -> Assignment | None:
    """Take back the annotator's latest vote in the campaign and show that pair again."""
    now = time.time() if now is None else now
    with dbmod.transaction(db):
        row = db.execute("SELECT id, pair_id FROM votes WHERE campaign_id = ? AND annotator_id = ? "
                         "ORDER BY cast_at DESC, id DESC LIMIT 1", [campaign_id, annotator_id]).fetchone()
        if row is None:
            return None
        vote_id, pair_id = row
        db.execute("DELETE FROM votes WHERE id = ?", [vote_id])
        db.execute("UPDATE pairs SET n_votes = n_votes - 1 WHERE id = ?", [pair_id])
        # The pair they were looking at was never voted on: back to the pool.
        db.execute("DELETE FROM assignments WHERE campaign_id = ? AND annotator_id = ? AND status = 'open'",
                   [campaign_id, annotator_id])
        aid = db.execute("SELECT id FROM assignments WHERE pair_id = ? AND annotator_id = ?",
                         [pair_id, annotator_id]).fetchone()[0]
        db.execute("UPDATE assignments SET status = 'open', claimed_at = ?, shown_at = ? WHERE id = ?", [now, now, aid])
    return _assignment(db, aid)


def annotator_progress(db, campaign_id: int, annotator_id: int, timeout_s: float | None = None) -> tuple[int, int]:
    """(votes cast, votes cast + pairs still open to this annotator), for "12 of 50"."""
    cutoff = time.time() - (claim_timeout(db) if timeout_s is None else timeout_s)
    done = db.execute("SELECT count(*) FROM votes WHERE campaign_id = ? AND annotator_id = ?",
                      [campaign_id, annotator_id]).fetchone()[0]
    held = db.execute("SELECT count(*) FROM assignments WHERE campaign_id = ? AND annotator_id = ? AND status = 'open'",
                      [campaign_id, annotator_id]).fetchone()[0]
    free = db.execute("SELECT count(*) FROM (" + _CANDIDATE + ")",
                      {"c": campaign_id, "u": annotator_id, "cutoff": cutoff}).fetchone()[0]
    return done, done + held + free


# ---------------------------------------------------------------- votes out: battles, quality, export

def _votes(db, campaign_id: int, gold: bool | None = False) -> list[dict]:
    where = {False: "AND p.gold IS NULL", True: "AND p.gold IS NOT NULL", None: ""}[gold]
    return _rows(db, f"""
        SELECT v.*, p.gold, p.prompt_id, cp.messages_json, ra.model AS model_a, rb.model AS model_b,
               ra.text AS text_a, rb.text AS text_b
        FROM votes v JOIN pairs p ON p.id = v.pair_id JOIN campaign_prompts cp ON cp.id = p.prompt_id
        JOIN responses ra ON ra.id = p.response_a JOIN responses rb ON rb.id = p.response_b
        WHERE v.campaign_id = ? {where} ORDER BY v.cast_at, v.id""", [campaign_id])


def battles(db, name: str | None = None) -> list[dict]:
    """Every non-gold vote as a battle (model_a, model_b, winner, judge, tstamp), for the ratings."""
    campaigns = [get_campaign(db, name)] if name else list_campaigns(db)
    out = []
    for c in campaigns:
        out += [{"model_a": v["model_a"], "model_b": v["model_b"], "winner": WINNER_OF[v["choice"]],
                 "judge": v["annotator"], "tstamp": v["cast_at"], "campaign": c.name}
                for v in _votes(db, c.id)]
    return out


def arena_battles(db, name: str) -> list[dict]:
    """Raw votes in Chatbot Arena's battle format, conversations included."""
    c = get_campaign(db, name)
    out = []
    for v in _votes(db, c.id):
        msgs = json.loads(v["messages_json"])
        out.append({
            "question_id": f"{c.name}:{v['prompt_id']}", "model_a": v["model_a"], "model_b": v["model_b"],
            "winner": WINNER_OF[v["choice"]], "judge": v["annotator"], "tstamp": v["cast_at"],
            "conversation_a": msgs + [{"role": "assistant", "content": v["text_a"]}],
            "conversation_b": msgs + [{"role": "assistant", "content": v["text_b"]}],
            "turn": sum(m["role"] == "user" for m in msgs), "anony": True,
            "strength": STRENGTHS.get(v["strength"]), "seconds": v["seconds"], "left_model": v["left_model"],
        })
    return out


@dataclass
class ExportPolicy:
    """How votes on one pair become one preference row (or none)."""
    min_votes: int = field(default=1, metadata={"help": "Pairs with fewer votes are left out."})
    min_agreement: float = field(default=0.5, metadata={"help": "Least share of a pair's votes that must agree with its majority."})
    drop_ties: bool = field(default=True, metadata={"help": "Leave out pairs whose majority is a tie."})
    drop_both_bad: bool = field(default=True, metadata={"help": "Leave out pairs whose majority is 'both bad'."})


def aggregate(db, name: str, policy: ExportPolicy | None = None) -> tuple[list[dict], dict]:
    """Preference rows in TRL's conversational format, and counts of what the policy kept and left out.

    The winner is the strict majority label; `margin` is the mean vote strength toward the chosen side
    (much = 2, slightly = 1, tie = 0, the other side negative), which TRL's reward trainer can use.
    A kept tie or both-bad pair has margin 0 and its A answer as 'chosen'.
    """
    policy = policy or ExportPolicy()
    c = get_campaign(db, name)
    by_pair: dict[int, list[dict]] = defaultdict(list)
    for v in _votes(db, c.id):
        by_pair[v["pair_id"]].append(v)
    rows, counts = [], defaultdict(int)
    for votes in by_pair.values():
        labels = [v["choice"] for v in votes]
        top = agreement.majority(labels)
        share = labels.count(top) / len(labels) if top else 0.0
        reason = ("too_few_votes" if len(votes) < policy.min_votes else "no_majority" if top is None
                  else "low_agreement" if share < policy.min_agreement
                  else "tie" if top == "tie" and policy.drop_ties
                  else "both_bad" if top == "both_bad" and policy.drop_both_bad else None)
        if reason:
            counts[f"dropped_{reason}"] += 1
            continue
        v0 = votes[0]
        signed = [(v["strength"] or 0) * (1 if v["choice"] == "a" else -1 if v["choice"] == "b" else 0) for v in votes]
        toward_a = sum(signed) / len(signed)
        a_wins = top != "b"
        chosen, rejected = (v0["text_a"], v0["text_b"]) if a_wins else (v0["text_b"], v0["text_a"])
        rows.append({"prompt": json.loads(v0["messages_json"]),
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}],
                     "margin": round(toward_a if top == "a" else -toward_a if top == "b" else 0.0, 4)})
        counts["kept"] += 1
    counts["pairs_with_votes"] = len(by_pair)
    return rows, dict(counts)


def export(db, ws, name: str, fmt: str, out: str | Path, policy: ExportPolicy | None = None,
           register: str | None = None) -> dict:
    """Write `trl` (aggregated preferences) or `battles` (raw votes) as JSONL; optionally register the
    TRL rows as a preference dataset version. Returns what was written."""
    out = workspace.export_target(ws, out)
    if fmt == "trl":
        rows, counts = aggregate(db, name, policy)
    elif fmt == "battles":
        if register:
            raise UserError("--register: only the trl format becomes a dataset")
        rows, counts = arena_battles(db, name), {}
    else:
        raise UserError(f"format {fmt!r}: expected trl or battles")
    workspace.write_export(ws, out, lambda tmp: tmp.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"))
    doc = {"campaign": name, "format": fmt, "out": str(out), "rows": len(rows), **counts}
    if register:
        if not rows:
            raise UserError(f"campaign {name!r}: no pair passed the export policy, so there is nothing to register")
        from core import datasets
        version = datasets.register_rows(db, ws, register, rows, kind="preference", transform="feedback_export",
                                         params=asdict(policy or ExportPolicy()), source=f"campaign:{name}")
        doc["dataset"] = version.ref
    return doc


def quality(db, name: str) -> dict:
    """Agreement, per-annotator figures, position bias, flags, and generation progress for one campaign."""
    c = get_campaign(db, name)
    votes = _votes(db, c.id)
    gold_votes = _votes(db, c.id, gold=True)
    units: dict[int, dict[int, str]] = defaultdict(dict)
    for v in votes:
        units[v["pair_id"]][v["annotator_id"]] = v["choice"]
    annotators = sorted({v["annotator_id"] for v in votes + gold_votes})
    names = {v["annotator_id"]: v["annotator"] for v in votes + gold_votes}

    cohen = None
    if len(annotators) == 2:
        both = [u for u in units.values() if len(u) == 2]
        cohen = agreement.cohen_kappa([u[annotators[0]] for u in both], [u[annotators[1]] for u in both])

    per = []
    for uid in annotators:
        mine = [v for v in votes if v["annotator_id"] == uid]
        compared = agreed = 0
        for v in mine:
            others = [lab for a, lab in units[v["pair_id"]].items() if a != uid]
            top = agreement.majority(others)
            if top is not None:
                compared += 1
                agreed += v["choice"] == top
        golds = [v for v in gold_votes if v["annotator_id"] == uid]
        correct = sum(v["choice"] == v["gold"] for v in golds)
        decided = [v for v in mine if v["choice"] in ("a", "b") and v["left_is_a"] is not None]
        seconds = [v["seconds"] for v in mine + golds if v["seconds"] is not None]
        row = {"annotator": names[uid], "annotator_id": uid, "votes": len(mine), "gold_votes": len(golds),
               "median_seconds": round(statistics.median(seconds), 2) if seconds else None,
               "agreement_with_majority": round(agreed / compared, 4) if compared else None, "compared": compared,
               "gold_accuracy": round(correct / len(golds), 4) if golds else None,
               "left_wins": round(sum(_left_won(v) for v in decided) / len(decided), 4) if decided else None}
        row["flagged"] = bool(
            (compared >= FLAG_MIN_ITEMS and agreed / compared < FLAG_AGREEMENT)
            or (len(golds) >= FLAG_MIN_GOLD and correct / len(golds) < FLAG_GOLD_ACCURACY))
        per.append(row)

    decided = [v for v in votes if v["choice"] in ("a", "b") and v["left_is_a"] is not None]
    counts = {label: sum(v["choice"] == label for v in votes) for label in CHOICES}
    pairs_total, pairs_done = db.execute(
        "SELECT count(*), coalesce(sum(votes_needed IS NOT NULL AND n_votes >= votes_needed), 0) FROM pairs "
        "WHERE campaign_id = ? AND gold IS NULL", [c.id]).fetchone()
    return {
        "campaign": c.name, "status": c.status, "progress": round(c.progress, 4), "progress_message": c.progress_message,
        "error": c.error, "models": c.models, "source": c.source, "judge": c.judge, "overlap": c.overlap,
        "pairs": pairs_total, "pairs_complete": pairs_done,
        "gold_pairs": db.execute("SELECT count(*) FROM pairs WHERE campaign_id = ? AND gold IS NOT NULL",
                                 [c.id]).fetchone()[0],
        "votes": len(votes), "gold_votes": len(gold_votes), "choices": counts, "annotators": len(annotators),
        "cohen_kappa": _round(cohen),
        "krippendorff_alpha": _round(agreement.krippendorff_alpha(units)),
        "percent_agreement": _round(agreement.percent_agreement(units)),
        "left_win_rate": _round(sum(_left_won(v) for v in decided) / len(decided)) if decided else None,
        "per_annotator": per,
        "flagged": [r["annotator"] for r in per if r["flagged"]],
    }


def _left_won(v: dict) -> bool:
    return (v["choice"] == "a") == bool(v["left_is_a"])


def _round(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 4)


# ---------------------------------------------------------------- external judgments in

def _read_records(path: Path) -> list[tuple[int, dict]]:
    """(line or index, record) from a JSON array or a JSONL file."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    text = path.read_text()
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
        return [(i + 1, r) for i, r in enumerate(data)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
    return out


def _conversation_split(conv, where: str) -> tuple[list[dict], str]:
    if not isinstance(conv, list) or not conv or conv[-1].get("role") != "assistant":
        raise UserError(f"{where}: expected a conversation ending with an assistant turn")
    return [{"role": m["role"], "content": m["content"]} for m in conv[:-1]], str(conv[-1]["content"])


def _parse_arena(path: Path) -> list[dict]:
    out = []
    for n, r in _read_records(path):
        where = f"{path} record {n}"
        for k in ("model_a", "model_b", "winner"):
            if k not in r:
                raise UserError(f"{where}: missing field {k!r}")
        if r["winner"] not in CHOICE_OF:
            raise UserError(f"{where}: field 'winner' is {r['winner']!r}; expected one of {', '.join(CHOICE_OF)}")
        if "conversation_a" in r:
            prompt, text_a = _conversation_split(r["conversation_a"], f"{where} field 'conversation_a'")
            prompt_b, text_b = _conversation_split(r.get("conversation_b"), f"{where} field 'conversation_b'")
            if prompt_b != prompt:
                raise UserError(f"{where}: conversation_a and conversation_b have different prompts")
        elif all(k in r for k in ("prompt", "response_a", "response_b")):
            prompt, text_a, text_b = _as_messages(r["prompt"]), _text(r["response_a"]), _text(r["response_b"])
        else:
            raise UserError(f"{where}: needs conversation_a/conversation_b or prompt/response_a/response_b")
        out.append({"prompt": prompt, "model_a": r["model_a"], "model_b": r["model_b"], "text_a": text_a,
                    "text_b": text_b, "choice": CHOICE_OF[r["winner"]], "strength": None, "left_is_a": True,
                    "judge": str(r.get("judge") or path.stem), "tstamp": float(r.get("tstamp") or time.time())})
    return out


def _parse_alpaca_eval(path: Path) -> tuple[list[dict], int]:
    """AlpacaEval annotations: preference 1 (output_1 wins), 2 (output_2 wins), fractional in between
    (1.5 is a tie; nearer 1 or 2 leans that way, strength 'much' beyond 0.25 from the middle), 0 a
    draw in older files, null no judgment (skipped and counted)."""
    out, skipped = [], 0
    for n, r in _read_records(path):
        where = f"{path} record {n}"
        for k in ("instruction", "output_1", "output_2", "preference"):
            if k not in r:
                raise UserError(f"{where}: missing field {k!r}")
        pref = r["preference"]
        if pref is None or (isinstance(pref, float) and math.isnan(pref)):
            skipped += 1
            continue
        try:
            pref = float(pref)
        except (TypeError, ValueError):
            raise UserError(f"{where}: field 'preference' is {pref!r}; expected 1, 2, a number between, or null") from None
        if pref == 0:
            choice, strength = "tie", None
        elif not 1 <= pref <= 2:
            raise UserError(f"{where}: field 'preference' is {pref}; expected 1, 2, a number between, or null")
        else:
            lean = pref - 1.5   # below 0 leans to output_1
            choice = "tie" if abs(lean) < 1e-9 else "a" if lean < 0 else "b"
            strength = None if choice == "tie" else 2 if abs(lean) >= 0.25 else 1
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        out.append({"prompt": _as_messages(prompt), "model_a": str(r.get("generator_1") or "output_1"),
                    "model_b": str(r.get("generator_2") or "output_2"), "text_a": str(r["output_1"]),
                    "text_b": str(r["output_2"]), "choice": choice, "strength": strength, "left_is_a": None,
                    "judge": str(r.get("annotator") or path.stem), "tstamp": time.time()})
    return out, skipped


def import_judgments(db, path: str | Path, fmt: str, name: str) -> dict:
    """Bring in Arena battles or AlpacaEval annotations as (or into) an imported campaign.

    Identical (prompt, answers, models) share one pair, so several judges of the same comparison
    count toward agreement. Each judge name becomes one annotator with a negative id.
    """
    path = Path(path)
    if fmt == "arena":
        records, skipped = _parse_arena(path), 0
    elif fmt == "alpaca_eval":
        records, skipped = _parse_alpaca_eval(path)
    else:
        raise UserError(f"format {fmt!r}: expected arena or alpaca_eval")
    if not records:
        raise UserError(f"{path}: no judgments to import")
    with dbmod.transaction(db):
        row = db.execute("SELECT id, source FROM campaigns WHERE name = ?", [name]).fetchone()
        if row and not row[1].startswith("import:"):
            raise UserError(f"campaign {name!r} was generated here; import into a new campaign name")
        models = sorted({r["model_a"] for r in records} | {r["model_b"] for r in records})
        if row:
            cid = row[0]
            known = json.loads(db.execute("SELECT models_json FROM campaigns WHERE id = ?", [cid]).fetchone()[0])
            db.execute("UPDATE campaigns SET models_json = ? WHERE id = ?", [json.dumps(sorted(set(known) | set(models))), cid])
        else:
            cid = _insert_campaign(db, name, f"import:{fmt}", models, CampaignConfig(samples=1, overlap=1), {},
                                   f"{fmt}:{path.name}", "ready", None)
            db.execute("UPDATE campaigns SET progress = 1, progress_message = 'imported' WHERE id = ?", [cid])
        judge_ids = {r[1]: r[0] for r in db.execute(
            "SELECT DISTINCT annotator_id, annotator FROM votes WHERE campaign_id = ?", [cid])}
        next_id = min([0, *judge_ids.values()]) - 1
        prompt_ids = {r[1]: r[0] for r in db.execute(
            "SELECT id, messages_json FROM campaign_prompts WHERE campaign_id = ?", [cid])}
        idx = len(prompt_ids)
        added = updated = 0
        for r in records:
            key = json.dumps(r["prompt"])
            if key not in prompt_ids:
                prompt_ids[key] = db.execute("INSERT INTO campaign_prompts(campaign_id, idx, messages_json) "
                                             "VALUES (?, ?, ?)", [cid, idx, key]).lastrowid
                idx += 1
            pid = prompt_ids[key]
            ra, rb = _response_id(db, pid, r["model_a"], r["text_a"]), _response_id(db, pid, r["model_b"], r["text_b"])
            pair = db.execute("SELECT id FROM pairs WHERE response_a = ? AND response_b = ?", [ra, rb]).fetchone()
            pair_id = pair[0] if pair else _insert_pair(db, cid, pid, ra, rb, None, None, random.random())
            if r["judge"] not in judge_ids:
                judge_ids[r["judge"]], next_id = next_id, next_id - 1
            uid = judge_ids[r["judge"]]
            existed = db.execute("SELECT 1 FROM votes WHERE pair_id = ? AND annotator_id = ?", [pair_id, uid]).fetchone()
            db.execute(
                "INSERT INTO votes(pair_id, campaign_id, annotator_id, annotator, choice, strength, left_is_a, "
                "left_model, shown_at, cast_at, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, NULL) "
                "ON CONFLICT(pair_id, annotator_id) DO UPDATE SET choice = excluded.choice, "
                "strength = excluded.strength, cast_at = excluded.cast_at",
                [pair_id, cid, uid, r["judge"], r["choice"], r["strength"], r["left_is_a"],
                 r["model_a"] if r["left_is_a"] else None, r["tstamp"]])
            if existed:
                updated += 1
            else:
                added += 1
                db.execute("UPDATE pairs SET n_votes = n_votes + 1 WHERE id = ?", [pair_id])
    return {"campaign": name, "format": fmt, "votes_added": added, "votes_updated": updated, "skipped": skipped}


def _response_id(db, prompt_id: int, model: str, text: str) -> int:
    row = db.execute("SELECT id FROM responses WHERE prompt_id = ? AND model = ? AND text = ?",
                     [prompt_id, model, text]).fetchone()
    if row:
        return row[0]
    sample = db.execute("SELECT coalesce(max(sample), -1) + 1 FROM responses WHERE prompt_id = ? AND model = ?",
                        [prompt_id, model]).fetchone()[0]
    return db.execute("INSERT INTO responses(prompt_id, model, sample, text, settings_json, seed, created_at) "
                      "VALUES (?, ?, ?, ?, '{}', NULL, ?)", [prompt_id, model, sample, text, time.time()]).lastrowid

