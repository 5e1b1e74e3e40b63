"""From per-step probabilities to text and a confidence: CTC decoding and calibration.

NumPy only, so any backend that produces the model's output (Keras, or an exported model
without TensorFlow) decodes it the same way. Class 0 is the CTC blank; see spec.ModelSpec.

- greedy: the most likely class per step, repeats merged, blanks dropped;
- beam search: the most likely label, summing over the paths that spell it;
- when an answer has a length the spec never allows, the most likely path of an allowed
  length replaces it (`best_path_in_length_range`);
- `calibrated` turns the best-path probability into P(the whole answer is right).
"""

from __future__ import annotations

import math

import numpy as np

from spec import ModelSpec


def log_of_probs(probs: np.ndarray) -> np.ndarray:
    """Log of softmax outputs, floored at 1e-8 so that a zero gives a finite log (as in the loss)."""
    return np.log(np.clip(probs, 1e-8, 1.0))


def greedy(log_probs: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """(N, steps, classes) log-probabilities -> labels as class indices, and the log
    probability of each best path."""
    best = log_probs.argmax(axis=-1)
    first_of_run = np.ones_like(best, dtype=bool)
    first_of_run[:, 1:] = best[:, 1:] != best[:, :-1]
    labels = [[int(k) for k in row[keep] if k] for row, keep in zip(best, first_of_run)]
    return labels, log_probs.max(axis=-1).sum(axis=-1)


def beam_search(log_probs: np.ndarray, beam_width: int) -> tuple[list[int], float]:
    """CTC prefix beam search over one (steps, classes) array: the label whose paths
    together are most likely, among those the beam keeps, and its log probability.

    Each prefix carries two scores, its paths ending in a blank and ending in its last
    symbol, because only after a blank does a repeated symbol start a new one.
    """
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    for step in log_probs:
        # Only the likeliest classes of this step can lead a beam that survives pruning.
        candidates = [int(c) for c in np.argsort(step)[::-1][:beam_width + 1] if c != 0]
        grown: dict[tuple[int, ...], list[float]] = {}

        def add(prefix: tuple[int, ...], slot: int, log_p: float) -> None:
            scores = grown.setdefault(prefix, [-math.inf, -math.inf])
            scores[slot] = np.logaddexp(scores[slot], log_p)

        for prefix, (ends_blank, ends_symbol) in beams.items():
            total = np.logaddexp(ends_blank, ends_symbol)
            add(prefix, 0, total + step[0])
            last = prefix[-1] if prefix else None
            for c in candidates:
                if c == last:
                    add(prefix, 1, ends_symbol + step[c])  # the same symbol, merged
                    add(prefix + (c,), 1, ends_blank + step[c])  # a new one after a blank
                else:
                    add(prefix + (c,), 1, total + step[c])
        ranked = sorted(grown.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:beam_width]
        beams = {prefix: (scores[0], scores[1]) for prefix, scores in ranked}
    prefix, (ends_blank, ends_symbol) = max(beams.items(), key=lambda kv: np.logaddexp(*kv[1]))
    return list(prefix), float(np.logaddexp(ends_blank, ends_symbol))


def best_path_in_length_range(log_probs: np.ndarray, min_length: int,
                              max_length: int) -> tuple[list[int], float]:
    """The most likely CTC path whose label has min_length..max_length symbols.

    log_probs: (steps, classes), class 0 the blank. Returns (label as class indices, path
    log-probability). A Viterbi search over (symbols emitted so far, current class): the
    greedy path is the unconstrained best path, so this is what greedy decoding becomes when
    the label length is known. It recovers doubled letters whose separating blank lost
    narrowly ("MM" read as "M") and symbols lost in overlaps.
    """
    steps, classes = log_probs.shape
    counts = np.arange(max_length + 1)
    class_ids = np.arange(classes)
    score = np.full((max_length + 1, classes), -np.inf)
    score[0, 0] = log_probs[0, 0]
    score[1, 1:] = log_probs[0, 1:]
    from_count = np.zeros((steps, max_length + 1, classes), dtype=np.int64)
    from_class = np.zeros_like(from_count)
    for t in range(1, steps):
        new = np.empty_like(score)
        # A blank keeps the count and may follow anything.
        best_before = score.argmax(axis=1)
        new[:, 0] = score[counts, best_before]
        from_count[t, :, 0], from_class[t, :, 0] = counts, best_before
        # Symbol c after k - 1 symbols: emitted anew after any other class (blank included),
        # or c repeated with k symbols already (CTC merges it).
        before = score[:-1]
        top_two = np.argsort(before, axis=1)[:, :-3:-1]
        emit_from = np.where(class_ids == top_two[:, :1], top_two[:, 1:], top_two[:, :1])
        emit = np.take_along_axis(before, emit_from, axis=1)
        repeat = score[1:] >= emit
        new[1:, 1:] = np.maximum(score[1:], emit)[:, 1:]
        new[0, 1:] = -np.inf
        from_count[t, 1:, 1:] = np.where(repeat, counts[1:, None], counts[:-1, None])[:, 1:]
        from_class[t, 1:, 1:] = np.where(repeat, class_ids, emit_from)[:, 1:]
        score = new + log_probs[t]
    ends = score[min_length:]
    count, cls = np.unravel_index(ends.argmax(), ends.shape)
    count += min_length
    path_log_prob = float(score[count, cls])
    label = []
    for t in range(steps - 1, 0, -1):
        prev_count, prev_class = from_count[t, count, cls], from_class[t, count, cls]
        if prev_count < count:
            label.append(int(cls))
        count, cls = prev_count, prev_class
    if cls > 0:
        label.append(int(cls))
    return label[::-1], path_log_prob


def decode(probs: np.ndarray, spec: ModelSpec, beam_width: int = 1) -> tuple[list[str], np.ndarray]:
    """(N, steps, classes) probabilities -> texts and the probability of each answer's path
    (beam search: of its paths together).

    beam_width 1 is greedy decoding. An answer whose length the spec does not allow is
    replaced by the best path of an allowed length.
    """
    log_probs = log_of_probs(np.asarray(probs))
    if beam_width > 1:
        found = [beam_search(row, beam_width) for row in log_probs]
        labels, scores = [label for label, _ in found], np.array([s for _, s in found])
    else:
        labels, scores = greedy(log_probs)
    for i, label in enumerate(labels):
        if not spec.min_length <= len(label) <= spec.max_length:
            labels[i], scores[i] = best_path_in_length_range(log_probs[i], spec.min_length,
                                                             spec.max_length)
    return [spec.decode(label) for label in labels], np.clip(np.exp(scores), 0.0, 1.0)


def calibrated(path_probs, spec: ModelSpec) -> np.ndarray:
    """Best-path probabilities -> probabilities that the whole answer is right.

    Uses the logistic map fitted on validation data at the end of training; models
    without one report the best-path probability itself.
    """
    path_probs = np.asarray(path_probs, dtype=np.float64)
    if spec.calibration is None:
        return path_probs
    slope, intercept = spec.calibration
    return 1.0 / (1.0 + np.exp(-(slope * np.log(np.clip(path_probs, 1e-12, 1.0)) + intercept)))


def fit_calibration(path_probs, correct) -> tuple[float, float] | None:
    """Logistic regression of correctness on log best-path probability (None if one class)."""
    from sklearn.linear_model import LogisticRegression  # training only: 2 s to import

    correct = np.asarray(correct, dtype=int)
    if correct.min() == correct.max():
        return None
    features = np.log(np.clip(np.asarray(path_probs, dtype=np.float64), 1e-12, 1.0))[:, None]
    fit = LogisticRegression(C=1.0).fit(features, correct)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])
