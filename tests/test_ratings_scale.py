"""Ratings at Arena scale: the fit from pre-aggregated counts, the bootstrap's chord steps, Elo on numbered
battles, and bench/ratings.py's model names, checked against rate() on battles and hand-computed answers."""
import importlib.util
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURE
from tunelab import ratings
from tunelab.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_ratings", REPO / "bench" / "ratings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rate_counts_from_grouped_rows_gives_what_rate_gives_on_battles():
    # What `GROUP BY model_a, model_b, winner` returns; one group split in two, as two campaigns would give it.
    groups = list(Counter((b["model_a"], b["model_b"], b["winner"]) for b in FIXTURE).items())
    (key, count), rest = groups[0], groups[1:]
    groups = [(key, count - 1), (key, 1), *rest, (("A", "A", "model_a"), 7)]  # a self-battle counts for nothing
    from_groups = ratings.rate_counts(*ratings.from_counts(groups), anchor="C", rounds=100)
    from_battles = ratings.rate(FIXTURE, anchor="C", rounds=100)
    assert [r.model for r in from_groups] == [r.model for r in from_battles] == ["A", "B", "C"]
    for g, b in zip(from_groups, from_battles):
        assert (g.rating, g.ci_low, g.ci_high, g.rank, g.votes, g.wins, g.win_rate) == \
               (b.rating, b.ci_low, b.ci_high, b.rank, b.votes, b.wins, b.win_rate)
        assert g.elo is None and b.elo is not None  # Elo needs the votes' order, which counts lack
    rows = {r.model: r for r in from_groups}
    # The hand-computed fixture (tests/test_ratings.py): strengths 9 : 3 : 1.
    assert rows["A"].rating == pytest.approx(1000 + 400 * math.log10(9), abs=0.05)
    assert rows["B"].rating == pytest.approx(1000 + 400 * math.log10(3), abs=0.05)
    assert rows["C"].rating == 1000 and rows["A"].votes == 140


def test_from_counts_refuses_an_unknown_winner():
    with pytest.raises(UserError, match="winner 'a' is not one of"):
        ratings.from_counts([(("A", "B", "a"), 3)])


def resamples(seed: int, rounds: int = 8):
    """Bootstrap-like win matrices around the fixture's counts, and the fixture's own fit."""
    _, decisive, ties = ratings.pair_counts(FIXTURE)
    W = decisive + ties / 2
    rng = np.random.default_rng(seed)
    return rng.poisson(np.repeat(W[None], rounds, axis=0)).astype(float), ratings.fit(W)


def test_chord_steps_reach_the_full_newton_optimum():
    wins, start = resamples(0)
    assert np.allclose(ratings.refit(wins, start), ratings.fit(wins), atol=1e-6)


def test_a_round_far_from_the_start_falls_back_to_newton():
    wins, _ = resamples(1)
    far = np.array([-3.0, 0.0, 3.0])  # B strongest, A weakest: the reverse of the data
    assert np.allclose(ratings.refit(wins, far), ratings.fit(wins), atol=1e-6)


def test_online_elo_by_hand_and_on_numbered_battles():
    battles = [{"model_a": "A", "model_b": "B", "winner": "model_a"},
               {"model_a": "B", "model_b": "A", "winner": "tie"},
               {"model_a": "A", "model_b": "A", "winner": "model_b"}]  # a self-battle changes nothing
    elo = ratings.online_elo(battles)
    # A beats B at 1000 each: expected 1/2, so A gains 4 * 1/2.
    a, b = 1002.0, 998.0
    expected_b = 1 / (1 + 10 ** ((a - b) / 400))
    b, a = b + 4 * (0.5 - expected_b), a - 4 * (0.5 - expected_b)
    assert elo == {"A": pytest.approx(a), "B": pytest.approx(b)}
    assert ratings.online_elo_codes([0, 1], [1, 0], [1.0, 0.5], 2) == [pytest.approx(a), pytest.approx(b)]


def test_bench_names_sort_in_the_simulated_order():
    names = bench_module().names_for(200)
    assert names[0] == "m000" and names[99] == "m099" and names[100] == "m100"
    assert sorted(names) == names
    assert bench_module().names_for(20)[:2] == ["m00", "m01"] and bench_module().names_for(5)[-1] == "m4"


@pytest.mark.process
@pytest.mark.timeout(120)
def test_the_bench_recovers_the_truth_past_a_hundred_models():
    out = subprocess.run([sys.executable, "bench/ratings.py", "--votes", "200000", "--models", "120", "--rounds", "100"],
                         cwd=REPO, capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if "largest error" in x)
    error = float(line.split("largest error vs true rating")[1].split("points")[0])
    covered = int(line.split("cover the truth for ")[1].split("/")[0])
    assert error < 40 and covered >= 105  # with names sorting as strings: hundreds of points off, few covered
