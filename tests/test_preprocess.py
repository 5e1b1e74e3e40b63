"""Preprocessing of real images in many modes, label parsing and validation, splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from preprocess import (ImageReadError, column_background, in_parallel, label_from_path, load_image,
                        prepare, preprocess_image, preprocessed_cache, scan_labelled_folder,
                        split_dataset)
from spec import ModelLoadError, ModelSpec, infer_spec

SPEC = ModelSpec()
COLOUR = ModelSpec(color_distance=True)


@pytest.fixture(scope="module")
def rgb_captcha(captcha_dir) -> Image.Image:
    return Image.open(sorted(captcha_dir.glob("*.png"))[0]).convert("RGB")


def check_output(arr: np.ndarray, spec: ModelSpec = SPEC) -> None:
    assert arr.shape == (*spec.image_shape, 1)
    assert arr.dtype == np.float32
    assert 0.0 <= arr.min() < arr.max() <= 1.0


@pytest.mark.parametrize("mode,suffix", [("RGB", ".png"), ("RGBA", ".png"), ("P", ".png"),
                                         ("L", ".jpg"), ("RGB", ".bmp"), ("P", ".gif"),
                                         ("RGB", ".webp"), ("RGB", ".jpeg")])
def test_every_mode_and_format_gives_the_same_kind_of_input(rgb_captcha, tmp_path, mode, suffix):
    path = tmp_path / f"abcde{suffix}"
    rgb_captcha.convert(mode).save(path)
    out = prepare(path, SPEC)
    check_output(out)
    reference = preprocess_image(rgb_captcha, SPEC)
    # Lossy formats and palettes change pixels a little, never the picture.
    assert np.abs(out - reference).mean() < 0.12


def test_sixteen_bit_grey_is_scaled_not_clipped(rgb_captcha, tmp_path):
    grey8 = np.asarray(rgb_captcha.convert("L"), dtype=np.uint16)
    path = tmp_path / "abcde.png"
    Image.fromarray((grey8 * 257).astype(np.uint16)).save(path)  # a 16-bit greyscale PNG
    assert Image.open(path).mode.startswith("I")
    assert np.abs(load_image(path).astype(int) - grey8).max() <= 1


def test_transparent_background_becomes_white(tmp_path):
    rgba = np.zeros((70, 200, 4), dtype=np.uint8)
    rgba[20:50, 40:160] = (0, 0, 0, 255)  # opaque black text block on transparent
    path = tmp_path / "abcde.png"
    Image.fromarray(rgba, "RGBA").save(path)
    gray = load_image(path)
    assert gray[0, 0] == 255 and gray[30, 100] == 0


def test_dark_background_is_inverted_to_dark_text_on_light(rgb_captcha):
    light = preprocess_image(rgb_captcha, SPEC)
    dark = preprocess_image(Image.fromarray(255 - np.asarray(rgb_captcha)), SPEC)
    assert light[0, 0, 0] > 0.5 and dark[0, 0, 0] > 0.5
    assert np.abs(light - dark).mean() < 0.1


def test_aspect_ratio_is_kept_and_padding_uses_background():
    tall = np.full((100, 100), 230, dtype=np.uint8)
    tall[30:70, 30:70] = 20
    out = preprocess_image(tall, SPEC)[..., 0]
    # 100x100 scales to 50x50 centred: 75 columns of pure background on each side.
    assert np.ptp(out[:, :70]) == 0 and np.ptp(out[:, -70:]) == 0
    assert out[25, 100] < out[25, 10]


def test_auto_crop_enlarges_small_text():
    wide = np.full((144, 256), 240, dtype=np.uint8)
    wide[60:84, 100:156] = 10
    plain = (preprocess_image(wide, SPEC)[..., 0] < 0.5).sum()
    cropped = (preprocess_image(wide, SPEC, auto_crop=True)[..., 0] < 0.5).sum()
    assert cropped > 3 * plain
    by_spec = preprocess_image(wide, ModelSpec(auto_crop=True))
    assert np.array_equal(by_spec, preprocess_image(wide, SPEC, auto_crop=True))


def two_coloured_blocks() -> np.ndarray:
    """Two blocks of opposite brightness, each with a stroke in a colour as bright as its block."""
    rgb = np.zeros((64, 128, 3), dtype=np.uint8)
    rgb[:, :64] = (200, 60, 60)  # grey level ~ 104
    rgb[:, 64:] = (70, 200, 230)  # grey level ~ 168
    rgb[16:48, 30:33] = (40, 120, 140)  # grey ~ 103 on the red block
    rgb[16:48, 94:97] = (230, 160, 140)  # grey ~ 173 on the blue block
    return rgb


def test_color_distance_shows_ink_that_brightness_hides():
    # 64x128 scales to 50x100 centred: the strokes land near columns 74 and 124, rows 13..37.
    def stroke_contrast(out: np.ndarray) -> list[float]:
        return [float(np.median(out[:, 50:150]) - out[16:34, c - 4:c + 5].min(axis=1).mean())
                for c in (74, 124)]

    grey = preprocess_image(two_coloured_blocks(), SPEC)[..., 0]
    ink = preprocess_image(two_coloured_blocks(), COLOUR)[..., 0]
    assert max(stroke_contrast(grey)) < 0.25
    assert min(stroke_contrast(ink)) > 0.5  # both: dark ink on light, whatever the block


def test_color_distance_keeps_thick_strokes_solid_between_dark_margins():
    # A band of two colour blocks between black margins (as multicolorcaptcha draws it), with
    # a thick bar and a tall stem in each block's colour, lines in the ink colour crossing.
    rgb = np.zeros((144, 256, 3), dtype=np.uint8)
    rgb[40:104, :128] = (200, 60, 60)
    rgb[40:104, 128:] = (70, 200, 230)
    rgb[50:95, 40:54] = (60, 200, 60)  # a 14-pixel-thick bar filling most of its columns
    rgb[45:100, 180:186] = (230, 160, 140)  # a stem taller than half the band
    rgb[70:73, 10:250] = (60, 200, 60)
    stages: dict = {}
    out = preprocess_image(rgb, ModelSpec(auto_crop=True, color_distance=True), stages=stages)[..., 0]
    ink = stages["1_gray"]  # the cropped band, before resizing
    top = 40 - 4  # text_box keeps a 4-pixel margin
    assert ink[60 - top, 41:53].max() < 128  # the bar's middle is ink, not a hollow outline
    assert ink[55 - top, 182] < 128 and ink[55 - top, 150] > 200 and ink[55 - top, 20] > 200
    assert np.median(out) > 0.9  # dark ink on white: the margins did not flip the polarity


def test_column_background_is_the_most_common_colour_even_below_half():
    # Four blocks of columns, each with a background colour on only 40% of its pixels and
    # random colours (each rarer than the background) on the rest: a median would fail.
    rng = np.random.default_rng(3)
    backgrounds = np.array([(200, 60, 60), (70, 200, 230), (20, 20, 20), (240, 240, 240)], np.uint8)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    for block, colour in enumerate(backgrounds):
        for column in range(block * 20, block * 20 + 20):
            image[rng.permutation(60)[:24], column] = colour
    expected = np.repeat((backgrounds >> 3).astype(np.float32) * 8 + 4, 20, axis=0)
    found = column_background(image)
    inside = np.r_[0:5, 15:25, 35:45, 55:65, 75:80]  # the median window blends block edges
    assert np.array_equal(found[inside], expected[inside])


def test_color_distance_reads_files_in_colour(tmp_path):
    path = tmp_path / "ab.png"
    Image.fromarray(two_coloured_blocks()).save(path)
    assert load_image(path, color=True).shape == (64, 128, 3)
    assert np.array_equal(prepare(path, COLOUR), preprocess_image(two_coloured_blocks(), COLOUR))


@pytest.mark.parametrize("content", [b"", b"this is text, not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_files_raise_a_clear_error(tmp_path, content):
    path = tmp_path / "abcde.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match="abcde.png"):
        load_image(path)


def test_missing_file_raises():
    with pytest.raises(ImageReadError, match="not found"):
        load_image("no/such/file.png")


def test_label_parsing():
    assert label_from_path("data/aB3xQ.png") == "aB3xQ"
    assert label_from_path("aB3xQ_2.png") == "aB3xQ"
    assert label_from_path("/x/y/0015_12.jpeg") == "0015"


def test_spec_validation_and_round_trip(tmp_path):
    spec = ModelSpec()
    assert len(spec.charset) == 62 and spec.num_classes == 63
    assert spec.label_problem("aB3xQ") is None
    assert spec.label_problem("aB3x") == "wrong length"
    assert spec.label_problem("aB3x!") == "unknown characters"
    encoded = spec.encode("aB3xQ")
    assert encoded.min() >= 1 and encoded.max() <= 62
    assert spec.decode(list(encoded) + [0, -1]) == "aB3xQ"
    spec.save(tmp_path / "m.json")
    assert ModelSpec.load(tmp_path / "m.json") == spec
    # Specs saved before `views` existed read once per image, as their models always did.
    older = {k: v for k, v in json.loads((tmp_path / "m.json").read_text()).items() if k != "views"}
    (tmp_path / "old.json").write_text(json.dumps(older))
    assert ModelSpec.load(tmp_path / "old.json").views == 1
    with pytest.raises(ValueError, match="views"):
        ModelSpec(views=0)
    with pytest.raises(ValueError):
        ModelSpec(charset="AAB")
    # A spec file that is missing or invalid is the model's problem: ModelLoadError, named.
    with pytest.raises(ModelLoadError, match="not found"):
        ModelSpec.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"charset": "AAB"}))
    with pytest.raises(ModelLoadError, match="bad.json.*repeated"):
        ModelSpec.load(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="junk.json"):
        ModelSpec.load(tmp_path / "junk.json")


def test_variable_length_labels_are_padded():
    spec = ModelSpec("0123456789", 3, 6)
    assert list(spec.encode("042")) == [1, 5, 3, 0, 0, 0]
    assert spec.decode(spec.encode("042")) == "042"


def test_infer_spec_orders_symbols_and_lengths():
    spec = infer_spec(["B1a", "zz9Q", "Q"])
    assert spec.charset == "BQaz19"
    assert (spec.min_length, spec.max_length) == (1, 4)


def test_scan_reports_what_it_skips(captcha_dir, tmp_path):
    for src in sorted(captcha_dir.glob("*.png"))[:5]:
        (tmp_path / src.name).write_bytes(src.read_bytes())
    (tmp_path / "abc.png").write_bytes(b"x")      # wrong length
    (tmp_path / "ab!cd.png").write_bytes(b"x")    # unknown characters
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    scan = scan_labelled_folder(tmp_path, ModelSpec())
    assert len(scan.paths) == 5
    assert scan.skipped == {"wrong length": 1, "unknown characters": 1}
    assert "skipped 2" in scan.summary()


def test_cache_matches_the_function_and_flags_unreadable_files(captcha_dir, tmp_path):
    paths = sorted(captcha_dir.glob("*.png"))[:6]
    bad = tmp_path / "zzzzz.png"
    bad.write_bytes(b"broken")
    images, ok = preprocessed_cache(paths + [bad], tmp_path / "cache", SPEC, workers=2)
    colour, _ = preprocessed_cache(paths + [bad], tmp_path / "cache", COLOUR, workers=2)
    assert not np.array_equal(images[0], colour[0])  # the option is part of the cache key
    assert ok.tolist() == [True] * 6 + [False]
    direct = np.round(prepare(paths[0], SPEC)[..., 0] * 255)
    assert np.array_equal(images[0], direct.astype(np.uint8))
    again, _ = preprocessed_cache(paths + [bad], tmp_path / "cache", SPEC)  # reused, not rebuilt
    assert np.array_equal(np.asarray(again), np.asarray(images))
    # The image size comes from the spec, in the cache as in the function.
    small = ModelSpec(img_height=32, img_width=128)
    resized, _ = preprocessed_cache(paths, tmp_path / "cache", small, workers=2)
    assert resized.shape == (6, 32, 128)
    assert np.array_equal(resized[0], np.round(prepare(paths[0], small)[..., 0] * 255).astype(np.uint8))
    assert not list((tmp_path / "cache").glob(".*partial*"))


def test_parallel_loading_keeps_order_and_puts_errors_in_place(captcha_dir, tmp_path):
    paths = sorted(captcha_dir.glob("*.png"))[:9]
    bad = tmp_path / "zzzzz.png"
    bad.write_bytes(b"broken")
    mixed = paths[:4] + [bad] + paths[4:]
    cropped = ModelSpec(auto_crop=True)
    results = in_parallel(lambda p: prepare(p, cropped), mixed)
    assert isinstance(results[4], ImageReadError) and "zzzzz.png" in str(results[4])
    for path, image in zip(mixed[:4] + mixed[5:], results[:4] + results[5:]):
        assert np.array_equal(image, prepare(path, cropped))


def test_split_is_seeded_and_disjoint():
    a = split_dataset(100, seed=7)
    b = split_dataset(100, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    train, val, test = a
    assert len(set(train) | set(val) | set(test)) == 100
    assert (len(val), len(test)) == (10, 10)
    other = split_dataset(100, seed=8)
    assert not np.array_equal(other[1], val)
