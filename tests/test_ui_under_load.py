"""The app stays quick while a run trains on the same cores: every thread of a job process (torch's workers
included) runs below the app's priority, so the pages people wait on win the CPU (bench/ui.py
--under-training measures the effect)."""
import os
from pathlib import Path

import pytest

from tests.conftest import make_dataset, stop_leftover_runs, wait_until


def thread_niceness(pid: int) -> list[int]:
    """The nice value of each thread of `pid`: field 19 of /proc/PID/task/TID/stat, counted after the
    parenthesised command name (which may hold spaces)."""
    tasks = Path(f"/proc/{pid}/task")
    return [int((tasks / tid / "stat").read_text().rsplit(")", 1)[1].split()[16]) for tid in os.listdir(tasks)]


@pytest.mark.process
@pytest.mark.timeout(300)
def test_a_training_run_and_all_its_threads_run_nicer_than_the_app(tiny_model, tmp_path):
    from tunelab import jobs, runs
    db, ws, model = tiny_model
    version = make_dataset(db, ws, tmp_path)
    run_id = runs.launch(db, ws, {"base_model": model, "dataset": version.ref, "max_steps": 50_000,
                                  "save_steps": 100_000, "eval_steps": 100_000})
    try:
        wait_until(lambda: runs.get(db, run_id).progress().get("step", 0) >= 1)  # torch's threads exist by now
        run = runs.get(db, run_id)
        niceness = thread_niceness(run.pid)
        assert len(niceness) > 1  # the training threads, not only the main one
        assert set(niceness) == {max(os.nice(0), jobs.JOB_NICENESS)}  # a level: a job started by a job stays there
        assert os.nice(0) < min(niceness)  # this process (as the app would be) is unchanged
    finally:
        stop_leftover_runs(db)
