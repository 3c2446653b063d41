"""Judges: a model votes on a campaign's pairs as a non-human annotator, in a background `judge` job.

Three kinds, each named on the command line by a SPEC (`tunelab feedback judge CAMPAIGN --judge SPEC`):
- `reward:RUN_ID`, a tunelab reward model (a completed `method: reward` run). It scores each answer
  alone; the verdict comes from the margin reward(a) - reward(b): 'tie' when |margin| < `tie_band`
  (DEFAULT_TIE_BAND), else the higher side. `first_a`/`first_b` stay NULL: it reads no order.
- `chat:MODEL_SPEC`, a chat model registered here (`NAME` or `NAME+RUN_ID`), prompted with TEMPLATE.
- `endpoint:BASE_URL`, any OpenAI-compatible server (`model`, and `api_key_env`: the name of the
  environment variable that holds the key, which must start with TUNELAB_JUDGE_; the key itself is
  never stored; none for a server that needs no key). BASE_URL is what the OpenAI client takes, e.g.
  http://localhost:8000/v1.

The chat and endpoint judges ask TEMPLATE twice per pair, once with the pair's answer a shown as "A"
and once with b shown as "A", to cancel position bias. Each order's verdict is mapped back to pair
terms (`first_a`, `first_b`); the final choice is their agreement, and 'tie' when they disagree. The
margin is P(a better) - P(b better), averaged over the two orders: read from the next-token
probabilities of the options A, B and tie (renormalised over the three) for a chat model and for an
endpoint that returns logprobs; otherwise parsed from the reply's text, where A counts as probability
1. A reply that names no option is the documented fallback: that order counts as 'tie' (probability 0
either way) and is counted as `unparsed` in the job's report (report.json in the job folder), so a
judge that cannot follow the template shows up as one, not as a confident judge of ties.

TEMPLATE, below, is the user turn sent to the judge (the README and the Feedback page's Judges box
show it).

A judge's verdicts go to `judgments` (tunelab.feedback.judgments), never to people's `votes`. The job
(kind 'judge', target 'CAMPAIGN/JUDGE') writes them a batch at a time, so a stopped or failed job
started again skips the pairs already judged.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from tunelab import db as dbmod, folders, workspace
from tunelab.errors import UserError
from tunelab.feedback.campaigns import get_campaign, rows
from tunelab.feedback.judgments import KINDS, Judge, get_judge, insert_judge, judgment_rows, list_judges, \
    write_judgment
from tunelab.feedback.panel import position_consistency

Progress = Callable[[float, str], None]

TEMPLATE = """You are judging two answers to the same prompt. Decide which answer is better: more helpful, \
more correct and clearer. Ignore which answer comes first and how long each is.

[Prompt]
{prompt}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Reply with exactly one word: A if answer A is better, B if answer B is better, or tie if they are equally good."""
OPTIONS = ("A", "B", "tie")  # what the template asks for, in the order of the probabilities below
# A reward model trained on pairs (Bradley-Terry) puts P(a better) = sigmoid(margin): a margin under 0.1
# means under 52.5% either way, which is no preference worth a vote.
DEFAULT_TIE_BAND = 0.1
# The judge may only read a key from a variable with this prefix: the spec comes from a form on a network
# server, and any other name could send one of the server's own secrets to a URL of the form's choosing.
KEY_ENV_PREFIX = "TUNELAB_JUDGE_"
BATCH = 8                 # pairs judged (and written) together; a restarted job loses at most one batch
ENDPOINT_THREADS = 8      # requests in flight to an endpoint at once
ENDPOINT_MAX_TOKENS = 16  # one word is asked for; a little room lets a chatty reply still be parsed
ENDPOINT_TIMEOUT_S = 120.0


# ---------------------------------------------------------------- specs

def make_spec(kind: str, value: str, *, tie_band: float | None = None, model: str | None = None,
              api_key_env: str | None = None) -> dict:
    """The spec stored with a judge, from the CLI's or the form's fields; a UserError names the bad field.
    `value` is the reward run id, the chat model spec, or the endpoint's base URL."""
    from tunelab.models import ModelSpec
    value = (value or "").strip()
    if kind not in KINDS:
        raise UserError(f"judge kind {kind!r}: expected one of {', '.join(KINDS)} (SPEC is KIND:VALUE)")
    if tie_band is not None and kind != "reward":
        raise UserError("tie band: only a reward judge has one (chat and endpoint judges tie when the two orders "
                        "disagree)")
    if kind != "endpoint" and (model or api_key_env):
        raise UserError(f"{'endpoint model' if model else 'api key env'}: only an endpoint judge takes it")
    if not value:
        raise UserError({"reward": "reward run: the run id is empty (reward:RUN_ID)",
                         "chat": "chat model: the model spec is empty (chat:NAME or chat:NAME+RUN_ID)",
                         "endpoint": "endpoint base_url: empty (endpoint:http://HOST:PORT/v1)"}[kind])
    if kind == "reward":
        band = DEFAULT_TIE_BAND if tie_band is None else float(tie_band)
        if not math.isfinite(band) or band < 0:
            raise UserError(f"tie band: must be a number of at least 0, got {tie_band}")
        return {"run": workspace.check_name(value, "reward run"), "tie_band": band}
    if kind == "chat":
        return {"model": str(ModelSpec.parse(value))}
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise UserError(f"endpoint base_url {value!r}: expected http://HOST[:PORT]/PATH, e.g. http://localhost:8000/v1")
    if not (model or "").strip():
        raise UserError("endpoint model: give the model name the server knows (--endpoint-model)")
    if api_key_env is not None and not re.fullmatch(re.escape(KEY_ENV_PREFIX) + r"[A-Z0-9_]+", api_key_env):
        raise UserError(f"api key env {api_key_env!r}: the key must come from a variable named "
                        f"{KEY_ENV_PREFIX}SOMETHING (upper case), e.g. {KEY_ENV_PREFIX}OPENAI_KEY")
    return {"base_url": value.rstrip("/"), "model": model.strip(), "api_key_env": api_key_env}


def parse_spec(text: str, *, tie_band: float | None = None, model: str | None = None,
               api_key_env: str | None = None) -> tuple[str, dict]:
    """(kind, spec) from the CLI's `KIND:VALUE`: reward:RUN_ID, chat:MODEL_SPEC or endpoint:BASE_URL."""
    kind, sep, value = (text or "").strip().partition(":")
    if not sep:
        raise UserError(f"judge spec {text!r}: expected reward:RUN_ID, chat:MODEL_SPEC or endpoint:BASE_URL")
    return kind, make_spec(kind, value, tie_band=tie_band, model=model, api_key_env=api_key_env)


def default_name(kind: str, spec: dict) -> str:
    """A judge's name when none is given: the kind and what it runs, fit for a folder name."""
    what = {"reward": spec.get("run"), "chat": spec.get("model"), "endpoint": spec.get("model")}[kind] or ""
    return f"{kind}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', what).strip('-.')}"[:100].rstrip("-.")


def check_spec(db, ws, kind: str, spec: dict) -> None:
    """Refuse, before a job starts, what would fail in it: a run that is not a completed reward model, a
    model that cannot answer, an endpoint variable that is unset, a server that does not answer."""
    if kind == "reward":
        from tunelab.train import reward
        try:
            reward.reward_dir(ws, spec["run"])
        except UserError as exc:
            raise UserError(f"reward run {spec['run']!r}: {exc}") from None
    elif kind == "chat":
        from tunelab.models import ModelSpec
        ModelSpec.parse(spec["model"]).check(db, ws)
    else:
        allowed = str(workspace.get_setting(db, "judge_endpoints")).split()
        if spec["base_url"] not in (url.rstrip("/") for url in allowed):
            raise UserError(f"endpoint base_url {spec['base_url']}: not one of the endpoints an admin allowed "
                            f"(setting judge_endpoints, on the Admin page: {' '.join(allowed) or 'none yet'}); a "
                            "judge sends the campaign's answers, and a key, to its endpoint")
        import openai
        try:
            _client(spec).with_options(timeout=10.0, max_retries=0).models.list()
        except openai.AuthenticationError as exc:
            raise UserError(f"api key env {spec['api_key_env'] or '(none given)'}: the server at "
                            f"{spec['base_url']} refused the key ({exc.status_code})") from None
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            # The reply itself is not quoted: it could be any internal service's page.
            raise UserError(f"endpoint base_url {spec['base_url']}: the server does not answer as an "
                            f"OpenAI-compatible one ({type(exc).__name__})") from None


def _client(spec: dict):
    """The official OpenAI client for an endpoint spec, its key read from the environment now."""
    from openai import OpenAI
    var = spec.get("api_key_env")
    if var is None:
        key = "none"  # servers that need no key (vLLM, transformers serve) still want the header
    else:
        key = os.environ.get(var)
        if not key:
            raise UserError(f"api key env {var}: the environment variable is not set (export {var}=... where "
                            "tunelab runs)")
    return OpenAI(base_url=spec["base_url"], api_key=key, timeout=ENDPOINT_TIMEOUT_S)


# ---------------------------------------------------------------- starting and watching the job

def _target(campaign: str, judge: str) -> str:
    return f"{campaign}/{judge}"  # both pass workspace.check_name, so '/' splits them back


def start_judge(db, ws, campaign: str, kind: str, spec: dict, name: str | None = None):
    """Record the judge (or find the same one under that name) and queue its `judge` job; a stopped or
    failed one starts again and skips the pairs already judged. Returns the job."""
    from tunelab import jobs
    c = get_campaign(db, campaign)
    pairs = _pair_count(db, c.id)
    if not pairs:
        raise UserError(f"campaign {c.name!r} has no pairs to judge yet ({c.status})")
    name = workspace.check_name((name or default_name(kind, spec)).strip(), "judge")
    check_spec(db, ws, kind, spec)
    judge = insert_judge(db, c.id, name, kind, spec)
    job = jobs.find(db, "judge", _target(c.name, judge.name))
    if job is None:
        campaigns = ws.home / "campaigns"
        folder = workspace.inside(campaigns, campaigns / workspace.check_name(c.name, "campaign") / "judges"
                                  / judge.name)
        return jobs.submit(db, "judge", _target(c.name, judge.name), folder)
    if job.status in jobs.ACTIVE:
        return job
    if job.status == "completed":
        left = pairs - len(judgment_rows(db, c.id, judge.name))
        if left:
            raise UserError(f"judge {judge.name!r} finished before {left} pairs were added; judge them under "
                            "another --name")
        return job
    return jobs.requeue(db, job.id)


def judge_job(db, campaign: str, name: str):
    """The judge's job, or None if it never started."""
    from tunelab import jobs
    return jobs.find(db, "judge", _target(get_campaign(db, campaign).name, name))


def wait_judge(db, campaign: str, name: str, progress: Progress | None = None, poll_s: float = 0.5,
               timeout_s: float | None = None) -> dict:
    """Block until the judge's job ends, relaying progress; its summary, or a UserError if it did not complete."""
    from tunelab import jobs
    job = judge_job(db, campaign, name)
    if job is None:
        raise UserError(f"judge {name!r} of campaign {campaign!r} has no job; start it first")
    job = jobs.wait(db, job.id, progress, timeout_s, poll_s)
    if job.status != "completed":
        raise UserError(f"judge {name!r}: its job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))
    return judge_summary(db, campaign, name)


def judge_summary(db, campaign: str, name: str) -> dict:
    """What a judge has done: pairs judged of all, verdict counts, the share of pairs judged the same in both
    orders (chat and endpoint judges), replies that named no option, and its job's state."""
    c = get_campaign(db, campaign)
    judge = get_judge(db, c.id, name)
    found = judgment_rows(db, c.id, name)
    job = judge_job(db, campaign, name)
    report = _read_report(job.path) if job else {}
    return {"campaign": c.name, "judge": judge.name, "kind": judge.kind, "spec": judge.spec,
            "pairs": _pair_count(db, c.id), "judged": len(found),
            "choices": {k: v for k, v in Counter(r["choice"] for r in found).most_common()},
            "position_consistent": position_consistency(found),
            "asked": report.get("asked", 0), "unparsed": report.get("unparsed", 0),
            "job": job.id if job else None, "status": job.status if job else None,
            "progress": (1.0 if job.status == "completed" else float(job.progress().get("progress") or 0.0))
            if job else 0.0, "message": job.message() if job else None, "error": job.error if job else None}


def judges_overview(db, campaign: str) -> list[dict]:
    """Every judge of the campaign with its summary, oldest first (the Feedback page's Judges box)."""
    return [judge_summary(db, campaign, j.name) for j in list_judges(db, get_campaign(db, campaign).id)]


# ---------------------------------------------------------------- the job's own process

def run_job(db, ws, target: str, folder: Path) -> tuple[str, str | None]:
    """The `judge` job's entry point: progress goes to status.json, counts to report.json."""
    campaign, _, name = target.partition("/")
    c = get_campaign(db, campaign)
    judge_pairs(db, ws, get_judge(db, c.id, name), Path(folder), folders.progress_writer(Path(folder)))
    return "completed", None


def _pair_count(db, campaign_id: int) -> int:
    return db.execute("SELECT count(*) FROM pairs WHERE campaign_id = ? AND gold IS NULL",
                      [campaign_id]).fetchone()[0]


def _todo(db, judge: Judge) -> list[dict]:
    """The campaign's non-gold pairs this judge has not judged, with prompt and answers."""
    return rows(db, """
        SELECT p.id, cp.messages_json, ra.text AS text_a, rb.text AS text_b FROM pairs p
        JOIN campaign_prompts cp ON cp.id = p.prompt_id
        JOIN responses ra ON ra.id = p.response_a JOIN responses rb ON rb.id = p.response_b
        WHERE p.campaign_id = ? AND p.gold IS NULL
          AND NOT EXISTS (SELECT 1 FROM judgments j WHERE j.pair_id = p.id AND j.judge_id = ?)
        ORDER BY p.id""", [judge.campaign_id, judge.id])


def _read_report(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "report.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def judge_pairs(db, ws, judge: Judge, folder: Path, progress: Progress | None = None) -> dict:
    """Judge every pair this judge has not judged yet, writing each batch's verdicts in one transaction and
    the running counts (asked, unparsed) to `folder`/report.json. Returns those counts."""
    todo = _todo(db, judge)
    total = _pair_count(db, judge.campaign_id)
    done = total - len(todo)
    report = {"asked": 0, "unparsed": 0, **_read_report(folder)}
    say = progress or (lambda f, m: None)
    say(done / max(total, 1), f"loading the {judge.kind} judge")
    verdicts = {"reward": _reward_judge, "chat": _chat_judge, "endpoint": _endpoint_judge}[judge.kind](db, ws, judge)
    for start in range(0, len(todo), BATCH):
        batch = todo[start:start + BATCH]
        prompts = [json.loads(p["messages_json"]) for p in batch]
        found = verdicts(prompts, [p["text_a"] for p in batch], [p["text_b"] for p in batch])
        with dbmod.transaction(db):
            for pair, (choice, margin, first_a, first_b, unparsed) in zip(batch, found):
                write_judgment(db, judge, pair["id"], choice, margin, first_a, first_b)
                report["asked"] += 0 if first_a is None else 2
                report["unparsed"] += unparsed
        folders.write_json_atomic(Path(folder) / "report.json", report)
        done += len(batch)
        say(done / max(total, 1), f"{done}/{total} pairs judged")
    unparsed = f"; {report['unparsed']} replies named no option" if report["unparsed"] else ""
    say(1.0, f"{total} pairs judged{unparsed}")
    return report


# ---------------------------------------------------------------- verdicts
# Each judge kind gives a function (prompts, answers a, answers b) -> one
# (choice, margin, first_a, first_b, unparsed replies) per pair.

def _reward_judge(db, ws, judge: Judge):
    from tunelab import evaluate
    from tunelab.train import reward
    model, tokenizer = reward.load(db, ws, judge.spec["run"])
    band = float(judge.spec.get("tie_band", DEFAULT_TIE_BAND))

    def verdicts(prompts, answers_a, answers_b):
        scores = evaluate.reward_scores(model, tokenizer, prompts + prompts, answers_a + answers_b, BATCH)
        out = []
        for ra, rb in zip(scores[:len(prompts)], scores[len(prompts):]):
            margin = ra - rb
            out.append(("tie" if abs(margin) < band else "a" if margin > 0 else "b", margin, None, None, 0))
        return out
    return verdicts


def prompt_text(messages: list[dict]) -> str:
    """The conversation the answers reply to, as the template's {prompt}: a single user turn as it is,
    a longer conversation as 'role: content' lines."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return str(messages[0]["content"])
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages)


def judge_prompt(messages: list[dict], first: str, second: str) -> str:
    """TEMPLATE filled in, `first` shown as answer A."""
    return TEMPLATE.format(prompt=prompt_text(messages), answer_a=first, answer_b=second)


def both_orders(prompts: list[list[dict]], answers_a: list[str], answers_b: list[str]) -> list[str]:
    """The judge's questions: every pair with a shown as A, then every pair with b shown as A."""
    return [judge_prompt(m, a, b) for m, a, b in zip(prompts, answers_a, answers_b)] + \
           [judge_prompt(m, b, a) for m, a, b in zip(prompts, answers_a, answers_b)]


def _combine(p_first_a: tuple[float, float, float], p_first_b: tuple[float, float, float],
             unparsed: int = 0) -> tuple:
    """One pair's verdict from the option probabilities (A, B, tie) of the two orders: with a first, A is a;
    with b first, A is b. Each order's verdict is its likeliest option in pair terms; the choice is their
    agreement, else 'tie'; the margin is P(a better) - P(b better) averaged over the orders."""
    (a1, b1, t1), (a2, b2, t2) = p_first_a, p_first_b
    first_a = ("a", "b", "tie")[max(range(3), key=lambda i: (a1, b1, t1)[i])]
    first_b = ("b", "a", "tie")[max(range(3), key=lambda i: (a2, b2, t2)[i])]
    margin = ((a1 - b1) + (b2 - a2)) / 2
    return (first_a if first_a == first_b else "tie"), margin, first_a, first_b, unparsed


def _chat_judge(db, ws, judge: Judge):
    """A local chat model: the next-token probabilities of A, B and tie after the template, per order."""
    import torch

    from tunelab import generate
    from tunelab.models import ModelSpec
    model, tokenizer = generate.load(*ModelSpec.parse(judge.spec["model"]).check(db, ws).folders(db, ws))
    ids = [tokenizer(o, add_special_tokens=False)["input_ids"][:1] for o in OPTIONS]
    if any(not i for i in ids) or len({i[0] for i in ids}) < 3:
        raise UserError(f"chat model {judge.spec['model']}: its tokenizer does not give A, B and tie distinct "
                        "first tokens, so their probabilities cannot be read")
    option_ids = torch.tensor([i[0] for i in ids])

    def probabilities(texts: list[str]) -> list[tuple[float, float, float]]:
        chats = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True) for t in texts]
        batch = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        # Left padding: positions count from each row's first real token, as generate() counts them.
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(**batch, position_ids=positions).logits[:, -1].float()
        p = torch.softmax(logits, -1)[:, option_ids.to(logits.device)]
        p = p / p.sum(-1, keepdim=True)
        return [tuple(row) for row in p.tolist()]

    def verdicts(prompts, answers_a, answers_b):
        asks = both_orders(prompts, answers_a, answers_b)
        p = probabilities(asks)
        return [_combine(p[i], p[i + len(prompts)]) for i in range(len(prompts))]
    return verdicts


# Replies people (and models) write instead of one word, checked in order; the first that names an option wins.
_REPLY_PATTERNS = [
    re.compile(r"^\W*(A|B|tie)\W*$", re.I),                                       # the one word asked for
    re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.I),                                 # [[A]] (MT-Bench style)
    re.compile(r"\b(?:answer|response|output)\s*\(?(A|B)\)?\s+is\s+(?:the\s+)?better\b", re.I),
    re.compile(r"\b(?:verdict|answer|choice|winner|better)\s*(?:is)?\s*[:=]\s*\W*(A|B|tie)\b", re.I),
    re.compile(r"^\W*(A|B)\b(?=\W*(?:$|is\b|\n))"),                # "A." or "B is better", not the article "A"
    re.compile(r"\b(tie)\b|\b(?:both|they)\s+are\s+(?:equally|about\s+the\s+same)", re.I),
]


def parse_reply(text: str | None) -> str | None:
    """'A', 'B' or 'tie' from a judge's reply, or None if it names no option (the fallback counts it)."""
    text = (text or "").strip().replace("*", "")
    for pattern in _REPLY_PATTERNS:
        m = pattern.search(text)
        if m:
            word = next((g for g in m.groups() if g), "tie")
            return "tie" if word.lower() == "tie" else word.upper()
    return None


def _option_of(token: str) -> str | None:
    word = token.strip().strip("[]().:*\"'")
    return word if word in ("A", "B") else "tie" if word.lower() == "tie" else None


def _reply_probabilities(choice) -> tuple[tuple[float, float, float], bool]:
    """(P(A), P(B), P(tie)) of one completion: from the first token's top logprobs when the server gives
    them and they name an option, else from the parsed text (1 for the option named); and whether it
    named none (then (0, 0, 1): the fallback is a tie)."""
    content = (choice.logprobs.content if choice.logprobs is not None else None) or []
    if content and content[0].top_logprobs:
        mass = {o: 0.0 for o in OPTIONS}
        for alt in content[0].top_logprobs:
            option = _option_of(alt.token)
            if option:
                mass[option] += math.exp(alt.logprob)
        total = sum(mass.values())
        if total > 0:
            return tuple(mass[o] / total for o in OPTIONS), False
    option = parse_reply(choice.message.content)
    if option is None:
        return (0.0, 0.0, 1.0), True
    return tuple(float(o == option) for o in OPTIONS), False


def _endpoint_judge(db, ws, judge: Judge):
    """An OpenAI-compatible server, asked through the official client, several requests at a time."""
    client, model = _client(judge.spec), judge.spec["model"]

    def ask(text: str):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=ENDPOINT_MAX_TOKENS,
            temperature=0, logprobs=True, top_logprobs=5)
        return _reply_probabilities(reply.choices[0])

    def verdicts(prompts, answers_a, answers_b):
        asks = both_orders(prompts, answers_a, answers_b)
        with ThreadPoolExecutor(ENDPOINT_THREADS) as pool:
            got = list(pool.map(ask, asks))
        n = len(prompts)
        return [_combine(got[i][0], got[i + n][0], got[i][1] + got[i + n][1]) for i in range(n)]
    return verdicts
