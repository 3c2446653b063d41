"""How fast are the leaderboard's ratings at Arena scale? Aggregation, Bradley–Terry and the bootstrap.

Run: python bench/ratings.py [--votes 2000000] [--models 200] [--rounds 100]
Goal: aggregation + fit + bootstrap in at most 2 s on the 2-core dev machine (2M votes, 200 models,
100 rounds). Prints seconds for each part and for online Elo, and how well the fit recovers the
simulated strengths (largest error, how many 95% intervals cover the truth).

The votes are simulated as numpy arrays and aggregated with one bincount into (model_a, model_b,
winner) groups, as the leaderboard's GROUP BY in SQLite gives them; `ratings.rate_counts` fits those.
`ratings.rate` on a list of battle dicts (the small-campaign path) is timed too when there are at
most DICTS_UP_TO votes: two million dicts alone take seconds and gigabytes to build.
"""
import argparse
import time

import numpy as np

from tunelab import ratings

DICTS_UP_TO = 200_000


def names_for(models: int) -> list[str]:
    """m0..m9, m00..m99, m000..m199: zero-padded to the width the count needs, so that sorting by name
    (as the ratings do) keeps the simulated order and m100 comes after m99."""
    width = len(str(models - 1))
    return [f"m{i:0{width}d}" for i in range(models)]


def simulate(votes: int, models: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, outcome, true): random pairs of model numbers, the outcome as an index into
    ratings.OUTCOMES (10% ties), and the known ratings (spread 1000..1400).

    Ties score ½, so the decisive votes are drawn with p' = (p − 0.05) / 0.9: each vote's expected
    score is then exactly the Bradley–Terry probability p, and the fit should recover `true`."""
    rng = np.random.default_rng(seed)
    true = np.linspace(1000, 1400, models)
    a = rng.integers(0, models, votes)
    b = (a + rng.integers(1, models, votes)) % models
    p_a = (1 / (1 + 10 ** ((true[b] - true[a]) / 400)) - 0.05) / 0.9
    u = rng.random(votes)
    tie = rng.random(votes) < 0.1
    outcome = np.where(tie, 2, np.where(u < p_a, 0, 1))
    return a, b, outcome, true


def grouped(a: np.ndarray, b: np.ndarray, outcome: np.ndarray, names: list[str]):
    """((model_a, model_b, winner), count) per group: GROUP BY model_a, model_b, winner, vectorised."""
    n, k = len(names), len(ratings.OUTCOMES)
    counts = np.bincount((a * n + b) * k + outcome, minlength=n * n * k)
    cells = np.flatnonzero(counts)
    return [((names[c // (n * k)], names[c // k % n], ratings.OUTCOMES[c % k]), int(counts[c])) for c in cells]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--votes", type=int, default=2_000_000)
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    names = names_for(args.models)
    a, b, outcome, true = simulate(args.votes, args.models)

    t0 = time.perf_counter()
    models, decisive, ties = ratings.from_counts(grouped(a, b, outcome, names))
    t1 = time.perf_counter()
    beta = ratings.fit(decisive + ties / 2)
    point = ratings.to_rating(beta, 0)
    t2 = time.perf_counter()
    boot = ratings.bootstrap(decisive, ties, 0, args.rounds, seed=0, start=beta)
    t3 = time.perf_counter()
    scores = np.array([1.0, 0.0, 0.5])[outcome]
    ratings.online_elo_codes(a.tolist(), b.tolist(), scores.tolist(), args.models)
    t4 = time.perf_counter()
    assert models == names, "the names must sort in the simulated order"

    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    covered = int(((low <= true) & (true <= high)).sum())
    print(f"{args.votes} votes, {args.models} models, {args.rounds} bootstrap rounds")
    print(f"  aggregate into pair counts   {t1 - t0:6.3f} s")
    print(f"  Bradley-Terry point fit      {t2 - t1:6.3f} s")
    print(f"  bootstrap ({args.rounds} refits)       {t3 - t2:6.3f} s")
    print(f"  aggregation + fit + bootstrap {t3 - t0:5.3f} s   (goal <= 2 s)")
    print(f"  online Elo (K={ratings.ELO_K}, from lists) {t4 - t3:6.3f} s")
    if args.votes <= DICTS_UP_TO:
        battles = [{"model_a": names[i], "model_b": names[j], "winner": ratings.OUTCOMES[o]}
                   for i, j, o in zip(a.tolist(), b.tolist(), outcome.tolist())]
        t5 = time.perf_counter()
        ratings.rate(battles, anchor=names[0], rounds=args.rounds)
        print(f"  ratings.rate() on dicts      {time.perf_counter() - t5:6.3f} s")
    print(f"  largest error vs true rating {np.abs(point - true).max():6.1f} points; "
          f"95% intervals cover the truth for {covered}/{args.models} models; "
          f"median interval width {np.median(high - low)[()]:.1f} points")


if __name__ == "__main__":
    main()
