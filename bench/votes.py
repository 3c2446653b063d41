"""Latency of one labeling step (cast a vote, then claim the next pair: `feedback.vote_and_next`) with
concurrent annotators.

Run: python bench/votes.py [--annotators 20] [--votes 50]
Builds a throwaway workspace with one campaign (answers stored directly, no model needed), starts
N annotator processes that each vote as fast as they can, and prints p50/p95/max of the step in
milliseconds. Goal: p95 <= 20 ms with 20 writers. A real annotator reads for seconds between
votes, so this is the worst case.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tunelab import db as dbmod, feedback, workspace


def annotator(db_path: str, campaign_id: int, uid: int, start, out) -> None:
    conn = dbmod.connect(db_path)
    a = feedback.next_pair(conn, campaign_id, uid, f"a{uid}")
    start.wait()
    times = []
    while a is not None:
        t0 = time.perf_counter()
        a = feedback.vote_and_next(conn, a.id, ("left", "right", "tie")[uid % 3])
        times.append(time.perf_counter() - t0)
    out.put(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotators", type=int, default=20)
    ap.add_argument("--votes", type=int, default=50, help="votes per annotator")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-votes-"))
    ws = workspace.Workspace(home).ensure()
    conn = dbmod.connect(ws.db_path)
    # Two model rows are all a campaign needs to exist; the answers are stored as if generated.
    for name in ("m1", "m2"):
        conn.execute("INSERT INTO models(name, kind, source, path, created_at) VALUES (?, 'base', 'local', ?, 0)",
                     [name, str(home)])
    c = feedback.create_campaign(conn, ws, "bench", ["m1", "m2"], prompts=[f"p{i}" for i in range(args.votes)],
                                 config=feedback.CampaignConfig(overlap=args.annotators))
    ids = [pid for pid, _ in feedback.prompts(conn, c)]
    for m in ("m1", "m2"):
        feedback.store_responses(conn, c, m, 0, ids, [f"{m} answer {i} " * 20 for i in ids])
    feedback.build_pairs(conn, c)

    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=annotator, args=(str(ws.db_path), c.id, u, start, out))
             for u in range(1, args.annotators + 1)]
    for p in procs:
        p.start()
    time.sleep(2)  # let every process import and connect before the clock starts
    t0 = time.perf_counter()
    start.set()
    times = [t for _ in procs for t in out.get()]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    votes = conn.execute("SELECT count(*) FROM votes").fetchone()[0]
    ms = sorted(t * 1000 for t in times)
    print(f"{args.annotators} annotator processes, {votes} votes in {wall:.2f} s ({votes / wall:.0f} votes/s)")
    print(f"vote + claim next: p50 {statistics.median(ms):.2f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:.2f} ms, "
          f"max {ms[-1]:.2f} ms")
    conn.close()
    shutil.rmtree(home)


if __name__ == "__main__":
    main()
