"""The synthetic data generators: labels, file names, the varied and multicolorcaptcha styles."""

from __future__ import annotations

import copy
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

import generate
from conftest import REALDATA_DIR
from generate import (SHIPPED_FONTS, VARIED_CELL, draws_charset, font_files, generate_captchas, main,
                      synthetic_labels)
from preprocess import label_from_path, prepare
from spec import DEFAULT_CHARSET, ModelSpec


def test_labels_span_the_requested_lengths():
    labels = synthetic_labels(400, seed=3, length=6, charset="AB", min_length=4)
    assert {len(s) for s in labels} == {4, 5, 6}
    assert set("".join(labels)) == {"A", "B"}
    assert labels == synthetic_labels(400, seed=3, length=6, charset="AB", min_length=4)


def test_fixed_length_labels_keep_the_names_their_seed_always_gave():
    """Variable lengths must not shift the default sets' labels: data on disk stays reusable."""
    rng = random.Random(0)
    expected = ["".join(rng.choice("AB") for _ in range(5)) for _ in range(20)]
    assert synthetic_labels(20, seed=0, length=5, charset="AB") == expected


def test_oversampled_symbols_are_drawn_that_many_times_as_often():
    labels = synthetic_labels(6000, seed=4, length=5, charset="0OABCDEF", oversample="0O",
                              oversample_factor=4)
    counts = {symbol: "".join(labels).count(symbol) for symbol in "0OABCDEF"}
    others = np.mean([counts[s] for s in "ABCDEF"])
    assert 3.6 < counts["0"] / others < 4.4 and 3.6 < counts["O"] / others < 4.4
    assert labels == synthetic_labels(6000, seed=4, length=5, charset="0OABCDEF", oversample="0O",
                                      oversample_factor=4)


def test_varied_style_draws_each_symbol_in_its_own_cell(tmp_path):
    paths = generate_captchas(tmp_path / "a", 24, seed=7, length=6, min_length=4,
                              style="varied", progress=False, workers=2)
    assert len(paths) == 24 and all(p.exists() for p in paths)
    for path in paths:
        label = label_from_path(path)
        image = np.asarray(Image.open(path).convert("RGB"), dtype=float)
        assert image.shape == (VARIED_CELL, VARIED_CELL * len(label), 3)
        for i in range(len(label)):
            cell = image[:, i * VARIED_CELL:(i + 1) * VARIED_CELL].reshape(-1, 3)
            colors, counts = np.unique(cell, axis=0, return_counts=True)
            background = colors[counts.argmax()]
            ink = np.linalg.norm(cell - background, axis=1) > 60
            assert ink.mean() > 0.015, f"{path.name}: cell {i} is nearly empty"


def test_varied_pixels_are_seeded(tmp_path):
    first = generate_captchas(tmp_path / "a", 6, seed=11, style="varied", progress=False, workers=1)
    again = generate_captchas(tmp_path / "b", 6, seed=11, style="varied", progress=False, workers=1)
    other = generate_captchas(tmp_path / "c", 6, seed=12, style="varied", progress=False, workers=1)
    assert [p.name for p in first] == [p.name for p in again]
    for a, b in zip(first, again):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert [p.name for p in first] != [p.name for p in other]


def test_mixed_style_varies_size_and_look_and_is_seeded(tmp_path):
    paths = generate_captchas(tmp_path / "a", 24, seed=3, length=8, min_length=3, style="mixed",
                              progress=False, workers=2)
    again = generate_captchas(tmp_path / "b", 24, seed=3, length=8, min_length=3, style="mixed",
                              progress=False, workers=1)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    for image, twin in zip(images, again):
        assert np.array_equal(image, np.asarray(Image.open(twin).convert("RGB")))
    assert {len(label_from_path(p)) for p in paths} >= {3, 8}
    assert len({image.shape[0] for image in images}) > 10  # heights, aspect ratios and looks vary
    assert len({tuple(image[0, 0]) for image in images}) > 20
    assert len({round(image.shape[1] / image.shape[0] / len(label_from_path(p)), 1)
                for p, image in zip(paths, images)}) > 5  # spacing and overlap vary
    # Symbols differ from their background in grey level, not only in colour: a grey reader
    # sees dark and light in every image.
    spec = ModelSpec(charset=DEFAULT_CHARSET, min_length=3, max_length=8)
    for path in paths:
        grey = prepare(path, spec)
        assert np.percentile(grey, 99.5) - np.percentile(grey, 0.5) > 0.3, path.name


def test_wheezy_style_draws_the_named_fonts_and_is_seeded(tmp_path):
    """The outside generator: the same seed gives the same pixels; another font, other ones."""
    lato, comic = str(SHIPPED_FONTS / "Lato-Bold.ttf"), str(SHIPPED_FONTS / "ComicNeue-Bold.otf")
    first = generate_captchas(tmp_path / "a", 4, seed=2, style="wheezy", fonts=(lato,), progress=False)
    again = generate_captchas(tmp_path / "b", 4, seed=2, style="wheezy", fonts=(lato,), progress=False)
    other = generate_captchas(tmp_path / "c", 4, seed=2, style="wheezy", fonts=(comic,), progress=False)
    for a, b, c in zip(first, again, other):
        assert a.name == b.name == c.name
        assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()


MULTICOLOR_SET = REALDATA_DIR / "multicolorcaptcha"
MULTICOLOR_CHARSET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def assert_multicolor_geometry(path: Path) -> None:
    """A 256x144 RGBA image whose drawing is a 64-row band centred between black margins."""
    image = Image.open(path)
    assert (image.mode, image.size) == ("RGBA", (256, 144))
    rows = np.flatnonzero(np.asarray(image.convert("RGB")).max(axis=(1, 2)) > 0)
    assert rows.min() >= 40 and rows.max() <= 103 and len(rows) > 50


def test_multicolorcaptcha_style_draws_like_the_shared_set(tmp_path):
    paths = generate_captchas(tmp_path / "a", 8, seed=5, length=4, charset=MULTICOLOR_CHARSET,
                              style="multicolorcaptcha", progress=False, workers=2)
    again = generate_captchas(tmp_path / "b", 8, seed=5, length=4, charset=MULTICOLOR_CHARSET,
                              style="multicolorcaptcha", progress=False, workers=1)
    for path, twin in zip(paths, again):
        assert_multicolor_geometry(path)
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(twin)))
    if not MULTICOLOR_SET.is_dir():
        pytest.skip(f"{MULTICOLOR_SET} not present")
    for path in sorted(MULTICOLOR_SET.glob("*.png"))[:8]:
        assert_multicolor_geometry(path)


def test_multicolorcaptcha_style_without_its_package_says_how_to_install(tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.setitem(sys.modules, "multicolorcaptcha", None)
    generate._multicolor_generator.cache_clear()
    try:
        code = main(["--out", str(tmp_path / "x"), "--count", "2", "--style", "multicolorcaptcha"])
    finally:
        generate._multicolor_generator.cache_clear()
    assert code == 1
    assert "pip install -r requirements-dev.txt" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_every_listed_font_draws_ink_and_the_shipped_ones_are_always_there():
    """A machine without any installed font still has the fonts shipped in fonts/, among them
    the captcha package's own; naming a folder draws from that folder alone."""
    shipped = font_files((str(SHIPPED_FONTS),))
    assert "DroidSansMono.ttf" in {Path(p).name for p in shipped} and len(shipped) >= 20
    assert set(shipped) <= set(font_files())
    for path in shipped:
        image = Image.new("L", (60, 60), 0)
        ImageDraw.Draw(image).text((10, 5), "A", fill=255, font=ImageFont.truetype(path, 40))
        assert np.asarray(image).mean() > 2, path


def test_fonts_that_draw_other_glyphs_for_the_symbols_are_left_out(tmp_path):
    """Copies of a shipped font altered as symbol, initials and caps-only fonts are made: each
    would draw an image that shows another label than its name, so none is drawn from."""
    original = SHIPPED_FONTS / "Lato-Regular.ttf"

    def altered(name: str, change_cmap=None, drawn_as: tuple[str, str] | None = None) -> None:
        font = TTFont(original)
        for table in font["cmap"].tables:
            if change_cmap:
                change_cmap(table.cmap)
        if drawn_as:  # the first symbol's glyph gets the second's outline and advance
            small, capital = (font.getBestCmap()[ord(symbol)] for symbol in drawn_as)
            font["glyf"][small] = copy.deepcopy(font["glyf"][capital])
            font["hmtx"][small] = font["hmtx"][capital]
        font.save(tmp_path / name)

    altered("symbol.ttf", lambda cmap: cmap.update({ord("A"): cmap[ord("B")]}))  # A draws a B
    altered("initials.ttf", lambda cmap: cmap.pop(ord("q"), None))  # no q
    altered("capitals.ttf", drawn_as=("k", "K"))  # its own k glyph, drawn as the K
    shutil.copy(original, tmp_path / "kept.ttf")
    assert [Path(p).name for p in font_files((str(tmp_path),))] == ["kept.ttf"]
    assert draws_charset(str(tmp_path / "capitals.ttf"), "ABC0")
    (tmp_path / "kept.ttf").unlink()
    font_files.cache_clear()
    with pytest.raises(RuntimeError, match="none of the 3 fonts .* draws all of A-Z a-z 0-9"):
        font_files((str(tmp_path),))


def test_a_fonts_folder_without_fonts_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["--style", "mixed", "--fonts", str(tmp_path / "empty"), "--out", str(tmp_path / "x"),
                 "--count", "2"])
    assert code == 1 and "no .ttf or .otf fonts" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())



def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown style"):
        generate_captchas(tmp_path, 1, style="fancy")
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--count", "2", "--min-length", "5", "--length", "4"])
    assert exit_info.value.code != 0
    assert "--min-length" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--count", "2", "--charset", "AB", "--oversample", "0"])
    assert "--oversample" in capsys.readouterr().err
