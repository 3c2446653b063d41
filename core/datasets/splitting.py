"""Train/validation(/test) splits by ratio and seed: the same seed on the same rows gives the same files."""
from __future__ import annotations

import random

from tunelab.datasets import store
from tunelab.errors import UserError


def split_rows(rows: list[dict], val: float, test: float, seed: int) -> dict[str, list[dict]]:
    if not (0.0 < val < 1.0) or not (0.0 <= test < 1.0) or val + test >= 1.0:
        raise UserError(f"--val {val} --test {test}: each must be a fraction in [0, 1), val above 0, "
                        "and together below 1")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val, n_test = round(val * len(rows)), round(test * len(rows))
    if n_val == 0 or (test > 0 and n_test == 0) or n_val + n_test >= len(rows):
        raise UserError(f"{len(rows)} rows are too few for --val {val} --test {test}: a split would be empty")
    # Rows keep their original order inside each split; only membership is random.
    parts = {"validation": sorted(order[:n_val]), "test": sorted(order[n_val:n_val + n_test]),
             "train": sorted(order[n_val + n_test:])}
    return {s: [rows[i] for i in parts[s]] for s in store.SPLITS if parts[s]}


def split(db, ws, ref: str, val: float = 0.1, test: float = 0.0, seed: int = 0) -> store.DatasetVersion:
    """A new version with train, validation (and test) files. A split version is re-split from all its rows."""
    version = store.resolve(db, ws, ref)
    rows = version.load_all()
    parts = split_rows(rows, val, test, seed)
    return store.write_version(db, ws, version.name, parts, version.kind, "split",
                               {"val": val, "test": test, "seed": seed}, parent=version.ref,
                               report={"before": len(rows), **{s: len(r) for s, r in parts.items()}})
