"""Campaigns: what is compared (prompts, models, overlap) and the rows every other part writes into.

A campaign row says `pending` or `ready`; its generation job (core/jobs.py) says the rest, so reading
a campaign joins the two and changes nothing. The INSERTs of a campaign, a prompt, a response and a
pair live here, one function each, for generation, gold pairs and imports alike.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field

from tunelab import db as dbmod, folders, workspace
from tunelab.errors import UserError
from tunelab.generate import SamplingSettings
from tunelab.models import ModelSpec

GOLD_MODEL = "gold"  # the `model` of a gold pair's two answers


@dataclass
class CampaignConfig:
    """What a campaign compares and how many votes it wants; the CLI flags and the page form come from here."""
    samples: int = field(default=1, metadata={"help": "Answers sampled per prompt and model; pairs are built per sample."})
    overlap: int = field(default=3, metadata={"help": "Annotators who vote on each pair (K), for agreement."})
    guidelines: str = field(default="", metadata={"help": "Instructions shown to annotators (markdown)."})
    sampling: str = field(default="active", metadata={
        "help": "How the next pair is chosen: 'active' favours the model pairs whose rating intervals overlap, "
                "near the top first (fewer votes to a settled ranking); 'uniform' hands pairs out in random order.",
        "choices": ("active", "uniform")})


@dataclass
class Campaign:
    id: int
    name: str
    source: str
    models: list[str]
    samples: int
    overlap: int
    sampling: str
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
                   samples=row["samples"], overlap=row["overlap"], sampling=row["sampling"],
                   settings=json.loads(row["settings_json"]),
                   guidelines=row["guidelines"], judge=row["judge"], status=row["status"],
                   progress=row["progress"], progress_message=row["progress_message"], pid=row["pid"],
                   error=row["error"], created_at=row["created_at"])


def rows(db, sql: str, params=()) -> list[dict]:
    cur = db.execute(sql, list(params))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


# A campaign row says pending or ready; its generation job (core/jobs.py) says the rest.
_SELECT = ("SELECT c.*, j.status AS job_status, j.pid, j.error, j.folder AS job_folder FROM campaigns c "
           "LEFT JOIN jobs j ON j.kind = 'generate' AND j.target = c.name")


def get_campaign(db, name: str) -> Campaign:
    """Changes nothing: `jobs.reconcile` notices a generation process that died."""
    found = rows(db, f"{_SELECT} WHERE c.name = ?", [name])
    if not found:
        known = ", ".join(r[0] for r in db.execute("SELECT name FROM campaigns ORDER BY name").fetchall())
        raise UserError(f"campaign {name!r} does not exist; known campaigns: {known or '(none)'}")
    return _campaign(db, found[0])


def list_campaigns(db) -> list[Campaign]:
    return [_campaign(db, r) for r in rows(db, f"{_SELECT} ORDER BY c.created_at DESC")]


def _campaign(db, row: dict) -> Campaign:
    """Generating while its job is queued or running (progress from the job's status.json), failed with
    the job's error if the job ended any other way before the pairs were built."""
    from tunelab import jobs
    job, folder = row.pop("job_status"), row.pop("job_folder")
    if row["status"] != "ready" and job in jobs.ACTIVE:
        report = folders.read_status(jobs.home(db) / folder) if job == "running" else {}
        row.update(status="generating", progress=float(report.get("progress") or 0.0),
                   progress_message=report.get("phase") or job)
    elif row["status"] != "ready" and job is not None and job != "completed":
        row.update(status="failed", error=row["error"] or f"the generation job was {job}")
    return Campaign.from_row(row)


def as_messages(prompt) -> list[dict]:
    """A prompt given as text or as a list of {role, content} messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return prompt
    raise UserError(f"prompt {str(prompt)[:80]!r}: expected text or a list of {{role, content}} messages")


def as_text(value) -> str:
    """An answer given as text or as assistant messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    raise UserError(f"answer {str(value)[:80]!r}: expected text or a list of messages")


def create_campaign(db, ws, name: str, models: list[str], *, prompts: list | None = None,
                    dataset: str | None = None, config: CampaignConfig | None = None,
                    settings: SamplingSettings | None = None, created_by: int | None = None) -> Campaign:
    """Record a campaign and its prompts (from a dataset ref, or given: pasted or read from a file by
    `datasets.read_prompts`). Generation is separate."""
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
    if config.sampling not in ("active", "uniform"):
        raise UserError(f"sampling {config.sampling!r}: expected active or uniform")
    if config.samples > 1 and settings.temperature <= 0:
        raise UserError("temperature: must be above 0 when samples > 1, or every sample is the same answer")
    if (prompts is None) == (dataset is None):
        raise UserError("prompts: give either a dataset (name or name@version) or pasted prompts")
    if dataset is not None:
        from tunelab import datasets
        version = datasets.resolve(db, ws, dataset)
        messages = datasets.prompts_of(version)
        source = f"dataset:{version.ref}"
    else:
        messages = [as_messages(p) for p in prompts if not (isinstance(p, str) and not p.strip())]
        source = "pasted"
    if not messages:
        raise UserError(f"prompts: {source} has no prompts")
    if db.execute("SELECT 1 FROM campaigns WHERE name = ?", [name]).fetchone():
        raise UserError(f"campaign {name!r} already exists")
    with dbmod.transaction(db):
        cid = insert_campaign(db, name, source, models, config, settings.to_dict(), None, "pending", created_by)
        for i, m in enumerate(messages):
            insert_prompt(db, cid, i, m)
    return get_campaign(db, name)


def prompts(db, campaign: Campaign) -> list[tuple[int, list[dict]]]:
    """The prompts the models answer (gold prompts come with their answers)."""
    return [(r[0], json.loads(r[1])) for r in db.execute(
        "SELECT id, messages_json FROM campaign_prompts WHERE campaign_id = ? AND NOT gold ORDER BY idx",
        [campaign.id])]


def add_gold(db, name: str, rows: list[dict], source: str = "gold") -> int:
    """Add gold pairs from preference rows (prompt, chosen, rejected): the known answer is 'chosen'.

    They get random positions among the other pairs and random A/B order, and every annotator sees
    each once, so they cannot be told apart from the rest. A file's rows come through
    `add_gold_file`, which reads and checks them as dataset import does.
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
            pid = insert_prompt(db, c.id, idx + i, as_messages(row["prompt"]), gold=True)
            chosen, rejected = [insert_response(db, pid, GOLD_MODEL, sample, as_text(row[key]))
                                for sample, key in enumerate(("chosen", "rejected"))]
            if rng.random() < 0.5:
                insert_pair(db, c.id, pid, chosen, rejected, None, "a", rng.random())
            else:
                insert_pair(db, c.id, pid, rejected, chosen, None, "b", rng.random())
    return len(rows)


def add_gold_file(db, name: str, path, source_name: str | None = None) -> int:
    """Gold pairs from a preference file in any format import reads (JSONL, JSON, CSV, Parquet); a bad
    record raises a UserError naming the file (`source_name`, for an upload) and its line."""
    from tunelab import datasets
    rows = datasets.read_rows(path, "preference", source_name)
    return add_gold(db, name, rows, source=source_name or str(path))


# ---------------------------------------------------------------- the one INSERT of each row

def insert_campaign(db, name, source, models, config, settings, judge, status, created_by) -> int:
    workspace.check_name(name, "campaign")  # it names export files (the Register button)
    cur = db.execute(
        "INSERT INTO campaigns(name, source, models_json, samples, overlap, sampling, settings_json, guidelines, "
        "judge, status, progress, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
        [name, source, json.dumps(models), config.samples, config.overlap, config.sampling, json.dumps(settings),
         config.guidelines, judge, status, created_by, time.time()])
    return cur.lastrowid


def insert_prompt(db, campaign_id: int, idx: int, messages: list[dict], gold: bool = False) -> int:
    return db.execute("INSERT INTO campaign_prompts(campaign_id, idx, messages_json, gold) VALUES (?, ?, ?, ?)",
                      [campaign_id, idx, json.dumps(messages), gold]).lastrowid


def insert_response(db, prompt_id: int, model: str, sample: int, text: str,
                    settings: SamplingSettings | None = None, now: float | None = None) -> int:
    """Store an answer, or replace the one stored for (prompt, model, sample): a resumed generation
    writes its sample again. `settings` (and their seed) are what generated it; none for gold and
    imported answers."""
    return db.execute(
        "INSERT INTO responses(prompt_id, model, sample, text, settings_json, seed, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(prompt_id, model, sample) DO UPDATE SET "
        "text = excluded.text, settings_json = excluded.settings_json, seed = excluded.seed RETURNING id",
        [prompt_id, model, sample, text, json.dumps(settings.to_dict() if settings else {}),
         settings.seed if settings else None, time.time() if now is None else now]).fetchone()[0]


def insert_pair(db, campaign_id, prompt_id, response_a, response_b, votes_needed, gold, position) -> int:
    """`votes_needed` None: any number of annotators (gold and imported pairs); `gold` 'a' or 'b' is
    the known better side; `position` orders the pairs as annotators meet them."""
    return db.execute("INSERT INTO pairs(campaign_id, prompt_id, response_a, response_b, gold, votes_needed, "
                      "position) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      [campaign_id, prompt_id, response_a, response_b, gold, votes_needed, position]).lastrowid
