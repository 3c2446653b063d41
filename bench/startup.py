"""Time from `streamlit run streamlit_app.py` to the home page drawn in Chromium.

    python bench/startup.py [--rounds 3]

Prints the cold figure (process start to page drawn, goal ≤ 3 s on these machines) and the warm
one (a second browser tab on the running server). Uses a fresh workspace in a temp folder.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, _free_port  # noqa: E402


def one_round(browser, script: Path = REPO / "streamlit_app.py") -> tuple[float, float]:
    """(cold, warm) seconds for `script`, an app whose first page shows "Getting started"."""
    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, TUNELAB_HOME=str(home))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", script.name, "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1"],
                            cwd=script.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.02)
        page = browser.new_page()
        page.goto(url)
        page.get_by_text("Getting started").wait_for(timeout=60_000)
        cold = time.perf_counter() - t0
        page.close()
        page = browser.new_page()
        t1 = time.perf_counter()
        page.goto(url)
        page.get_by_text("Getting started").wait_for(timeout=60_000)
        warm = time.perf_counter() - t1
        page.close()
        return cold, warm
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        results = [one_round(browser) for _ in range(args.rounds)]
        browser.close()
    cold = [c for c, _ in results]
    warm = [w for _, w in results]
    print(f"cold start (streamlit run -> home drawn): median {statistics.median(cold):.2f} s, "
          f"all {', '.join(f'{c:.2f}' for c in cold)} (goal <= 3 s)")
    print(f"warm open (new tab -> home drawn):        median {statistics.median(warm):.2f} s")


if __name__ == "__main__":
    main()
