"""Exports read as their Keras models do, and the ONNX reader runs without TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SAMPLE, SHIPPED
from export import default_out, export
from preprocess import list_images, prepare
from reader import Reader

# Run a script as if only requirements-reader.txt were installed: importing any of these fails.
WITHOUT_TENSORFLOW = """
import importlib.abc, runpy, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"tensorflow", "keras", "sklearn", "tf2onnx", "onnx"}:
            raise ImportError(f"{name} is not installed in the light reader")
sys.meta_path.insert(0, NotInstalled())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def parity(keras_reader: Reader, other: Reader, images: np.ndarray) -> tuple[float, float]:
    """(share of identical answers, largest per-step probability difference)."""
    same = np.mean([a.text == b.text for a, b in zip(keras_reader.read_prepared(images),
                                                     other.read_prepared(images))])
    return float(same), float(np.abs(keras_reader.probabilities(images) - other.probabilities(images)).max())


def test_the_shipped_onnx_file_reads_as_its_keras_model(shipped_reader):
    """(The per-set models' exports are checked beside them in test_shipped_model.py.)"""
    onnx_reader = Reader.load(SHIPPED.with_suffix(".onnx"))
    assert onnx_reader.spec == shipped_reader.spec and onnx_reader.views == shipped_reader.views
    images = np.stack([prepare(p, shipped_reader.spec) for p in list_images(SAMPLE)[:64]])
    same, diff = parity(shipped_reader, onnx_reader, images)
    assert same == 1.0 and diff < 1e-4


def test_an_onnx_file_alone_carries_its_spec(tmp_path):
    alone = tmp_path / "model.onnx"
    shutil.copy(SHIPPED.with_suffix(".onnx"), alone)
    reader = Reader.load(alone)
    assert reader.spec == Reader.load(SHIPPED.with_suffix(".onnx")).spec
    stored = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert reader.spec.calibration == tuple(stored["calibration"])
    assert reader.read(ROOT / "docs" / "samples" / "2AsJd.png").text == "2AsJd"


def test_test_py_reads_with_onnx_when_tensorflow_is_not_installed():
    result = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, "test.py", "--model",
                             "saved_model/crnn_ctc_final.onnx", "--folder", "docs/samples"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "path,prediction,confidence" and len(lines) == 10
    assert lines[-1].startswith("exact_match=") and "n=8" in lines[-1]
    # The same blocker does stop a Keras model, so the check above means something.
    blocked = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, "test.py", "--image",
                              "docs/samples/2AsJd.png"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert blocked.returncode == 1 and "Traceback" not in blocked.stderr
    last = blocked.stderr.strip().splitlines()[-1]
    assert last.startswith("error: reading crnn_ctc_final.keras needs TensorFlow")


@pytest.mark.slow
def test_every_format_exports_with_its_spec_and_reads_as_keras(shipped_reader, tmp_path):
    keras_reader = shipped_reader
    images = np.stack([prepare(p, keras_reader.spec) for p in list_images(SAMPLE)[:64]])
    for fmt, quantize in (("onnx", False), ("tflite", False), ("tflite", True), ("savedmodel", False)):
        path = export(SHIPPED, fmt, tmp_path / default_out(SHIPPED, fmt, quantize).name, quantize)
        assert path.with_suffix(".json").is_file() or path.suffix == ".onnx"
        reader = Reader.load(path)
        assert reader.spec == keras_reader.spec
        same, diff = parity(keras_reader, reader, images)
        if quantize:  # int8 weights: a third of the size, near but not equal answers
            assert same >= 0.9 and path.stat().st_size < SHIPPED.stat().st_size / 2
        else:
            assert same == 1.0 and diff < 1e-4, fmt
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.slow
def test_export_refuses_bad_input_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "export.py", "--model", str(tmp_path / "missing.keras")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: model not found")
    with pytest.raises(ValueError, match="--quantize applies to --format tflite only"):
        export(SHIPPED, "onnx", tmp_path / "x.onnx", quantize=True)
