"""Times `tunelab demo` end to end in a fresh workspace, and each of its phases.

    python bench/demo.py [--max-steps N] [--limit N] [--keep]

The bundled model is prepared once in a cache workspace (TUNELAB_TEST_CACHE, default
~/.cache/tunelab-tests, the tests' copy) and recorded in the fresh TUNELAB_HOME, so the conversion is not
timed; everything else is: importing the sample data and votes, LoRA SFT, DPO from it, six evals and the
board. Prints each phase's seconds, then `demo wall time: S s` (the `tunelab demo` process, start to exit).
The figure depends on the machine's load: say how busy it was beside it.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prepared_workspace(home: Path) -> None:
    """A fresh workspace whose bundled model is the cache's prepared copy."""
    from tunelab import db, models, workspace
    cache = workspace.Workspace(Path(os.environ.get("TUNELAB_TEST_CACHE", Path.home() / ".cache" / "tunelab-tests")))
    conn = db.connect(cache.ensure().db_path)
    path = models.prepare(conn, cache, models.DEFAULT_MODEL)
    conn.close()
    conn = db.connect(workspace.Workspace(home).ensure().db_path)
    models.list_models(conn)  # registers the bundled row
    models._record(conn, models.DEFAULT_MODEL, path)
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--keep", action="store_true", help="keep the workspace and print where it is")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tunelab-demo-"))
    prepared_workspace(home)
    extra = [x for k, v in (("--max-steps", args.max_steps), ("--limit", args.limit)) if v for x in (k, str(v))]
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", "demo", "--json", *extra], capture_output=True,
                          text=True, env={**os.environ, "TUNELAB_HOME": str(home)}, cwd=ROOT)
    wall = time.time() - started
    if done.returncode:
        sys.exit(f"tunelab demo exited {done.returncode}:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout)
    for phase, seconds in out["seconds"].items():
        print(f"{phase:<55} {seconds:7.1f} s")
    from tunelab import leaderboard
    for row in leaderboard.display(out["leaderboard"]["rows"], ("model", "about", "rouge_l", "exact_match", "format",
                                                                "forgetting", "train_seconds", "cost_usd")):
        print(" | ".join(str(v) for v in row.values()))
    if args.keep:
        print(f"workspace: {home}")
    else:
        shutil.rmtree(home)
    print(f"demo wall time: {wall:.0f} s")


if __name__ == "__main__":
    main()
