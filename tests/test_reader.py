"""The Python API: Reader.load(...).read(image) on every kind of input, lists, views,
variants and bad input, with the shipped default model."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE, SHIPPED
from preprocess import ImageReadError, list_images, prepare
from reader import Reader, Reading, shift_sideways, view_offsets
from spec import ModelLoadError, ModelSpec

SAMPLE_IMAGE = SHIPPED.parent.parent / "docs" / "samples" / "2AsJd.png"


@pytest.fixture(scope="module")
def reader(shipped_reader) -> Reader:
    return shipped_reader


def test_the_default_model_reads_a_sample_in_one_call():
    reader = Reader.load()  # no path: the shipped default model
    reading = reader.read(str(SAMPLE_IMAGE))
    assert isinstance(reading, Reading) and reading.text == "2AsJd"
    assert 0.5 < reading.confidence <= 1.0
    with pytest.raises(AttributeError):
        reading.text = "other"  # frozen: a result, not a record to edit
    assert reader.spec == ModelSpec.load(SHIPPED.with_suffix(".json")) and reader.name == "crnn_ctc_final"


def test_every_kind_of_image_reads_the_same(reader):
    rgb = Image.open(SAMPLE_IMAGE).convert("RGB")
    array = np.asarray(rgb)
    rgba = np.dstack([array, np.full(array.shape[:2], 255, np.uint8)])
    grey = np.asarray(rgb.convert("L"))
    kinds = {"str": str(SAMPLE_IMAGE), "Path": SAMPLE_IMAGE, "bytes": SAMPLE_IMAGE.read_bytes(),
             "PIL": rgb, "PIL grey": rgb.convert("L"), "RGB array": array, "RGBA array": rgba,
             "grey array": grey, "(H, W, 1) array": grey[..., None]}
    expected = reader.read(SAMPLE_IMAGE)
    for kind, image in kinds.items():
        got = reader.read(image)
        assert got.text == expected.text, kind
        assert got.confidence == pytest.approx(expected.confidence, abs=1e-6), kind
    jpeg = io.BytesIO()
    rgb.save(jpeg, format="JPEG", quality=95)
    assert reader.read(jpeg.getvalue()).text == expected.text  # bytes as a web page serves them


def with_options(reader: Reader, **options) -> Reader:
    """The same loaded model under other reading options."""
    return Reader(reader.predict, reader.spec, **options)


def test_a_list_gives_a_list_in_order_read_in_batches(reader):
    paths = list_images(SAMPLE)[:40]
    batched = with_options(reader, batch_size=16)
    readings = batched.read(paths)
    assert isinstance(readings, list) and len(readings) == 40
    one_by_one = [batched.read(p) for p in paths[:5]]
    assert [r.text for r in readings[:5]] == [r.text for r in one_by_one]
    np.testing.assert_allclose([r.confidence for r in readings[:5]], [r.confidence for r in one_by_one],
                               atol=1e-6)
    mixed = batched.read((paths[0], paths[1].read_bytes(), np.asarray(Image.open(paths[2]).convert("RGB"))))
    assert [r.text for r in mixed] == [r.text for r in readings[:3]]
    assert batched.read([]) == []


@pytest.mark.parametrize("image,message", [
    (b"this is text, not an image", "not a readable image: bytes"),
    (b"", "empty image bytes"),
    (np.zeros((50, 200), np.float32), "must be uint8"),
    (np.zeros((50, 200, 2), np.uint8), r"must be \(H, W\)"),
    (np.zeros((0, 200), np.uint8), "no pixels"),
    (42, "not an image: a int"),
    ("no/such/file.png", "image not found"),
])
def test_bad_input_raises_the_project_error_with_the_reason(reader, image, message):
    with pytest.raises(ImageReadError, match=message):
        reader.read(image)


def test_one_bad_image_in_a_list_raises_or_is_reported_in_its_place(reader, tmp_path):
    bad = tmp_path / "zzzzz.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    paths = list_images(SAMPLE)[:5] + [bad]
    with pytest.raises(ImageReadError, match="zzzzz.png"):
        reader.read(paths)
    batches = list(with_options(reader, batch_size=4).read_batches(paths))
    assert [len(b) for b in batches] == [4, 2]
    assert isinstance(batches[1][1], ImageReadError) and isinstance(batches[1][0], Reading)


def test_bad_models_and_options_are_refused(reader, tmp_path):
    with pytest.raises(ModelLoadError, match="model not found"):
        Reader.load(tmp_path / "missing.keras")
    (tmp_path / "model.h5").write_bytes(b"weights")
    with pytest.raises(ModelLoadError, match="unsupported model format '.h5'"):
        Reader.load(tmp_path / "model.h5")
    (tmp_path / "junk.keras").write_text("not a zip")
    (tmp_path / "junk.json").write_text(json.dumps({"charset": "AB"}))
    with pytest.raises(ModelLoadError, match="not a .keras model file"):
        Reader.load(tmp_path / "junk.keras")
    (tmp_path / "nospec.keras").write_bytes(SHIPPED.read_bytes())
    with pytest.raises(ModelLoadError, match="model spec not found"):
        Reader.load(tmp_path / "nospec.keras")
    with pytest.raises(ValueError, match="positive"):
        with_options(reader, views=0)
    with pytest.raises(ValueError, match="--reread-below needs --views 2 or more"):
        with_options(reader, reread_below=0.9)


def test_views_are_odd_shifts_either_way_with_the_edge_column_repeated():
    assert view_offsets(1) == [0] and view_offsets(5) == [0, 3, -3, 6, -6]
    images = np.arange(2 * 2 * 6, dtype=np.float32).reshape(2, 2, 6, 1)
    right, left = shift_sideways(images, 2), shift_sideways(images, -2)
    np.testing.assert_array_equal(right[0, 0, :, 0], [0, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(left[1, 1, :, 0], [20, 21, 22, 23, 23, 23])
    assert shift_sideways(images, 0) is images


def test_views_average_the_shifted_readings_geometrically(reader):
    images = np.stack([prepare(p, reader.spec) for p in list_images(SAMPLE)[:8]])
    shifted = [reader.predict(shift_sideways(images, dx)) for dx in view_offsets(3)]
    expected = np.exp(np.mean(np.log(np.clip(shifted, 1e-8, 1.0)), axis=0))
    np.testing.assert_allclose(reader.probabilities(images, views=3),
                               expected / expected.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(reader.probabilities(images), shifted[0], atol=1e-6)
    # A spec that says three views makes them the default reading; the option still overrides it.
    three = Reader(reader.predict, replace(reader.spec, views=3))
    by_spec = [r.confidence for r in three.read_prepared(images)]
    by_option = [r.confidence for r in with_options(reader, views=3).read_prepared(images)]
    np.testing.assert_allclose(by_spec, by_option, rtol=1e-6)
    once = [r.confidence for r in reader.read_prepared(images)]
    assert not np.allclose(by_spec, once, rtol=1e-5, atol=0)


def test_variants_keep_the_most_confident_reading(reader):
    paths = list_images(SAMPLE)[:16]
    plain = reader.read(paths)
    varied_reader = with_options(reader, try_variants=True)
    assert varied_reader.prepare(paths[0]).shape == (4, *reader.spec.image_shape, 1)
    assert with_options(reader, try_variants=True, crop_variant=False).prepare(paths[0]).shape[0] == 3
    assert with_options(reader, try_variants=True, invert=True).prepare(paths[0]).shape[0] == 3
    varied = varied_reader.read(paths)
    assert all(v.confidence >= p.confidence - 1e-6 for v, p in zip(varied, plain))
    assert any(v.confidence > p.confidence + 1e-3 for v, p in zip(varied, plain))
