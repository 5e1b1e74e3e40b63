"""Property-based tests (Hypothesis): whatever bytes, arrays, file names or probabilities
come in, only the documented errors come out, and what comes out has the documented form."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from decode import beam_search, decode, greedy, log_of_probs
from preprocess import (IMAGE_EXTENSIONS, ImageReadError, label_from_path, list_images, load_image, prepare,
                        scan_labelled_folder)
from spec import DEFAULT_CHARSET, ModelSpec

SPEC = ModelSpec()
SMALL = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

IMAGE_HEADERS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP", b""]


@SMALL
@given(header=st.sampled_from(IMAGE_HEADERS), body=st.binary(max_size=600))
def test_random_bytes_give_an_image_or_an_image_read_error(header, body):
    """Random bytes, some behind a real format's signature so that its decoder is reached."""
    try:
        image = load_image(header + body)
    except ImageReadError:
        return
    assert image.dtype == np.uint8 and image.ndim == 2 and image.size > 0


ARRAY_DTYPES = st.sampled_from([np.uint8, np.int8, np.uint16, np.int32, np.int64, np.float16,
                                np.float32, np.float64, np.bool_, np.complex64])


@SMALL
@given(array=hnp.arrays(ARRAY_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40)))
def test_random_arrays_give_model_input_or_an_image_read_error(array):
    try:
        prepared = prepare(array, SPEC)
    except ImageReadError:
        assert not (array.dtype == np.uint8 and array.size and (
            array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))))
        return
    assert prepared.shape == (*SPEC.image_shape, 1) and prepared.dtype == np.float32
    assert np.isfinite(prepared).all() and 0.0 <= prepared.min() and prepared.max() <= 1.0


NAME_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0")


@SMALL
@given(names=st.lists(st.text(NAME_CHARS, min_size=1, max_size=24), min_size=1, max_size=8, unique=True),
       suffixes=st.lists(st.sampled_from([".png", ".PNG", ".jpg", ".txt", "", ".png.bak", "."]),
                         min_size=8, max_size=8))
def test_any_file_names_scan_to_labels_without_error(tmp_path_factory, names, suffixes):
    """Unicode, dots, spaces, leading underscores, no extension: the scan lists exactly the
    visible files with an image extension, and every label is its name up to the first `_`."""
    folder = tmp_path_factory.mktemp("names")
    written = set()
    for name, suffix in zip(names, suffixes):
        path = folder / f"{name}{suffix}"
        if name in (".", "..") or len(path.name.encode()) > 255:
            continue
        try:
            path.write_bytes(b"not really an image")
        except OSError:  # a name this file system refuses
            continue
        written.add(path.name)
    listed = list_images(folder)
    expected = {n for n in written if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTENSIONS}
    assert {p.name for p in listed} == expected
    found = scan_labelled_folder(folder, None)
    for path, label in zip(found.paths, found.labels):
        assert label == label_from_path(path) == path.stem.split("_", 1)[0] and label
    assert len(found.paths) + sum(found.skipped.values()) == len(listed)
    filtered = found.filtered(SPEC)
    assert all(SPEC.label_problem(label) is None for label in filtered.labels)


@SMALL
@given(logits=hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 25),
                                                st.just(SPEC.num_classes)), elements=st.floats(-30, 30)),
       beam_width=st.integers(1, 6))
def test_any_probabilities_decode_to_readable_text_and_a_confidence(logits, beam_width):
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    texts, confidences = decode(probs.astype(np.float32), SPEC, beam_width)
    assert len(texts) == len(confidences) == len(probs)
    for text, confidence in zip(texts, confidences):
        assert set(text) <= set(DEFAULT_CHARSET) and len(text) <= probs.shape[1]
        assert 0.0 <= confidence <= 1.0
    paths, path_log_probs = greedy(log_of_probs(probs))
    assert all(0 < i < SPEC.num_classes for path in paths for i in path) and (path_log_probs <= 1e-6).all()
    labels, log_p = beam_search(log_of_probs(probs[0]), beam_width)
    assert all(0 < i < SPEC.num_classes for i in labels) and log_p <= 1e-6


@SMALL
@given(label=st.text(string.printable, max_size=12))
def test_encoding_a_label_round_trips_or_is_refused(label):
    problem = SPEC.label_problem(label)
    if problem is None:
        assert SPEC.decode(SPEC.encode(label)) == label
    else:
        assert problem in ("wrong length", "unknown characters")
