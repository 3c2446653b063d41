"""Writes the demo's sample preference votes, data/samples/acme_router_votes.jsonl, from the sample SFT set.

    python bench/sample_votes.py      # prints how many pairs of each kind it wrote

Each line is one Chatbot Arena battle (prompt, response_a, response_b, winner, judge "sample") on a question
of the sample's train split (the demo splits with val 0.2, seed 0: none of these prompts is held out for the
evals). The preferred answer is the sample's own, in the bot's "Answer: ... / Steps: 1. ..." format; the
other one breaks it in one of four ways, in turn: the format dropped (one paragraph), a refusal, another
question's answer (right format, wrong content), or unnumbered steps. They are written by this script, not
cast by people; `tunelab demo` imports them as a campaign whose source says so (feedback.SAMPLE_SOURCE).
"""
import json
import re
from pathlib import Path

from tunelab.datasets.splitting import split_rows  # the demo's own split
from tunelab.leaderboard import DEMO_VALIDATION

ROOT = Path(__file__).resolve().parents[1]

SFT = ROOT / "data" / "samples" / "acme_router_sft.jsonl"
OUT = SFT.with_name("acme_router_votes.jsonl")
PAIRS = 60
TSTAMP = 1767225600  # 2026-01-01: fixed, so the file is the same on every run


def paragraph(answer: str) -> str:
    """The same content with the format gone: one run-on paragraph, no Answer:/Steps: and no numbers."""
    head, steps = answer.split("\nSteps: ", 1)
    items = [s.strip().rstrip(".") for s in re.split(r"\s*\d\.\s", " " + steps) if s.strip()]
    return head.removeprefix("Answer: ") + " To do this, " + ", then ".join(i[0].lower() + i[1:] for i in items) + "."


def refusal(answer: str) -> str:
    return "I'm sorry, but I can't help with router settings. Please contact Acme support."


def bullets(answer: str) -> str:
    head, steps = answer.split("\nSteps: ", 1)
    items = [s.strip() for s in re.split(r"\s*\d\.\s", " " + steps) if s.strip()]
    return head + "\nSteps:\n" + "\n".join(f"- {i}" for i in items)


def main() -> None:
    rows = [json.loads(line) for line in SFT.read_text().splitlines()]
    train = split_rows(rows, DEMO_VALIDATION, 0.0, 0)["train"]
    answers = sorted({r["messages"][-1]["content"] for r in train})
    kinds = ("paragraph", "refusal", "wrong answer", "bullets")
    counts = dict.fromkeys(kinds, 0)
    with open(OUT, "w") as fh:
        for i, row in enumerate(train[:PAIRS]):
            prompt, good = row["messages"][:-1], row["messages"][-1]["content"]
            kind = kinds[i % len(kinds)]
            if kind == "wrong answer":  # the next distinct answer in sorted order: a different question's
                bad = answers[(answers.index(good) + 1) % len(answers)]
            else:
                bad = {"paragraph": paragraph, "refusal": refusal, "bullets": bullets}[kind](good)
            counts[kind] += 1
            chosen_left = i % 2 == 0  # the preferred answer on either side, half the time each
            a, b = (good, bad) if chosen_left else (bad, good)
            ma, mb = ("acme-reference", "acme-flawed") if chosen_left else ("acme-flawed", "acme-reference")
            fh.write(json.dumps({"model_a": ma, "model_b": mb, "winner": "model_a" if chosen_left else "model_b",
                                 "judge": "sample", "prompt": prompt, "response_a": a, "response_b": b,
                                 "tstamp": TSTAMP}) + "\n")
    print(f"{OUT.relative_to(ROOT)}: {sum(counts.values())} pairs ({', '.join(f'{v} {k}' for k, v in counts.items())})")


if __name__ == "__main__":
    main()
