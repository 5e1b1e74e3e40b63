"""How well a reader reads: exact match, case-insensitive exact match, CER, confusions."""

from __future__ import annotations

from collections import Counter


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
