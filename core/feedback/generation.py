"""Generation: the models answer a campaign's prompts in a `generate` job, then the pairs are built.

`start_generation` queues the job (core/jobs.py, local or on Ray, in the queue shared with training
and evals); its process runs `run_job`, which samples N answers per prompt and model in batches and
reports progress in the job folder's status.json. Answers are stored as each (model, sample) ends,
so a restarted job resumes. Pairs are then built per prompt across models; each pair wants K votes.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict
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
    """Sample every (model, sample) over all prompts, store the answers, then build the pairs.

    Runs in the `generate` job's process (run_job), which records the outcome. Answers already stored are
    kept, so a restarted job resumes.
    """
    import gc

    from tunelab import generate
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
