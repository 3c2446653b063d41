"""Peak memory and time of `tunelab data import` on a generated JSONL file (default 50 MB).

    python bench/import_memory.py [--mb 50]

Runs the real CLI in a subprocess over a fresh workspace, twice: once on a one-record file (the
interpreter and the modules: the baseline) and once on the big file. Prints each run's peak RSS, the
growth over the baseline as a multiple of the file size (issue 13's goal: at most 4x), and the time.
The records are messages-format conversations of random words, about 600 bytes each.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("router reset light blink cable modem firmware the a to is of guest network password channel "
         "signal bridge mesh port restart update admin page factory band wifi ethernet").split()


def write_jsonl(path: Path, megabytes: float, seed: int = 0) -> int:
    """Conversations until the file reaches `megabytes`; returns the number of records."""
    rng = random.Random(seed)
    target, size, n = megabytes * 2**20, 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while n == 0 or size < target:
            line = json.dumps({"messages": [
                {"role": "user", "content": " ".join(rng.choices(WORDS, k=20)) + f" ({n})?"},
                {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=70)) + "."}]}) + "\n"
            fh.write(line)
            size += len(line)
            n += 1
    return n


def measure(path: Path, home: Path, name: str) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one `tunelab data import`, read in a fresh parent process so
    that RUSAGE_CHILDREN holds that one child only."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
            "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)")
    env = dict(os.environ, TUNELAB_HOME=str(home))
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "tunelab.cli", "data", "import", str(path),
                          "--name", name], capture_output=True, text=True, env=env, cwd=REPO, check=True).stdout
    rc, kb, seconds = out.split()
    if rc != "0":
        raise SystemExit(f"import of {path.name} exited {rc}")
    return int(kb) / 1024, float(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50)
    args = ap.parse_args()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small, big = tmp / "one.jsonl", tmp / "big.jsonl"
        write_jsonl(small, 0)
        records = write_jsonl(big, args.mb)
        size_mb = big.stat().st_size / 2**20
        base_mb, base_s = measure(small, tmp / "home", "one")
        peak_mb, seconds = measure(big, tmp / "home", "big")
    print(f"file: {size_mb:.1f} MB JSONL, {records:,} records")
    print(f"baseline (one record): peak RSS {base_mb:.0f} MB, {base_s:.1f} s")
    print(f"import: peak RSS {peak_mb:.0f} MB, {seconds:.1f} s wall, {records / seconds:,.0f} records/s")
    print(f"growth over baseline: {peak_mb - base_mb:.0f} MB = {(peak_mb - base_mb) / size_mb:.2f}x the file "
          f"(goal <= 4x); total peak = {peak_mb / size_mb:.2f}x the file")
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
