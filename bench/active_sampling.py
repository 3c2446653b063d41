"""How many votes does active pair selection save? Uniform against active, until the ranking settles.

Run: python bench/active_sampling.py [--models 8] [--gap 40] [--pool 400] [--seeds 10]
     python bench/active_sampling.py --replay BATTLES.jsonl [--seeds 10]
Goal: a ratio of at least 1.5 in simulation, and at least 1.3 in replay on real judgments.

Both modes replay a pool of recorded verdicts. In simulation the pool is made first: K models with
known ratings GAP points apart, POOL verdicts per model pair from noisy annotators (each picks at
random with their own error rate, up to --noise; 10% of the others' verdicts are ties). In replay
the pool is a file in Chatbot Arena's battle format (what `tunelab feedback export --format battles`
writes). Each seed shuffles the pool; then, vote by vote, the strategy picks a model pair among those
with verdicts left, and the next recorded verdict for those two models is drawn without replacement:

  * uniform: the model pair of a pair from the shuffled pool, as a 'uniform' campaign hands pairs
    out (a model pair in proportion to its verdicts left);
  * active: a draw from `feedback.sampling.model_pair_probabilities`, the very function the claim of
    an 'active' campaign uses, on the votes drawn so far.

"Settled" compares the votes drawn so far with the full pool, both rated by `tunelab.ratings`
(Bradley–Terry, 95% bootstrap intervals, the default anchor): every model pair the full data
separates (non-overlapping intervals) is separated the same way, and in simulation the order of
all models matches too (in replay, with few models or ties, only the separated pairs can count).
The top model is settled when the same holds for the pairs that include the full data's leader
(and, in simulation, it leads). Settled means it stays so: the criterion holds at every check from
then on until 25% more votes are in (with a handful of votes the bootstrap can look sure by chance).
It is checked every --every votes, or every 2% of the votes so far when that is more; a seed that
never settles counts the whole pool. Prints the median over seeds, then one line per mode:
`votes to a settled ranking: uniform U, active A, ratio R`.

Real judgments for replay: AlpacaEval's GPT-4 annotations of 4 models against text_davinci_003
(../shared/data/alpaca_eval/*.json), brought in and written out as battles by:
    export TUNELAB_HOME=$(mktemp -d)
    for f in ../shared/data/alpaca_eval/*.json; do tunelab feedback import $f --format alpaca_eval --campaign ae; done
    tunelab feedback export ae --format battles --out /tmp/ae_battles.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from tunelab import ratings
from tunelab.feedback import sampling

sys.path.insert(0, str(Path(__file__).resolve().parent))
from third_party import require  # noqa: E402

HOLD = 0.25   # settled: the criterion holds at every check from then until 25% more votes are in
SCORE = {"model_a": 0, "model_b": 1, "tie": 2, "tie (bothbad)": 2}   # a verdict as: i won, j won, tie


def simulate(models: int, gap: float, pool: int, noise: float, seed: int) -> list[dict]:
    """POOL battles per model pair from 20 noisy annotators, between models whose neighbours are GAP to
    3·GAP rating points apart (drawn per seed: real leaderboards have clusters and gaps)."""
    rng = np.random.default_rng(seed)
    strength = np.cumsum(np.r_[0, rng.uniform(gap, 3 * gap, models - 1)])   # m0, the anchor, is the weakest
    error = rng.uniform(0, noise, 20)                    # each annotator's chance of a random label
    names = [f"m{i}" for i in range(models)]
    out = []
    for i in range(models):
        for j in range(i + 1, models):
            p = 1 / (1 + 10 ** ((strength[j] - strength[i]) / ratings.SCALE))
            who = rng.integers(0, 20, pool)
            guess = rng.random(pool) < error[who]
            label = np.where(rng.random(pool) < 0.1, 2, np.where(rng.random(pool) < p, 0, 1))
            label = np.where(guess, rng.integers(0, 3, pool), label)
            out += [{"model_a": names[i], "model_b": names[j], "winner": ("model_a", "model_b", "tie")[k]}
                    for k in label]
    return out


def intervals(decisive: np.ndarray, ties: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rating, ci_low, ci_high) as `ratings.rate` computes them (anchor: the first model by name)."""
    point = ratings.to_rating(ratings.fit(decisive + ties / 2), 0)
    low, high = np.percentile(ratings.bootstrap(decisive, ties, 0), [2.5, 97.5], axis=0)
    return point, low, high


class Replay:
    """The full pool: its models (by name, as `ratings.pair_counts` orders them), its verdicts per model
    pair, and what the full data says (the order, the separated pairs, the leader)."""

    def __init__(self, battles: list[dict], whole_order: bool):
        self.models = ratings.pair_counts(battles)[0]
        index = {m: k for k, m in enumerate(self.models)}
        self.pool: dict[tuple[int, int], list[int]] = {}
        for b in battles:
            i, j, s = index[b["model_a"]], index[b["model_b"]], SCORE[b["winner"]]
            if i == j:
                continue
            if i > j:
                i, j, s = j, i, (1, 0, 2)[s]
            self.pool.setdefault((i, j), []).append(s)
        self.total = sum(len(v) for v in self.pool.values())
        full = {r.model: r for r in ratings.rate(battles)}
        self.point = np.array([full[m].rating for m in self.models])
        low, high = np.array([full[m].ci_low for m in self.models]), np.array([full[m].ci_high for m in self.models])
        n = len(self.models)
        self.separated = [(a, b) for a in range(n) for b in range(n) if low[a] > high[b]]   # a above b
        self.leader = int(np.argmax(self.point))
        self.whole_order = whole_order

    def settled(self, decisive: np.ndarray, ties: np.ndarray) -> tuple[bool, bool]:
        """(ranking settled, top model settled) for the votes drawn so far."""
        if (decisive + decisive.T + ties).sum(axis=1).min() == 0:
            return False, False  # a model without votes has no rating yet
        point, low, high = intervals(decisive, ties)
        ok = {(a, b): low[a] > high[b] for a, b in self.separated}
        ranking = all(ok.values())
        top = all(v for (a, _), v in ok.items() if a == self.leader)
        if self.whole_order:
            ranking = ranking and (np.argsort(-point) == np.argsort(-self.point)).all()
            top = top and int(np.argmax(point)) == self.leader
        return ranking, top

    def run(self, strategy: str, seed: int, every: int) -> tuple[int, int]:
        """Votes until (the ranking, the top model) settled, drawing with `strategy` under `seed`."""
        rng = random.Random(seed)
        left = {pair: rng.sample(v, len(v)) for pair, v in self.pool.items()}
        n = len(self.models)
        decisive, ties = np.zeros((n, n)), np.zeros((n, n))
        since = [None, None]   # the check from which (ranking, top) has held at every check since
        votes = 0
        while any(s is None or votes < s * (1 + HOLD) for s in since):
            pairs = [p for p, v in left.items() if v]
            if not pairs:
                break
            if strategy == "active":
                probs = sampling.model_pair_probabilities(self.models, decisive, ties,
                                                          [(self.models[i], self.models[j]) for i, j in pairs])
                weights = list(probs.values())
            else:
                weights = [len(left[p]) for p in pairs]
            i, j = rng.choices(pairs, weights=weights)[0]
            s = left[(i, j)].pop()
            if s == 0:
                decisive[i, j] += 1
            elif s == 1:
                decisive[j, i] += 1
            else:
                ties[i, j] += 1
                ties[j, i] += 1
            votes += 1
            if votes % max(every, votes // 50 // every * every) == 0:
                since = [(s or votes) if ok else None for s, ok in zip(since, self.settled(decisive, ties))]
        return tuple(self.total if s is None else s for s in since)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replay", type=Path, help="a battles JSONL file (Arena format); default: simulation")
    ap.add_argument("--models", type=int, default=8, help="simulation: number of models (K)")
    ap.add_argument("--gap", type=float, default=60.0, help="simulation: least rating points between neighbours")
    ap.add_argument("--pool", type=int, default=2000, help="simulation: recorded verdicts per model pair")
    ap.add_argument("--noise", type=float, default=0.3, help="simulation: highest annotator error rate")
    ap.add_argument("--seeds", type=int, default=10, help="runs per strategy (seeds 0..N-1)")
    ap.add_argument("--every", type=int, default=10, help="check settledness every N votes")
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = {}
    for seed in range(args.seeds):
        if args.replay:
            if seed == 0:
                path = require(args.replay.resolve())
                replay = Replay([json.loads(line) for line in path.read_text().splitlines() if line.strip()], False)
        else:
            replay = Replay(simulate(args.models, args.gap, args.pool, args.noise, seed), True)
        if seed == 0:
            print(f"{'replay ' + str(args.replay) if args.replay else 'simulation'}: {len(replay.models)} models, "
                  f"{replay.total} verdicts; the full data separates {len(replay.separated)} of "
                  f"{len(replay.models) * (len(replay.models) - 1) // 2} model pairs")
        for strategy in ("uniform", "active"):
            result.setdefault(strategy, []).append(replay.run(strategy, seed, args.every))
    med = {s: (statistics.median(r for r, _ in v), statistics.median(t for _, t in v)) for s, v in result.items()}
    for s, v in result.items():
        print(f"{s:8s} ranking settled after {[r for r, _ in v]} votes, top model after {[t for _, t in v]}")
    (u, ut), (a, at) = med["uniform"], med["active"]
    print(f"votes to a settled top model: uniform {ut:g}, active {at:g}, ratio {ut / at:.2f}")
    print(f"votes to a settled ranking: uniform {u:g}, active {a:g}, ratio {u / a:.2f}")
    print(f"({args.seeds} seeds, {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
