"""CTC decoding and calibration, checked against brute force; no TensorFlow is imported."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from decode import beam_search, best_path_in_length_range, calibrated, decode, fit_calibration
from metrics import calibration_report
from spec import ModelSpec


def collapse(path: tuple[int, ...]) -> list[int]:
    """CTC's many-to-one map: merge repeats, then drop blanks (0)."""
    return [k for i, k in enumerate(path) if k and (i == 0 or path[i - 1] != k)]


def all_paths(steps: int, classes: int) -> np.ndarray:
    return np.array(np.meshgrid(*[range(classes)] * steps, indexing="ij")).reshape(steps, -1).T


def test_decoding_needs_no_tensorflow():
    code = ("import sys, decode, reader; "
            "sys.exit(bool({'tensorflow', 'keras', 'sklearn'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_greedy_decoding_collapses_repeats_and_reports_path_probability():
    spec = ModelSpec("xy", 1, 3)
    probs = np.zeros((1, 6, 3), dtype=np.float32)
    path = [1, 1, 0, 1, 2, 0]  # "x x _ x y _" -> "xxy"
    for t, k in enumerate(path):
        probs[0, t] = 0.05
        probs[0, t, k] = 0.9
    texts, conf = decode(probs, spec)
    assert texts == ["xxy"]
    assert conf[0] == pytest.approx(0.9 ** 6, rel=1e-3)
    beam_texts, beam_conf = decode(probs, spec, beam_width=4)
    assert beam_texts == ["xxy"] and 0.9 ** 6 <= beam_conf[0] <= 1  # all of its paths together


def test_greedy_decoding_is_the_collapsed_best_path():
    rng = np.random.default_rng(0)
    spec = ModelSpec("abcdef", 1, 12)  # every length 12 steps can produce: nothing to constrain
    probs = rng.dirichlet(np.ones(spec.num_classes) * 0.3, size=(32, 12))
    texts, conf = decode(probs, spec)
    for row, text, c in zip(probs, texts, conf):
        best = tuple(row.argmax(axis=-1))
        assert text == spec.decode(collapse(best))
        assert c == pytest.approx(np.prod(row.max(axis=-1)), rel=1e-6)
    assert len(set(texts)) > 20


def test_beam_search_finds_the_label_whose_paths_together_are_most_likely():
    # Brute force over every path of 6 steps and 4 classes: with a beam as wide as the label
    # space (1,093 labels), prefix beam search is exact; its answer may differ from greedy's.
    rng = np.random.default_rng(2)
    paths = all_paths(6, 4)
    differs_from_greedy = 0
    for _ in range(20):
        log_probs = np.log(rng.dirichlet(np.ones(4) * 0.7, size=6))
        totals: dict[tuple, float] = {}
        for path, log_p in zip(paths, log_probs[np.arange(6), paths].sum(axis=1)):
            label = tuple(collapse(tuple(path)))
            totals[label] = np.logaddexp(totals.get(label, -np.inf), log_p)
        best = max(totals, key=totals.get)
        label, log_p = beam_search(log_probs, beam_width=1093)
        assert tuple(label) == best and log_p == pytest.approx(totals[best])
        differs_from_greedy += collapse(tuple(log_probs.argmax(axis=1))) != list(best)
    assert differs_from_greedy > 0


def test_length_constrained_path_is_the_best_path_of_an_allowed_length():
    # Brute force over every path of 6 steps and 4 classes (4,096 paths) on random scores.
    rng = np.random.default_rng(1)
    paths = all_paths(6, 4)
    for trial in range(12):
        log_probs = np.log(rng.dirichlet(np.ones(4) * 0.5, size=6))
        scores = log_probs[np.arange(6), paths].sum(axis=1)
        min_length, max_length = [(1, 1), (2, 2), (3, 3), (1, 3), (4, 5), (2, 6)][trial % 6]
        allowed = [min_length <= len(collapse(tuple(p))) <= max_length for p in paths]
        best = np.flatnonzero(allowed)[scores[allowed].argmax()]
        label, path_log_prob = best_path_in_length_range(log_probs, min_length, max_length)
        assert path_log_prob == pytest.approx(scores[best])
        assert label == collapse(tuple(paths[best]))


def test_decoding_keeps_a_doubled_letter_when_the_length_is_known():
    # "x x _? x y": the blank between the two x loses narrowly, so greedy reads "xy".
    probs = np.full((1, 6, 3), 0.02, dtype=np.float32)
    for t, (k, p) in enumerate([(1, 0.9), (1, 0.9), (1, 0.5), (1, 0.9), (2, 0.9), (0, 0.9)]):
        probs[0, t, k] = p
        probs[0, t, 0 if k else 1] = 1 - p - 0.02
    free_texts, free_conf = decode(probs, ModelSpec("xy", 1, 3))
    texts, conf = decode(probs, ModelSpec("xy", 3, 3))
    assert free_texts == ["xy"] and texts == ["xxy"]
    assert conf[0] == pytest.approx(free_conf[0] * 0.48 / 0.5, rel=1e-3)
    beam_texts, _ = decode(probs, ModelSpec("xy", 3, 3), beam_width=4)
    assert beam_texts == ["xxy"]


def test_calibration_maps_path_probability_to_answer_accuracy():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.05, 1.0, 4000)
    correct = rng.uniform(size=raw.size) < raw ** 2  # raw probability is over-confident
    params = fit_calibration(raw, correct)
    spec = ModelSpec(calibration=params)
    fixed = calibrated(raw, spec)
    assert calibration_report(fixed, correct)["ece"] < calibration_report(raw, correct)["ece"] / 2
    assert np.all((fixed >= 0) & (fixed <= 1))
    assert fit_calibration(raw, np.ones(raw.size, bool)) is None
    np.testing.assert_allclose(calibrated(raw, ModelSpec()), raw)
