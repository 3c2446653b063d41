"""Inter-annotator agreement over nominal labels (a, b, tie, both_bad).

Cohen's κ (scikit-learn) when exactly two annotators rated the items; Krippendorff's α (the
`krippendorff` package, nominal level) for any number of annotators, which also copes with the
missing ratings that overlap-K assignment produces (not every annotator sees every pair).
"""
from __future__ import annotations

import math
from collections import Counter

LABELS = ("a", "b", "tie", "both_bad")


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """κ between two annotators' labels on the same items; None when undefined (e.g. one label only)."""
    if len(first) != len(second) or len(first) < 2:
        return None
    if len(set(first) | set(second)) < 2:
        return None  # both always gave the same single label: chance agreement is 1, κ is 0/0
    from sklearn.metrics import cohen_kappa_score
    return _finite(cohen_kappa_score(first, second, labels=list(LABELS)))


def krippendorff_alpha(units: dict[object, dict[object, str]]) -> float | None:
    """α over units (item -> {annotator: label}); items with fewer than two labels carry no information."""
    import numpy as np
    import krippendorff

    units = {u: r for u, r in units.items() if len(r) >= 2}
    if not units:
        return None
    raters = sorted({a for r in units.values() for a in r}, key=str)
    values = {v for r in units.values() for v in r.values()}
    if len(values) < 2:
        return None  # perfect agreement on one label: expected disagreement is 0, α is 0/0
    index = {label: i for i, label in enumerate(LABELS)}
    matrix = np.full((len(raters), len(units)), np.nan)
    row = {a: i for i, a in enumerate(raters)}
    for j, ratings in enumerate(units.values()):
        for annotator, label in ratings.items():
            matrix[row[annotator], j] = index[label]
    return _finite(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal",
                                      value_domain=list(range(len(LABELS)))))


def majority(labels: list[str]) -> str | None:
    """The strict plurality label, or None when the top two are level (or there are no labels)."""
    if not labels:
        return None
    top = Counter(labels).most_common(2)
    if len(top) > 1 and top[0][1] == top[1][1]:
        return None
    return top[0][0]


def percent_agreement(units: dict[object, dict[object, str]]) -> float | None:
    """Share of annotator pairs, over all items, that gave the same label."""
    same = total = 0
    for ratings in units.values():
        labels = list(ratings.values())
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                total += 1
                same += labels[i] == labels[j]
    return same / total if total else None
