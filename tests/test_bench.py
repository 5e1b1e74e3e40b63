"""The benchmarks' own measuring code, on generated glyphs and known scores."""

from __future__ import annotations

import sys

import numpy as np
from captcha.image import ImageCaptcha

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import separability  # noqa: E402


def test_pair_separation_scores_the_line_not_where_training_put_it():
    is_second = np.arange(1000) % 2 == 1
    shifted = np.where(is_second, 0.95, 0.9)  # every score above 0.5, yet perfectly separated
    assert separability.pair_separation(shifted, is_second) == (0.0, 1.0)
    balanced, auc = separability.pair_separation(np.where(is_second, 0.1, 0.9), is_second)
    assert auc == 0.0 and balanced == 0.5  # the wrong way round: no threshold helps
    # Scores that say nothing (a saturated classifier) are chance, whatever their order.
    assert separability.pair_separation(np.ones(1000), is_second) == (0.5, 0.5)
    noise = np.random.default_rng(0).random(1000)
    balanced, auc = separability.pair_separation(noise, is_second)
    assert 0.4 < balanced <= 0.5 and abs(auc - 0.5) < 0.06


def test_glyphs_cut_from_captchas_at_either_scale_are_centred_on_their_ink():
    generator = ImageCaptcha(width=200, height=separability.GENERATOR_HEIGHT)
    rng = np.random.default_rng(0)
    for scale, rows in separability.SCALES.items():
        box = separability.glyph_box(rows)
        crops = [separability.glyph_in_captcha(generator, "W", rng, rows)[0] for _ in range(40)]
        assert all(crop.shape == box for crop in crops), scale
        ink_per_column = np.mean(crops, axis=(0, 1))  # neighbours overlap the edges of the box
        quarter = box[1] // 4
        centre = ink_per_column[quarter: -quarter].mean()
        edges = np.concatenate([ink_per_column[:quarter], ink_per_column[-quarter:]]).mean()
        assert centre > 1.2 * edges, scale
    assert separability.glyph_box(separability.GENERATOR_HEIGHT) == (68, 56)
