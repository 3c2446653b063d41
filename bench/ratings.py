"""How fast are the leaderboard's ratings? Bradley–Terry + 200 bootstrap rounds on 50,000 votes.

Run: python bench/ratings.py [--votes 50000] [--models 20] [--rounds 200]
Goal: at most 3 s on the 2-core dev machine. Prints seconds for aggregation, the point fit,
the bootstrap and online Elo, and how well the fit recovers the simulated strengths.
"""
import argparse
import time

import numpy as np

from tunelab import ratings


def simulate(votes: int, models: int, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Battles between random pairs with known ratings (spread 1000..1400) and 10% ties.

    Ties score ½, so the decisive votes are drawn with p' = (p − 0.05) / 0.9: each vote's expected
    score is then exactly the Bradley–Terry probability p, and the fit should recover `true`."""
    rng = np.random.default_rng(seed)
    true = np.linspace(1000, 1400, models)
    a = rng.integers(0, models, votes)
    b = (a + rng.integers(1, models, votes)) % models
    p_a = (1 / (1 + 10 ** ((true[b] - true[a]) / 400)) - 0.05) / 0.9
    u = rng.random(votes)
    tie = rng.random(votes) < 0.1
    names = [f"m{i:02d}" for i in range(models)]
    winner = np.where(tie, "tie", np.where(u < p_a, "model_a", "model_b"))
    return [{"model_a": names[i], "model_b": names[j], "winner": w} for i, j, w in zip(a, b, winner)], true


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--votes", type=int, default=50_000)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    battles, true = simulate(args.votes, args.models)

    t0 = time.perf_counter()
    names, decisive, ties = ratings.pair_counts(battles)
    t1 = time.perf_counter()
    point = ratings.to_rating(ratings.fit(decisive + ties / 2), 0)
    t2 = time.perf_counter()
    boot = ratings.bootstrap(decisive, ties, 0, args.rounds, seed=0)
    t3 = time.perf_counter()
    ratings.online_elo(battles)
    t4 = time.perf_counter()
    ratings.rate(battles, anchor="m00", rounds=args.rounds)
    t5 = time.perf_counter()

    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    covered = int(((low <= true) & (true <= high)).sum())
    print(f"{args.votes} votes, {args.models} models, {args.rounds} bootstrap rounds")
    print(f"  aggregate into pair counts   {t1 - t0:6.3f} s")
    print(f"  Bradley-Terry point fit      {t2 - t1:6.3f} s")
    print(f"  bootstrap ({args.rounds} refits)       {t3 - t2:6.3f} s")
    print(f"  online Elo (K={ratings.ELO_K})           {t4 - t3:6.3f} s")
    print(f"  BT + {args.rounds} bootstrap rounds   {t3 - t0:6.3f} s   (goal <= 3 s)")
    print(f"  ratings.rate() end to end    {t5 - t4:6.3f} s")
    print(f"  largest error vs true rating {np.abs(point - true).max():6.1f} points; "
          f"95% intervals cover the truth for {covered}/{args.models} models; "
          f"median interval width {np.median(high - low)[()]:.1f} points")


if __name__ == "__main__":
    main()
