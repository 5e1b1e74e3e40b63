"""The command-line edge: every bad input gets one line on stderr and a non-zero exit.

Most cases call test.py's `cli` in this process (TensorFlow starts once for them all); the
slow tier runs each script as a real process too, where TensorFlow's start-up logs must not
reach the user either.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SAMPLE, SHIPPED

ONNX = str(SHIPPED.with_suffix(".onnx"))  # the CLI's behaviour, at a fraction of Keras's load time


def run(*args: str) -> subprocess.CompletedProcess:
    """A script run as its own process."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@lru_cache(maxsize=1)
def test_py():
    """The test.py module (imported by path: `test` is also a standard-library package)."""
    spec = importlib.util.spec_from_file_location("captcha_test_cli", ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def read_cli(capsys, monkeypatch):
    """test.py's command line in this process, from the repository root as a user runs it."""
    monkeypatch.chdir(ROOT)

    def call(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            code = test_py().cli(list(args))
        except SystemExit as exit_:  # argparse refusing the arguments
            code = exit_.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["test.py", *args], code, out, err)

    return call


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    files = {"empty": folder / "AAAAA.png", "text": folder / "BBBBB.png",
             "corrupt": folder / "CCCCC.png", "not_model": folder / "model.keras"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("hello, I am text")
    files["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    files["not_model"].write_text("not a zip")
    files["not_model"].with_suffix(".json").write_text(json.dumps({"charset": "AB"}))
    (folder / "empty_dir").mkdir()
    files["empty_dir"] = folder / "empty_dir"
    return files


@pytest.mark.parametrize("kind", ["empty", "text", "corrupt"])
def test_unreadable_image(read_cli, bad_files, kind):
    result = read_cli("--image", str(bad_files[kind]))
    assert_one_line_error(result, str(bad_files[kind].name))


def test_missing_image(read_cli):
    assert_one_line_error(read_cli("--image", "nope.png"), "image not found")


def test_one_image_reads_as_it_does_in_a_folder(read_cli, tmp_path):
    """--image and --folder read the same file the same way (reader.Reader, one policy)."""
    folder = tmp_path / "few"
    folder.mkdir()
    for src in sorted(SAMPLE.glob("*.png"))[:12]:
        shutil.copy(src, folder / src.name)
    folder_read = read_cli("--model", ONNX, "--folder", str(folder), "--output", str(tmp_path / "all.csv"),
                           "--quiet")
    assert folder_read.returncode == 0, folder_read.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "all.csv").read_text())))
    assert len(rows) == 12
    for row in rows[:2]:
        single = read_cli("--model", ONNX, "--image", row["path"])
        assert single.returncode == 0, single.stderr
        assert single.stdout.splitlines()[1] == f"{row['path']},{row['prediction']},{row['confidence']}"


def test_views_must_be_positive_and_rereading_needs_two_or_more(read_cli):
    result = read_cli("--folder", "tests/data/sample200", "--reread-below", "0.9", "--views", "1")
    assert result.returncode == 2 and "--reread-below needs --views" in result.stderr
    result = read_cli("--folder", "tests/data/sample200", "--views", "0")
    assert result.returncode == 2 and "--views must be positive" in result.stderr
    # The shipped default-style model reads once unless told otherwise: refused as well.
    assert_one_line_error(read_cli("--folder", "tests/data/sample200", "--reread-below", "0.9"),
                          "--reread-below needs --views 2 or more (this model reads each image once")


def test_empty_and_missing_folder(read_cli, bad_files):
    assert_one_line_error(read_cli("--folder", str(bad_files["empty_dir"])), "no images")
    assert_one_line_error(read_cli("--folder", "no_dir"), "folder not found")


@pytest.mark.slow
def test_scripts_answer_bad_input_in_one_line_as_real_processes(bad_files, tmp_path):
    assert_one_line_error(run("test.py", "--model", "missing.keras", "--image", "docs/samples/2AsJd.png"),
                          "model not found")
    assert_one_line_error(run("test.py", "--image", str(bad_files["corrupt"])), "CCCCC.png")
    assert_one_line_error(run("train.py", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path)),
                          "data folder not found")
    assert_one_line_error(run("bench/accuracy.py", "--folder", str(bad_files["empty_dir"])),
                          "no labelled images")
    assert_one_line_error(run("bench/peers.py", "--model", "missing.keras"), "model not found")


@pytest.mark.slow
def test_accuracy_bench_writes_its_figures_before_a_closed_pipe_ends_it(tmp_path):
    """`bench/accuracy.py --record KEY | head` must still record, warn of the labels the model
    cannot give, and end without a traceback."""
    model = tmp_path / "model.onnx"
    shutil.copy(ONNX, model)
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted(SAMPLE.glob("*.png"))[:20]:
        shutil.copy(image, folder / image.name)
    shutil.copy(image, folder / "ABCDEFGH.png")  # 8 symbols: the default model reads 5
    process = subprocess.Popen([sys.executable, "bench/accuracy.py", "--model", str(model), "--folder",
                                str(folder), "--record", "pipe"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before the first line
    err = process.stderr.read()
    assert process.wait(timeout=300) == 1
    assert "Traceback" not in err
    assert "1 of 21 labels do not fit the model" in err
    assert json.loads(model.with_suffix(".metrics.json").read_text())["pipe"]["n"] == 20


def test_missing_model_and_not_a_model(read_cli, captcha_dir, bad_files):
    image = str(sorted(captcha_dir.glob("*.png"))[0])
    assert_one_line_error(read_cli("--model", "missing.keras", "--image", image),
                          "model not found")
    assert_one_line_error(read_cli("--model", str(bad_files["not_model"]), "--image", image),
                          "not a .keras model file")


def test_folder_skips_bad_files_and_writes_csv_and_json(read_cli, captcha_dir, bad_files, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for src in sorted(captcha_dir.glob("*.png"))[:5]:
        shutil.copy(src, folder / src.name)
    shutil.copy(bad_files["corrupt"], folder / "CCCCC.png")
    out_csv = tmp_path / "out.csv"
    result = read_cli("--model", ONNX, "--folder", str(folder), "--output", str(out_csv), "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "CCCCC.png" in result.stderr
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(rows) == 5 and list(rows[0]) == ["path", "prediction", "confidence"]
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)
    assert sum(r["prediction"] == Path(r["path"]).stem for r in rows) >= 3  # the shipped model reads them
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("exact_match=") and "n=5" in summary and "skipped=1" in summary
    out_json = tmp_path / "out.json"
    result = read_cli("--model", ONNX, "--folder", str(folder), "--limit", "3",
                 "--output", str(out_json), "--min-confidence", "0.99", "--views", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    data = json.loads(out_json.read_text())
    assert len(data) == 3 and all(set(d) == {"path", "prediction", "confidence", "rejected"}
                                  for d in data)
    assert all(d["rejected"] == (d["confidence"] < 0.99) for d in data)


def test_single_image_with_debug_stages(read_cli, captcha_dir, tmp_path):
    image = sorted(captcha_dir.glob("*.png"))[0]
    result = read_cli("--image", str(image), "--save_debug",
                 str(tmp_path / "debug"), "--strong", "--force_invert", "--views", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "path,prediction,confidence" and lines[1].startswith(str(image))
    stages = sorted(p.name for p in (tmp_path / "debug").glob("*.png"))
    assert stages == [f"{image.stem}_{name}.png" for name in ("1_gray", "2_resized", "3_clahe")]
    assert np.asarray(Image.open(tmp_path / "debug" / stages[-1])).shape == (50, 200)


@pytest.mark.slow
def test_train_skips_bad_files_and_says_how_many_and_logs_one_line_per_epoch(captcha_dir, bad_files,
                                                                              tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for src in sorted(captcha_dir.glob("*.png"))[:20]:
        shutil.copy(src, folder / src.name)
    shutil.copy(bad_files["text"], folder / "BBBBB.png")
    (folder / "toolong1.png").write_bytes(b"")
    result = run("train.py", "--data-dir", str(folder), "--epochs", "1", "--batch-size", "8",
                 "--out", str(tmp_path / "out"), "--charset", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                 "abcdefghijklmnopqrstuvwxyz0123456789", "--max-length", "5", "--min-length", "5")
    assert result.returncode == 0, result.stderr
    assert "skipped 1 (1 wrong length)" in result.stdout
    assert "skipped 1 unreadable images" in result.stdout
    # Into a pipe, not a terminal: one line per epoch, no progress-bar redraws.
    assert "\r" not in result.stdout and "\x1b[" not in result.stdout
    assert len([ln for ln in result.stdout.splitlines() if " - val_loss: " in ln]) == 1


@pytest.mark.slow
def test_reading_options_are_stored_with_the_model_used_by_test_py_and_kept_by_fine_tuning(
        captcha_dir, tmp_path):
    """Colour distance and the number of views travel in the model's spec: test.py reads with
    them without flags, and a model fine-tuned from it keeps them."""
    from reader import Reader

    paths = sorted(captcha_dir.glob("*.png"))[:20]
    out = tmp_path / "out"
    result = run("train.py", "--data-dir", str(captcha_dir), "--limit", "20", "--epochs", "1",
                 "--batch-size", "8", "--out", str(out), "--color-distance", "--views", "3")
    assert result.returncode == 0, result.stderr
    model_path = out / "crnn_ctc_final.keras"
    stored = json.loads(model_path.with_suffix(".json").read_text())
    assert stored["color_distance"] is True and stored["views"] == 3
    out_csv = tmp_path / "colour.csv"
    result = run("test.py", "--model", str(model_path), "--folder", str(captcha_dir), "--limit",
                 "20", "--output", str(out_csv), "--quiet")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    readings = Reader.load(model_path, views=3).read(paths)
    assert [r["prediction"] for r in rows] == [r.text for r in readings]
    assert np.allclose([float(r["confidence"]) for r in rows], [r.confidence for r in readings], atol=1e-4)
    again = tmp_path / "again"
    result = run("train.py", "--init-from", str(model_path), "--data-dir", str(captcha_dir), "--limit",
                 "20", "--epochs", "0", "--out", str(again))
    assert result.returncode == 0, result.stderr
    assert "reading: colour distance, 3 views" in result.stdout
    stored = json.loads((again / "crnn_ctc_final.json").read_text())
    assert stored["color_distance"] is True and stored["views"] == 3


def test_training_cache_stays_out_of_read_only_data(tmp_path):
    """A data folder marked read-only gets no .cache, even for root (who may write anyway)."""
    import tempfile

    from train import cache_dir_for

    assert cache_dir_for(tmp_path) == tmp_path / ".cache"
    tmp_path.chmod(0o555)
    try:
        assert cache_dir_for(tmp_path).parent == Path(tempfile.gettempdir())
    finally:
        tmp_path.chmod(0o755)
