"""tunelab as an installed package that owns its name: a non-editable `pip install .` into a fresh venv,
used from another directory, finds its code and its sample data inside the install, not in this checkout."""
import os
import subprocess
import sys
import sysconfig

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.process]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv with tunelab installed from this checkout (not editable). Its dependencies come from this
    interpreter's site-packages, added as a plain path rather than a site dir, so that the editable
    install's finder living there is not loaded: only tunelab itself is the fresh copy."""
    root = tmp_path_factory.mktemp("installed")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    venv_site = next((venv / "lib").glob("python*/site-packages"))
    (venv_site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(REPO)],
                   check=True, timeout=600, cwd=root)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return venv, venv_site, elsewhere


def _run(program, cwd, *args, timeout=120, env=None):
    return subprocess.run([str(program), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": "", **(env or {})})


@pytest.mark.timeout(900)
def test_the_installed_package_has_its_own_name_and_its_samples(installed):
    venv, site, elsewhere = installed
    py = venv / "bin" / "python"
    out = _run(py, elsewhere, "-c", "import tunelab, tunelab.cli; from tunelab import samples; "
                                    "print(tunelab.__file__); print(samples.path('prompts.jsonl'))")
    assert out.returncode == 0, out.stderr
    package, prompts = out.stdout.split()
    assert package.startswith(str(site)) and prompts.startswith(str(site))
    assert os.path.exists(prompts)
    out = _run(py, elsewhere, "-c", "import core")
    assert out.returncode != 0 and "No module named 'core'" in out.stderr


@pytest.mark.timeout(1200)
def test_the_installed_copy_runs_the_demo_from_another_directory(installed, tmp_path):
    venv, site, elsewhere = installed
    home = tmp_path / "home"
    out = _run(venv / "bin" / "tunelab", elsewhere, "demo", "--max-steps", "1", "--limit", "2", "--json",
               timeout=1100, env={"TUNELAB_HOME": str(home)})
    assert out.returncode == 0, out.stderr[-3000:]
    import json
    doc = json.loads(out.stdout)
    assert doc["dataset"].startswith("acme-router@") and doc["leaderboard"]
    # The job processes it started ran the installed copy too.
    train_log = next(home.glob("runs/*/train.log")).read_text()
    assert "Traceback" not in train_log
