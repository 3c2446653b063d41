"""Active pair selection: which two models an annotator compares next, so the leaderboard settles sooner.

Why: a vote on two models whose order is already clear teaches the leaderboard almost nothing, while
a vote on two models whose intervals overlap can change the ranking. Handing pairs out uniformly
spends most votes on the clear ones. So a campaign with `sampling = 'active'` draws the model pair
of the next pair at random with the probabilities below, then hands out that model pair's first
free pair by position (votes._claim); 'uniform' campaigns keep the plain shuffled order.

The formula. Fit Bradley–Terry on the campaign's votes so far (people's votes on non-gold pairs,
plus the standing verdict of the judge on pairs it triaged: those stand in for people), with
`ratings.fit` (natural-log strengths β). Its uncertainty is the Laplace approximation: the
covariance Σ is the inverse of the negative Hessian of the penalized log-likelihood at β,

    H = L + PRIOR·I,   L = the graph Laplacian with weights N_kl·p_kl·(1 − p_kl),

(N_kl the votes between k and l, p_kl = σ(β_k − β_l)): one n×n inverse, no bootstrap. The
leaderboard's intervals are relative to its anchor a, so model k's half-width is ∝ s_k, the sd of
β_k − β_a (zero for the anchor). Then

  * each comparison k < l gets a weight u_kl = P(wrong)·TOP^r / (s_k + s_l), where
    P(wrong) = Φ(−|β_k − β_l| / (s_k + s_l)) is near ½ while the two intervals overlap and falls
    fast once they part, and r is the better model's place on the current board (0 for the leader):
    near the top counts more;
  * one more vote on the model pair (i, j) adds the information w_ij = p_ij(1 − p_ij) along
    e_i − e_j, which shrinks s_k² by (Sherman–Morrison)  c_k² · w_ij / (1 + w_ij · var(β_i − β_j)),
    c_k = cov(β_k − β_a, β_i − β_j), so s_k by about that over 2·s_k;
  * the gain of (i, j) is Σ_kl u_kl · (shrink of s_k + shrink of s_l): how much one vote on (i, j)
    narrows the overlapping intervals, directly or through other models (a vote on i vs j also
    narrows k's interval when k was compared with i).

The floor. Some randomness stays, so that every model pair keeps being sampled (the BT fit is only
unbiased when no comparison is starved, and a wrong early estimate can be corrected):

    P(i, j) = FLOOR / A + (1 − FLOOR) · gain_ij / Σ gain,

over the A model pairs that still have a pair to hand out, so each gets at least FLOOR / A. With no
votes, pairs with the anchor come first (they narrow every interval). bench/active_sampling.py measures
the result: FLOOR and TOP were tuned there.
"""
from __future__ import annotations

import math
import random

import numpy as np

from tunelab import ratings
from tunelab.feedback.votes import PEOPLE_PER_PAIR, WINNER_OF, model_pair_counts

FLOOR = 0.15   # share of every draw spread uniformly over the available model pairs
TOP = 0.85     # weight of a comparison per place its better model stands below the leader


def model_pair_probabilities(models: list[str], decisive: np.ndarray, ties: np.ndarray, available,
                             anchor: str | None = None) -> dict[tuple[str, str], float]:
    """The chance of drawing each available model pair next (see the module doc); they sum to 1.

    `models` index the rows of `decisive` (wins of row over column) and `ties` (symmetric), as
    `ratings.pair_counts` returns them, and may include models with no votes yet. `available` holds
    (model_a, model_b) name pairs, in either order; the result is keyed by them as given. `anchor` is
    the leaderboard's (default: the first model by name, as `ratings.rate`)."""
    available = list(dict.fromkeys(available))
    if not available:
        return {}
    index = {m: k for k, m in enumerate(models)}
    a = index.get(anchor, index[min(models)])
    gain = _gains(decisive + ties / 2, [(index[x], index[y]) for x, y in available], a)
    total = gain.sum()
    share = gain / total if total > 0 and np.isfinite(total) else np.full(len(available), 1 / len(available))
    return {pair: FLOOR / len(available) + (1 - FLOOR) * float(s) for pair, s in zip(available, share)}


def _gains(W: np.ndarray, cols: list[tuple[int, int]], anchor: int) -> np.ndarray:
    """The gain of one more vote on each model pair in `cols` (index pairs), from win matrix W."""
    n = W.shape[0]
    beta = ratings.fit(W)
    N = W + W.T
    p = 1.0 / (1.0 + np.exp(beta[None, :] - beta[:, None]))   # p[k, l] = P(k beats l)
    c = N * p * (1.0 - p)
    sigma = np.linalg.inv(np.diag(c.sum(axis=1) + ratings.PRIOR) - c)
    rel = sigma - sigma[anchor][None, :]                      # rel[k] = cov(β_k − β_a, β·)
    sd = np.sqrt(np.maximum(np.diag(rel) - rel[:, anchor], 1e-12))
    k, l = np.triu_indices(n, 1)
    width = sd[k] + sd[l]
    wrong = np.array([0.5 * math.erfc(z / math.sqrt(2)) for z in np.abs(beta[k] - beta[l]) / width])
    place = (beta[None, :] > beta[:, None] + 1e-9).sum(axis=1)  # models above: 0 for the leader, ties share
    u = wrong * TOP ** np.minimum(place[k], place[l]) / width
    per_model = np.bincount(k, u, n) + np.bincount(l, u, n)
    i, j = np.array([x for x, _ in cols]), np.array([y for _, y in cols])
    cov = rel[:, i] - rel[:, j]                               # cov(β_k − β_a, β_i − β_j)
    w = p[i, j] * (1.0 - p[i, j])
    var_ij = sigma[i, i] + sigma[j, j] - 2 * sigma[i, j]
    return (per_model[:, None] * cov ** 2 / (2 * sd[:, None])).sum(axis=0) * w / (1.0 + w * var_ij)


# The standing verdicts per pair: a judge's on the pairs it triaged (they stand in for people's votes).
_TRIAGED_PER_PAIR = ("SELECT j.pair_id, j.choice, count(*) AS n, max(j.cast_at) AS last FROM judgments j "
                     "JOIN judges g ON g.id = j.judge_id JOIN pairs p ON p.id = j.pair_id AND p.triaged_by = g.name "
                     "WHERE j.campaign_id = ? GROUP BY j.pair_id, j.choice")


def campaign_counts(db, campaign_id: int, models: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(models, decisive, ties) from the campaign's people's votes on non-gold pairs and the standing
    verdicts on triaged pairs; `models` come first (in their order, once each), any other voted one after."""
    tally = model_pair_counts(db, f"{PEOPLE_PER_PAIR} UNION ALL {_TRIAGED_PER_PAIR}", [campaign_id, campaign_id])
    voted, decisive, ties = ratings.from_counts(((a, b, WINNER_OF[choice]), n) for a, b, choice, n, _ in tally)
    models = list(dict.fromkeys([*models, *(m for a, b, *_ in tally for m in (a, b))]))
    place = [models.index(m) for m in voted]   # from_counts sorts by name; `models` keeps the caller's order
    counts = np.zeros((2, len(models), len(models)))
    counts[np.ix_([0, 1], place, place)] = decisive, ties
    return models, counts[0], counts[1]


def draw_model_pair(db, campaign_id: int, available, rng=random) -> tuple[str, str]:
    """Inside the claim: one of the `available` model pairs, drawn with `model_pair_probabilities`
    from the campaign's votes so far."""
    from tunelab.leaderboard import default_anchor
    models, decisive, ties = campaign_counts(db, campaign_id, [m for pair in available for m in pair])
    voted = sorted(m for m, n in zip(models, (decisive + decisive.T + ties).sum(axis=1)) if n)
    probs = model_pair_probabilities(models, decisive, ties, available, default_anchor(db, voted))
    pairs = list(probs)
    return rng.choices(pairs, weights=[probs[p] for p in pairs])[0]
