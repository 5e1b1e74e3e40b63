"""How well a reader reads: exact match, case-insensitive exact match, CER, confusions."""

from __future__ import annotations

from collections import Counter

import numpy as np


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions, each costing 1."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def score(predictions: list[str], truths: list[str]) -> dict:
    """Exact match, case-insensitive exact match and character error rate.

    CER is the total edit distance over the total length of the true labels, so a
    dropped or extra symbol counts as an error, not only a wrong one.
    """
    if len(predictions) != len(truths):
        raise ValueError("predictions and truths differ in number")
    n = len(truths)
    if n == 0:
        return {"n": 0, "exact_match": 0.0, "exact_match_ci": 0.0, "cer": 0.0}
    exact = sum(p == t for p, t in zip(predictions, truths))
    exact_ci = sum(p.lower() == t.lower() for p, t in zip(predictions, truths))
    errors = sum(edit_distance(p, t) for p, t in zip(predictions, truths))
    return {
        "n": n,
        "exact_match": exact / n,
        "exact_match_ci": exact_ci / n,
        "cer": errors / max(1, sum(len(t) for t in truths)),
    }


def confusion_pairs(predictions: list[str], truths: list[str]) -> Counter:
    """(true, predicted) symbol substitutions, counted where lengths agree."""
    pairs: Counter = Counter()
    for p, t in zip(predictions, truths):
        if len(p) == len(t):
            pairs.update((a, b) for a, b in zip(t, p) if a != b)
    return pairs


def calibration_report(confidences: list[float], correct: list[bool], bins: int = 10) -> dict:
    """Reliability of the confidence as a probability of a right answer.

    Returns the expected calibration error (the sample-weighted gap between mean confidence
    and accuracy over equal-width bins), the table behind it, and the accuracy kept when
    only the most confident 90% of answers are accepted.
    """
    conf = np.asarray(confidences, dtype=float)
    hit = np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            gap = abs(conf[mask].mean() - hit[mask].mean())
            ece += gap * mask.mean()
            table.append((edges[b], edges[b + 1], int(mask.sum()), float(conf[mask].mean()),
                          float(hit[mask].mean())))
    order = np.argsort(-conf, kind="stable")
    keep = order[: max(1, int(round(0.9 * len(conf))))]
    return {"ece": float(ece), "table": table, "accuracy_at_90_coverage": float(hit[keep].mean()),
            "accuracy_at_100_coverage": float(hit.mean()),
            "threshold_at_90_coverage": float(conf[keep].min())}
