"""Generation: the models answer a campaign's prompts in a `generate` job, then the pairs are built.

`start_generation` queues the job (core/jobs.py, local or on Ray, in the queue shared with training
and evals); its process runs `run_job`, which samples N answers per prompt and model in batches and
reports progress in the job folder's status.json. Answers are stored as each (model, sample) ends,
so a restarted job resumes. Pairs are then built per prompt across models; each pair wants K votes.

On a Ray cluster that shares no disk with the studio (the ray_storage setting), core/remote.py ships the
job's `generation_plan` (prompts, settings, model folders), the job sends each (model, sample)'s answers
back through storage, and the studio stores them and builds the pairs (`store_answers`) when it ends.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

from tunelab import db as dbmod, folders, workspace
from tunelab.errors import UserError
from tunelab.feedback.campaigns import Campaign, get_campaign, insert_pair, insert_response, prompts
from tunelab.generate import SamplingSettings
from tunelab.models import ModelSpec

Progress = Callable[[float, str], None]


def start_generation(db, ws, name: str, backend: str = "local", ray_address: str | None = None):
    """Queue the campaign's generation as a `generate` job (core/jobs.py), in the queue shared with
    training and evals, on this machine or a Ray cluster; a failed or stopped one starts over, keeping
    the answers already stored. Returns the job."""
    from tunelab import jobs
    c = get_campaign(db, name)
    if c.status == "generating":
        raise UserError(f"campaign {name!r} is already generating")
    if c.status == "ready":
        raise UserError(f"campaign {name!r} is ready; its answers are generated")
    job = jobs.find(db, "generate", c.name)
    if job is not None:
        return jobs.requeue(db, job.id)
    if backend == "ray":
        from tunelab import ray_backend
        ray_address = ray_backend.check_address(ray_address)[0]
    folder = workspace.inside(ws.home / "campaigns", ws.home / "campaigns" / workspace.check_name(c.name, "campaign"))
    return jobs.submit(db, "generate", c.name, folder, backend, ray_address,
                       {"num_cpus": 1} if backend == "ray" else None)


def wait_generation(db, name: str, progress: Progress | None = None, poll_s: float = 0.5,
                    timeout_s: float | None = None) -> Campaign:
    """Block until generation ends, relaying its progress; raises UserError if it did not complete, and
    TimeoutError after `timeout_s`."""
    from tunelab import jobs
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
    """Sample every missing (model, sample) over all prompts, store the answers, then build the pairs.

    Runs in the `generate` job's process (run_job), which records the outcome. Answers already stored are
    kept, so a restarted job resumes.
    """
    from tunelab import generate
    c = get_campaign(db, name)

    def store(spec: str, sample: int, prompt_ids: list[int], texts: list[str], settings: SamplingSettings) -> None:
        store_responses(db, c, spec, sample, prompt_ids, texts, settings)
    generate.answer_plan(generation_plan(db, ws, name), store, progress, batch_size)
    n = build_pairs(db, c)
    if progress:
        progress(1.0, f"{n} pairs ready")


def generation_plan(db, ws, name: str) -> dict:
    """What the campaign's generation reads, as plain values and paths (generate.answer_plan samples it;
    core/remote.py ships it to a cluster without the workspace): the prompts (id, messages), the sampling
    settings, and per model that still lacks answers its folders and the sample indices to make."""
    c = get_campaign(db, name)
    items = prompts(db, c)
    models = []
    for u, spec in enumerate(c.models):
        todo = [s for s in range(c.samples) if _missing(db, c, spec, s, len(items))]
        if todo:
            path, adapter = ModelSpec.parse(spec).folders(db, ws)
            models.append({"spec": spec, "index": u, "model": path, "adapter": adapter, "samples": todo})
    return {"settings": c.settings, "prompts": items, "samples": c.samples, "n_models": len(c.models),
            "models": models}


def store_answers(db, name: str, answers: list[dict], complete: bool) -> int | None:
    """Store answers that a job on a cluster sent back (each {model, sample, prompt_ids, texts, settings}),
    and once the job `complete`d build the pairs; returns their number then."""
    c = get_campaign(db, name)
    for a in answers:
        store_responses(db, c, a["model"], int(a["sample"]), a["prompt_ids"], a["texts"],
                        SamplingSettings(**a["settings"]))
    return build_pairs(db, c) if complete else None


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
            insert_response(db, pid, model, sample, text, settings, now)


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
                        insert_pair(db, campaign.id, pid, ra, rb, campaign.overlap, None, rng.random())
                        n += 1
        db.execute("UPDATE campaigns SET status = 'ready', progress = 1, progress_message = ? WHERE id = ?",
                   [f"{n} pairs ready", campaign.id])
    return n
