"""Dataset speed: import+validate 100k alpaca rows (goal ≤ 10 s) and exact+near dedup them (goal ≤ 60 s).

Run: python bench/data.py [--rows 100000]
The rows are built from LLaMA-Factory's alpaca demo (../shared/data/llamafactory): each row mixes a
demo instruction with sentences drawn from the demo answers, so nearly all rows are distinct; 2% are
exact copies and 2% near copies (one word changed), so both dedup steps have real work to do.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from third_party import SHARED_DATA, require

DEMO = SHARED_DATA / "llamafactory" / "alpaca_en_demo.json"


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    demo = json.loads(DEMO.read_text())
    sentences = [s.strip() + "." for r in demo for s in r["output"].split(".") if len(s.split()) > 3]
    rows = []
    for i in range(n):
        roll = rng.random()
        if rows and roll < 0.02:
            rows.append(dict(rng.choice(rows)))
        elif rows and roll < 0.04:
            src = rng.choice(rows)
            words = src["output"].split()
            words[rng.randrange(len(words))] = "indeed"
            rows.append({**src, "output": " ".join(words)})
        else:
            base = rng.choice(demo)
            rows.append({"instruction": f"{base['instruction']} (case {i})", "input": base["input"],
                         "output": " ".join(rng.sample(sentences, rng.randint(3, 8)))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    require(DEMO)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TUNELAB_HOME"] = str(Path(tmp) / "home")
        from tunelab import datasets, db, workspace
        ws = workspace.current()
        conn = db.connect(ws.db_path)
        path = Path(tmp) / "alpaca_100k.json"
        path.write_text(json.dumps(make_rows(args.rows)))
        size_mb = path.stat().st_size / 2**20

        t0, c0 = time.perf_counter(), time.process_time()
        result = datasets.import_file(conn, ws, path, "bench")
        t_import, c_import = time.perf_counter() - t0, time.process_time() - c0

        t0, c0 = time.perf_counter(), time.process_time()
        reports = datasets.clean(conn, ws, "bench", dedup="near", threshold=0.85)
        t_dedup, c_dedup = time.perf_counter() - t0, time.process_time() - c0

    print(f"rows: {args.rows:,} ({size_mb:.1f} MB JSON), detected {result.detected_format}")
    # CPU seconds alongside wall seconds: on a shared 2-core machine the wall figure depends on the load.
    print(f"load average: {os.getloadavg()[0]:.1f}")
    print(f"import+validate: {t_import:.2f} s wall, {c_import:.2f} s CPU (goal <= 10 s), "
          f"{result.version.rows:,} rows imported")
    exact, near = reports
    print(f"exact+near dedup: {t_dedup:.2f} s wall, {c_dedup:.2f} s CPU (goal <= 60 s): exact removed {exact['removed']:,}, "
          f"near removed {near['removed']:,}, {near['after']:,} left")


if __name__ == "__main__":
    main()
