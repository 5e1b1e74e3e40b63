"""The model that ships still reads what saved_model/README.md says it reads."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from metrics import score
from model import load_reader, predict_texts, read_files
from preprocess import REALDATA_DIR, LabelSpec, label_from_path, list_images, load_and_preprocess

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "saved_model" / "crnn_ctc_final.keras"
SAMPLE = ROOT / "tests" / "data" / "sample200"
MARGIN = 0.03  # the sample is 200 images: one image is 0.005


def recorded(name: str) -> float:
    """A figure recorded in saved_model/README.md as `name: value`."""
    text = (ROOT / "saved_model" / "README.md").read_text()
    match = re.search(rf"{re.escape(name)}:\s*([0-9.]+)", text)
    assert match, f"{name} not recorded in saved_model/README.md"
    return float(match.group(1))


def test_shipped_model_is_small_and_loads_in_safe_mode():
    assert SHIPPED.stat().st_size < 5 * 1024 * 1024
    model = keras.saving.load_model(SHIPPED, safe_mode=True)
    assert model.output_shape[-1] == LabelSpec().num_classes


def test_shipped_model_reads_the_fixed_sample():
    model, spec = load_reader(SHIPPED)
    paths = list_images(SAMPLE)
    assert len(paths) == 200
    images = np.stack([load_and_preprocess(p) for p in paths])
    labels = [label_from_path(p) for p in paths]
    predictions, confidences = predict_texts(model, images, spec)
    result = score(predictions, labels)
    assert result["exact_match"] >= recorded("sample200 exact match") - MARGIN
    assert result["cer"] <= recorded("sample200 CER") + MARGIN / 3
    # Three sideways-shifted views, averaged, read it better still.
    view_predictions, _ = predict_texts(model, images, spec, views=3)
    view_result = score(view_predictions, labels)
    assert view_result["exact_match"] >= recorded("sample200 exact match, 3 views") - MARGIN
    assert view_result["exact_match"] > result["exact_match"]
    right = np.array([p == label for p, label in zip(predictions, labels)])
    # Confident answers are right more often than unsure ones.
    conf = np.array(confidences)
    assert right[conf >= np.median(conf)].mean() > right[conf < np.median(conf)].mean()


def test_rereading_gives_the_views_only_to_unsure_answers():
    model, spec = load_reader(SHIPPED)
    paths = list_images(SAMPLE)
    images = np.stack([load_and_preprocess(p) for p in paths])
    labels = [label_from_path(p) for p in paths]
    once, once_conf = predict_texts(model, images, spec)
    five, five_conf = predict_texts(model, images, spec, views=5)
    mixed, mixed_conf = predict_texts(model, images, spec, views=5, reread_below=0.9)
    unsure = np.array(once_conf) < 0.9
    assert 0 < unsure.sum() < len(paths) / 2
    for i in range(len(paths)):
        expected = (five[i], five_conf[i]) if unsure[i] else (once[i], once_conf[i])
        assert mixed[i] == expected[0] and mixed_conf[i] == pytest.approx(expected[1], abs=1e-5)
    assert any(once[i] != five[i] for i in np.flatnonzero(unsure))  # the re-reading changes answers
    # On this sample it gets what all five views get, for about a third of their model time.
    assert score(mixed, labels)["exact_match"] >= score(five, labels)["exact_match"] - 0.01
    assert score(mixed, labels)["exact_match"] > score(once, labels)["exact_match"]


@pytest.mark.parametrize("name", ["digits4-site", "multicolorcaptcha"])
def test_fine_tuned_models_load_and_read_their_set(name):
    """Each per-set model is small, loads in safe mode and reads images of its set.

    The images are the set's first 64 files, some of which it trained on: this catches a
    broken file, spec or preprocessing, while the held-out figures live in saved_model/README.md.
    """
    path = ROOT / "saved_model" / f"{name}.keras"
    assert path.stat().st_size < 5 * 1024 * 1024
    model, spec = load_reader(path)
    if not (REALDATA_DIR / name).is_dir():
        pytest.skip(f"{REALDATA_DIR / name} not present")
    paths = list_images(REALDATA_DIR / name)[:64]
    predictions, _ = read_files(model, spec, paths)
    result = score(predictions, [label_from_path(p) for p in paths])
    assert result["cer"] <= recorded(f"{name} test split CER") + 0.1
