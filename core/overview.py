"""The pipeline at a glance, for the home page: what exists at each stage."""
from __future__ import annotations

from tunelab import models


def _count(db, sql: str) -> int:
    return db.execute(sql).fetchone()[0]


def pipeline_summary(db, top: int = 5) -> dict:
    """Counts per stage."""
    out = {
        "datasets": _count(db, "SELECT count(*) FROM datasets"),
        "dataset_versions": _count(db, "SELECT count(*) FROM dataset_versions"),
        "runs_by_status": dict(db.execute("SELECT status, count(*) FROM jobs WHERE kind = 'train' "
                                          "GROUP BY status").fetchall()),
        "campaigns": _count(db, "SELECT count(*) FROM campaigns"),
        "votes": _count(db, "SELECT count(*) FROM votes"),
        "models": len(models.list_models(db)),
        "users": _count(db, "SELECT count(*) FROM users"),
    }
    out["runs"] = sum(out["runs_by_status"].values())
    # The leaderboard's rows come from votes and completed evals; with neither there is nothing to rank.
    evals = _count(db, "SELECT count(*) FROM jobs WHERE kind = 'eval' AND status = 'completed'")
    out["leaderboard_top"] = _leaderboard_top(db, top) if out["votes"] or evals else []
    return out


def _leaderboard_top(db, top: int) -> list[dict]:
    # Imported here: the ratings bring numpy, 0.15 s of a new workspace's first page draw (bench/ui.py).
    from tunelab import leaderboard

    board = leaderboard.build(db, rounds=50)  # the home page shows the order, so fewer rounds will do
    return board["rows"][:top]
