"""The models that ship still read what their metrics files record.

The figures live in `saved_model/<name>.metrics.json`: the test split from `train.py`, and the
fixed sample as `bench/accuracy.py --folder tests/data/sample200 --record sample200` read it.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from conftest import REALDATA_DIR, ROOT, SAMPLE, SHIPPED
from metrics import score
from preprocess import label_from_path, list_images, prepare
from reader import Reader

MARGIN = 0.03  # the sample is 200 images: one image is 0.005
MAX_MODEL_BYTES = 10 * 1024 * 1024


def recorded(model: str) -> dict:
    return json.loads((ROOT / "saved_model" / f"{model}.metrics.json").read_text())


@pytest.fixture(scope="module")
def sample(shipped_reader) -> tuple[np.ndarray, list[str], Reader]:
    reader = shipped_reader
    paths = list_images(SAMPLE)
    assert len(paths) == 200
    return np.stack([prepare(p, reader.spec) for p in paths]), [label_from_path(p) for p in paths], reader


def test_shipped_model_is_small_and_loads_in_safe_mode(shipped_reader):
    assert SHIPPED.stat().st_size < MAX_MODEL_BYTES
    model = keras.saving.load_model(SHIPPED, safe_mode=True)
    assert model.output_shape[-1] == shipped_reader.spec.num_classes


def test_shipped_model_reads_the_fixed_sample(sample):
    images, labels, reader = sample
    readings = reader.read_prepared(images)
    result = score([r.text for r in readings], labels)
    figures = recorded("crnn_ctc_final")
    assert result["exact_match"] >= figures["sample200"]["exact_match"] - MARGIN
    assert result["cer"] <= figures["sample200"]["cer"] + MARGIN / 3
    # Three sideways-shifted views, averaged, read it better still.
    three = Reader(reader.predict, reader.spec, views=3).read_prepared(images)
    view_result = score([r.text for r in three], labels)
    assert view_result["exact_match"] >= figures["sample200_3_views"]["exact_match"] - MARGIN
    assert view_result["exact_match"] > result["exact_match"]
    right = np.array([r.text == label for r, label in zip(readings, labels)])
    # Confident answers are right more often than unsure ones.
    conf = np.array([r.confidence for r in readings])
    assert right[conf >= np.median(conf)].mean() > right[conf < np.median(conf)].mean()


def test_rereading_gives_the_views_only_to_unsure_answers(sample):
    images, labels, reader = sample
    once = reader.read_prepared(images)
    five = Reader(reader.predict, reader.spec, views=5).read_prepared(images)
    mixed = Reader(reader.predict, reader.spec, views=5, reread_below=0.9).read_prepared(images)
    unsure = np.array([r.confidence for r in once]) < 0.9
    assert 0 < unsure.sum() < len(images) / 2
    for i in range(len(images)):
        expected = five[i] if unsure[i] else once[i]
        assert mixed[i].text == expected.text
        assert mixed[i].confidence == pytest.approx(expected.confidence, abs=1e-5)
    assert any(once[i].text != five[i].text for i in np.flatnonzero(unsure))  # re-reading changes answers
    # On this sample it gets what all five views get, for about a third of their model time.
    exact = {name: score([r.text for r in readings], labels)["exact_match"]
             for name, readings in (("once", once), ("five", five), ("mixed", mixed))}
    assert exact["mixed"] >= exact["five"] - 0.01 and exact["mixed"] > exact["once"]


@pytest.mark.parametrize("name", ["digits4-site", "multicolorcaptcha"])
def test_fine_tuned_models_and_their_onnx_exports_read_their_set(name):
    """Each per-set model is small, loads in safe mode and reads images of its set, and its
    shipped ONNX export reads them the same.

    The images are the set's first 32 files, some of which it trained on: this catches a
    broken file, spec or preprocessing, while the held-out figures are its test split's.
    """
    path = ROOT / "saved_model" / f"{name}.keras"
    assert max(path.stat().st_size, path.with_suffix(".onnx").stat().st_size) < MAX_MODEL_BYTES
    reader, onnx_reader = Reader.load(path), Reader.load(path.with_suffix(".onnx"))
    assert onnx_reader.spec == reader.spec
    if not (REALDATA_DIR / name).is_dir():
        pytest.skip(f"{REALDATA_DIR / name} not present")
    images = np.stack([prepare(p, reader.spec) for p in list_images(REALDATA_DIR / name)[:32]])
    readings = reader.read_prepared(images)
    labels = [label_from_path(p) for p in list_images(REALDATA_DIR / name)[:32]]
    assert score([r.text for r in readings], labels)["cer"] <= recorded(name)["cer"] + 0.1
    assert [r.text for r in onnx_reader.read_prepared(images)] == [r.text for r in readings]
    assert np.abs(reader.probabilities(images) - onnx_reader.probabilities(images)).max() < 1e-4


def test_the_generalist_base_reads_a_generator_and_fonts_it_never_saw(shipped_reader):
    """saved_model/base.keras, pretrained without wheezy.captcha and without the font families
    of bench/generalise.py, reads tests/data/wheezy100 (that generator in those fonts) as
    `bench/accuracy.py --model saved_model/base.keras --folder tests/data/wheezy100 --record
    wheezy100` recorded; the default model reads almost none of them."""
    base = ROOT / "saved_model" / "base.keras"
    assert max(base.stat().st_size, base.with_suffix(".onnx").stat().st_size) < MAX_MODEL_BYTES
    paths = list_images(ROOT / "tests" / "data" / "wheezy100")
    labels = [label_from_path(p) for p in paths]
    reader = Reader.load(base)
    result = score([r.text for r in reader.read(paths)], labels)
    figures = recorded("base")["wheezy100"]
    assert figures["n"] == len(paths) == 100
    assert result["exact_match"] >= figures["exact_match"] - 0.05  # 100 images: one is 0.01
    assert result["cer"] <= figures["cer"] + 0.03
    default = score([r.text for r in shipped_reader.read(paths)], labels)
    assert default["exact_match"] < result["exact_match"] - 0.1
    onnx = Reader.load(base.with_suffix(".onnx"))
    assert [r.text for r in onnx.read(paths[:16])] == [r.text for r in reader.read(paths[:16])]
