"""Human ratings from pairwise votes: Bradley–Terry with bootstrap intervals, ranks, win rates, Elo.

The scale, exactly (as in Chatbot Arena): model i has strength θ_i in log10-odds units and rating

    R_i = 1000 + 400 · (θ_i − θ_anchor),    P(i beats j) = 1 / (1 + 10^((R_j − R_i) / 400)),

so a 400-point gap means 10:1 odds and the anchor model has exactly 1000. A tie, and a "both bad"
tie, counts as half a win for each side.

The fit works on counts, not on single votes: battles become a matrix W where W[i, j] is the wins
of i over j (ties add ½ to both cells). The maximum-likelihood strengths solve a concave problem;
we take Newton steps on the point estimate. The bootstrap rounds are resamples of the same counts, so
their optima lie close to it: each round starts there and takes chord steps (Newton steps that reuse
the point's Hessian, inverted once), which converge to the same optimum as Newton's, in a few
iterations, with no n×n solve per round. A round that does not converge that way (a model that won
every resampled vote) is refitted with full Newton steps. 2M votes across 200 models with 100
rounds fit in well under a second; the votes are aggregated first, in SQLite or numpy, and the fit
only ever sees counts (`rate_counts`; bench/ratings.py).

A model that won (or lost) every one of its votes has no finite MLE. A weak Gaussian prior on the
natural-log strengths (precision PRIOR, i.e. variance 1/PRIOR = 1000) keeps it finite; with a few
dozen votes per model it moves ratings by far less than a point.

Intervals come from a seeded bootstrap: the vote counts per (pair, outcome) are resampled
(the Poisson bootstrap: each count c is redrawn as Poisson(c), which is the multinomial resample
with a total that varies by about √N; a common scale of all counts barely moves Bradley–Terry
ratings, and the Poisson draws cost half the multinomial's at 60,000 cells), refitted, and the 2.5
and 97.5 percentiles of each model's rating form its 95%
interval. The anchor is fixed at 1000 in every round, so its interval has zero width and the
others' are relative to it. Rank = 1 + the number of models whose lower bound is above this
model's upper bound, so models whose intervals overlap share a rank.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from tunelab.errors import UserError

SCALE = 400.0          # rating points per log10-odds unit
INIT = 1000.0          # the anchor's rating, and every model's starting Elo
PRIOR = 1e-3           # precision of the Gaussian prior on natural-log strengths (see module doc)
ROUNDS = 200           # bootstrap rounds
ELO_K = 4              # online Elo step, as Arena's secondary column
OUTCOMES = ("model_a", "model_b", "tie", "tie (bothbad)")


@dataclass
class Rating:
    model: str
    rating: float
    ci_low: float
    ci_high: float
    rank: int
    votes: int
    wins: float            # ties counted as half
    win_rate: float | None  # against the base model, ties as half; None with no votes against it
    elo: float | None       # None when rated from counts without the votes' order

    def to_dict(self) -> dict:
        return asdict(self)


def pair_counts(battles: Iterable[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Aggregate battles into (models, decisive, ties): decisive[i, j] = wins of i over j,
    ties[i, j] = ties (of either kind) between i and j, symmetric. Models are sorted by name."""
    return from_counts(Counter((b["model_a"], b["model_b"], b["winner"]) for b in battles).items())


def from_counts(grouped: Iterable[tuple[tuple[str, str, str], int]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(models, decisive, ties) as `pair_counts` returns them, from ((model_a, model_b, winner), count)
    groups: what `GROUP BY model_a, model_b, winner` gives, so that millions of votes reach the fit as a
    few thousand rows."""
    tally: dict[tuple[str, str, str], int] = {}
    for (a, c, w), k in grouped:
        if w not in OUTCOMES:
            raise UserError(f"battle {a} vs {c}: winner {w!r} is not one of {', '.join(OUTCOMES)}")
        if a != c:  # a model against itself says nothing about strengths
            tally[(a, c, w)] = tally.get((a, c, w), 0) + k
    models = sorted({m for a, c, _ in tally for m in (a, c)})
    index = {m: i for i, m in enumerate(models)}
    n = len(models)
    decisive = np.zeros((n, n))
    ties = np.zeros((n, n))
    for (a, c, w), k in tally.items():
        i, j = index[a], index[c]
        if w == "model_a":
            decisive[i, j] += k
        elif w == "model_b":
            decisive[j, i] += k
        else:
            ties[i, j] += k
            ties[j, i] += k
    return models, decisive, ties


def fit(wins: np.ndarray, prior: float = PRIOR, tol: float = 1e-9, max_iter: int = 200) -> np.ndarray:
    """Bradley–Terry strengths (natural-log units, mean zero) from win matrices.

    `wins` is (n, n) or a batch (B, n, n) with wins[b, i, j] = wins of i over j (ties already split
    as halves). Maximizes Σ W_ij·log σ(β_i − β_j) − prior/2·Σβ² by damped Newton steps, batched."""
    single = wins.ndim == 2
    W = wins[None] if single else wins
    B, n, _ = W.shape
    N = W + W.transpose(0, 2, 1)
    won = W.sum(axis=2)
    beta = np.zeros((B, n))
    eye = np.eye(n)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(beta[:, None, :] - beta[:, :, None]))  # p[b,i,j] = P(i beats j)
        grad = won - (N * p).sum(axis=2) - prior * beta
        c = N * p * (1.0 - p)
        # Negative Hessian: the weighted graph Laplacian plus the prior, positive definite.
        H = -c + eye * (c.sum(axis=2)[:, :, None] + prior)
        step = np.linalg.solve(H, grad[:, :, None])[:, :, 0]
        # Far from the optimum (a model that won almost everything) a full step can overshoot;
        # capping each move at 2 natural-log units keeps the iteration monotone in practice.
        largest = np.abs(step).max(axis=1, keepdims=True)
        step = step * np.minimum(1.0, 2.0 / np.maximum(largest, 1e-300))
        beta += step
        if largest.max() < tol:
            break
    beta -= beta.mean(axis=1, keepdims=True)
    return beta[0] if single else beta


def to_rating(beta: np.ndarray, anchor: int) -> np.ndarray:
    """Natural-log strengths to the 400·log10 scale with the anchor at exactly 1000."""
    return INIT + SCALE * (beta - beta[..., anchor:anchor + 1]) / math.log(10)


def bootstrap(decisive: np.ndarray, ties: np.ndarray, anchor: int, rounds: int = ROUNDS,
              seed: int = 0, start: np.ndarray | None = None) -> np.ndarray:
    """Ratings for `rounds` Poisson resamples of the vote counts: shape (rounds, n). `start`: the
    strengths `fit` gives the counts themselves, when the caller has them."""
    n = decisive.shape[0]
    iu = np.triu_indices(n, 1)
    # One cell per (unordered pair, outcome): i beats j, j beats i, tie.
    cells = np.concatenate([decisive[iu], decisive.T[iu], ties[iu]])
    draws = np.random.default_rng(seed).poisson(cells, size=(rounds, len(cells))).astype(float)
    m = len(iu[0])
    W = np.zeros((rounds, n, n))
    W[:, iu[0], iu[1]] = draws[:, :m] + draws[:, 2 * m:] / 2
    W[:, iu[1], iu[0]] = draws[:, m:2 * m] + draws[:, 2 * m:] / 2
    return to_rating(refit(W, fit(decisive + ties / 2) if start is None else start), anchor)


def refit(wins: np.ndarray, start: np.ndarray, prior: float = PRIOR, tol: float = 1e-7,
          max_iter: int = 30) -> np.ndarray:
    """`fit` of a batch (B, n, n) of win matrices whose optima lie near `start` (bootstrap resamples
    of the counts `start` was fitted on): chord steps from `start` with the Hessian there, inverted
    once; the rounds whose steps do not shrink below `tol` get full Newton steps (`fit`). The default
    tol, 1e-7 natural-log units, is 2e-5 rating points; each step shrinks the error about 30-fold."""
    N = wins + wins.transpose(0, 2, 1)
    won = wins.sum(axis=2)
    p = 1.0 / (1.0 + np.exp(start[None, :] - start[:, None]))
    c = N.mean(axis=0) * p * (1.0 - p)
    inverse = np.linalg.inv(np.diag(c.sum(axis=1) + prior) - c)  # the negative Hessian at start
    beta = np.repeat(start[None], len(wins), axis=0)
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(max_iter):
            p = beta[:, None, :] - beta[:, :, None]  # in place from here: p[b, i, j] = P(i beats j)
            np.exp(p, out=p)
            p += 1.0
            np.reciprocal(p, out=p)
            step = (won - np.einsum("bij,bij->bi", N, p) - prior * beta) @ inverse
            beta += step
            largest = np.abs(step).max(axis=1)
            if not (largest >= tol).any():  # NaN (a diverging round) counts as not converged
                break
    lost = ~(largest < tol)
    if lost.any():
        beta[lost] = fit(wins[lost], prior, tol)
    return beta - beta.mean(axis=1, keepdims=True)


def online_elo(battles: Iterable[dict], k: float = ELO_K) -> dict[str, float]:
    """Arena's online Elo: every model starts at 1000, battles applied in the given order."""
    index: dict[str, int] = {}
    a, b, score = [], [], []
    points = {"model_a": 1.0, "model_b": 0.0}
    for x in battles:
        if x["model_a"] != x["model_b"]:
            a.append(index.setdefault(x["model_a"], len(index)))
            b.append(index.setdefault(x["model_b"], len(index)))
            score.append(points.get(x["winner"], 0.5))
    elo = online_elo_codes(a, b, score, len(index), k)
    return {m: elo[i] for m, i in index.items()}


def online_elo_codes(a: list[int], b: list[int], score: list[float], n: int, k: float = ELO_K) -> list[float]:
    """online_elo on battles given as model numbers (a[t] against b[t], a's score 1, ½ or 0), ratings by
    number. Online Elo is sequential by definition, so this stays a Python loop: plain lists and local
    names make it about 0.15 µs a battle (0.3 s for 2M); numpy arrays would be 4x slower here."""
    elo = [INIT] * n
    to_e = math.log(10) / SCALE
    exp = math.exp
    for i, j, s in zip(a, b, score):
        ri, rj = elo[i], elo[j]
        step = k * (s - 1.0 / (1.0 + exp((rj - ri) * to_e)))
        elo[i] = ri + step
        elo[j] = rj - step
    return elo


def ranks(ci_low: np.ndarray, ci_high: np.ndarray) -> np.ndarray:
    """1 + the number of models whose lower bound is above this model's upper bound."""
    return 1 + (ci_low[None, :] > ci_high[:, None]).sum(axis=1)


def rate(battles: Iterable[dict], anchor: str | None = None, base: str | None = None,
         rounds: int = ROUNDS, seed: int = 0) -> list[Rating]:
    """Ratings for every model that appears in `battles`, best first.

    `battles`: dicts with model_a, model_b and winner (one of OUTCOMES), in vote order (order
    matters only for Elo). `anchor` gets exactly 1000 (default: `base`, else the first model by
    name). `base` is the model win rates are measured against (default: the anchor)."""
    battles = list(battles)
    models, decisive, ties = pair_counts(battles)
    return rate_counts(models, decisive, ties, anchor, base, rounds, seed, elo=online_elo(battles))


def rate_counts(models: list[str], decisive: np.ndarray, ties: np.ndarray, anchor: str | None = None,
                base: str | None = None, rounds: int = ROUNDS, seed: int = 0,
                elo: dict[str, float] | None = None) -> list[Rating]:
    """`rate` from counts already aggregated (`pair_counts`, `from_counts`, or a GROUP BY in SQLite), best
    first: the fit needs no single vote. Online Elo does (their order), so it comes as `elo`, by model;
    without it the Elo column is None."""
    if not models:
        return []
    anchor = anchor or base or models[0]
    base = base or anchor
    for role, name in (("anchor", anchor), ("base", base)):
        if name not in models:
            raise UserError(f"{role} model {name!r} has no votes; models with votes: {', '.join(models)}")
    a = models.index(anchor)
    W = decisive + ties / 2
    beta = fit(W)
    point = to_rating(beta, a)
    if rounds > 0:
        boot = bootstrap(decisive, ties, a, rounds, seed, start=beta)
        low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    else:
        low, high = point.copy(), point.copy()
    rank = ranks(low, high)
    votes = (decisive + decisive.T + ties).sum(axis=1)
    b = models.index(base)
    vs_base = decisive[:, b] + decisive[b, :] + ties[:, b]
    out = [Rating(model=m, rating=float(point[i]), ci_low=float(low[i]), ci_high=float(high[i]),
                  rank=int(rank[i]), votes=int(votes[i]), wins=float(W[i].sum()),
                  win_rate=float(W[i, b] / vs_base[i]) if vs_base[i] > 0 and i != b else None,
                  elo=elo[m] if elo is not None else None)
           for i, m in enumerate(models)]
    return sorted(out, key=lambda r: (r.rank, -r.rating))
