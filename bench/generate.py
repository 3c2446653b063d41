"""Batched generation (left padding, several prompts at once) against one prompt at a time.

    python bench/generate.py [--model smollm2-135m-instruct] [--prompts 16] [--batch-size 8] [--max-new-tokens 48]

Prints generated tokens per second for both and their ratio (goal on CPU: batched ≥ 3×).
Prompts are the first MT-Bench questions from ../shared/data/fastchat (first turn only).
Greedy decoding, so both paths do the same work.
"""
import argparse
import json
import time

from tunelab import db, generate, models, workspace
from third_party import SHARED_DATA, require

MT_BENCH = SHARED_DATA / "fastchat" / "mt_bench_questions.jsonl"


def count_tokens(tokenizer, answers: list[str]) -> int:
    return sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    require(MT_BENCH)

    import torch
    ws = workspace.current()
    conn = db.connect(ws.db_path)
    model, tok = generate.load(models.model_path(conn, ws, args.model))
    prompts = [json.loads(line)["turns"][0] for line in MT_BENCH.read_text().splitlines()[:args.prompts]]
    settings = generate.SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=0)
    print(f"model {args.model}, {len(prompts)} prompts, max_new_tokens {args.max_new_tokens}, "
          f"torch threads {torch.get_num_threads()}")

    generate.generate(model, tok, prompts[:2], settings, batch_size=2)  # warm-up
    t = time.perf_counter()
    single = [generate.generate(model, tok, [p], settings, batch_size=1)[0] for p in prompts]
    t_single = time.perf_counter() - t
    t = time.perf_counter()
    batched = generate.generate(model, tok, prompts, settings, batch_size=args.batch_size)
    t_batched = time.perf_counter() - t

    tps_single = count_tokens(tok, single) / t_single
    tps_batched = count_tokens(tok, batched) / t_batched
    same = sum(a == b for a, b in zip(single, batched))
    print(f"one at a time:      {tps_single:7.1f} tokens/s ({t_single:.1f} s)")
    print(f"batched (size {args.batch_size}):  {tps_batched:7.1f} tokens/s ({t_batched:.1f} s)")
    print(f"speed-up: {tps_batched / tps_single:.2f}x (goal >= 3x); identical answers: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
