"""Hostile images, untrusted model files, crashes mid-write: each case of the README's
reliability table, tested on the real code path (real files, real processes killed with
SIGKILL)."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHIPPED

SPEC_OF_SHIPPED = SHIPPED.with_name("crnn_ctc_final.json")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims width x height 8-bit grey pixels, with only the first
    rows' data: a decompression bomb's first few KB, which is all a reader may look at."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header is rewritten to claim width x height pixels."""
    data = bytearray(encode(Image.new("L", (64, 64), 200), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def ink_image() -> np.ndarray:
    """Two dark bars on white, 50 x 120: any correct decoder gives back these grey levels."""
    pixels = np.full((50, 120), 255, np.uint8)
    pixels[10:40, 20:40] = 0
    pixels[10:40, 70:90] = 60
    return pixels


# Images ----------------------------------------------------------------------------------

@pytest.mark.parametrize("make, pixels", [(png_claiming, 30000 * 30000), (jpeg_claiming, 10000 * 10000)])
def test_huge_images_are_refused_from_the_header_fast_and_in_little_memory(tmp_path, make, pixels):
    """A 30000 x 30000 PNG of a few KB and a 100-megapixel JPEG: test.py refuses each with
    one line, before decoding, in a process that stays small (no model is loaded either)."""
    from preprocess import ImageTooLargeError, load_image

    data = make(*((30000, 30000) if pixels == 30000 * 30000 else (10000, 10000)))
    assert len(data) < 40_000
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=f"image too large: bytes .*{pixels} pixels"):
        load_image(data)
    assert time.perf_counter() - start < 1.0  # decoding 900 MB of pixels would take many seconds
    # In a process of its own, where no test runner catches warnings: one line, no warning.
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    # test.py run as its own program; then the peak memory of that process since it started
    # (VmHWM; ru_maxrss would count the test runner's memory, inherited through fork).
    peak_file = tmp_path / "peak"
    launcher = ("import runpy, sys\n"
                "image, peak = sys.argv[1:]\n"
                "sys.argv = ['test.py', '--image', image]\n"
                "try:\n    runpy.run_path('test.py', run_name='__main__')\n"
                "finally:\n    open(peak, 'w').write(next(line.split()[1] for line in "
                "open('/proc/self/status') if line.startswith('VmHWM')))\n")
    result = subprocess.run([sys.executable, "-c", launcher, str(path), str(peak_file)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "image too large" in result.stderr and str(pixels) in result.stderr
    assert int(peak_file.read_text()) < 300_000  # KB; the decoded image alone would be 100 to 900 MB


def test_the_pixel_limit_is_configurable_and_pillows_own_guard_becomes_our_error(shipped_reader):
    from preprocess import ImageTooLargeError, load_image
    from reader import Reader

    small = encode(Image.fromarray(ink_image()), "PNG")  # 6,000 pixels
    with pytest.raises(ImageTooLargeError, match="over the limit of 5000"):
        load_image(small, max_pixels=5000)
    strict = Reader(shipped_reader.predict, shipped_reader.spec, max_pixels=5000)
    with pytest.raises(ImageTooLargeError):
        strict.read(small)
    with pytest.raises(ImageTooLargeError, match="over the limit of 5000"):
        strict.read(ink_image())  # arrays obey the same limit
    # Raised far above Pillow's own bomb limit, Pillow's error comes out as ours.
    with pytest.raises(ImageTooLargeError, match="exceeds limit"):
        load_image(png_claiming(20000, 20000), max_pixels=10**12)


def image_cases() -> dict[str, tuple[bytes, np.ndarray]]:
    """Encoded images of every kind a web page may serve, and the grey pixels each must give."""
    import cv2

    pixels = ink_image()
    grey = Image.fromarray(pixels)
    rgb16 = cv2.imencode(".png", np.repeat(pixels[..., None], 3, axis=2).astype(np.uint16) * 257)[1]
    palette = Image.fromarray(np.where(pixels == 255, 0, np.where(pixels == 0, 1, 2)).astype(np.uint8), "P")
    palette.putpalette([0, 0, 255] + [0, 0, 0] + [60, 60, 60])  # index 0: blue, but transparent
    alpha = Image.fromarray(np.where(pixels < 128, 255, 0).astype(np.uint8))
    grey_alpha = Image.merge("LA", [Image.fromarray(np.zeros_like(pixels)), alpha])
    inverted = Image.fromarray(255 - pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    sideways = grey.convert("RGB").rotate(90, expand=True)
    two_level = np.where(pixels < 128, 0, 255).astype(np.uint8)
    return {
        "16-bit grey PNG": (encode(Image.fromarray(pixels.astype(np.uint16) * 257), "PNG"), pixels),
        "16-bit RGB PNG": (rgb16.tobytes(), pixels),
        "CMYK JPEG": (encode(grey.convert("RGB").convert("CMYK"), "JPEG", quality=95), pixels),
        "palette with transparency": (encode(palette, "PNG", transparency=0), pixels),
        "grey + alpha PNG": (encode(grey_alpha, "PNG"), two_level),
        "animated GIF": (encode(grey.convert("P"), "GIF", save_all=True,
                                append_images=[inverted.convert("P")]), pixels),
        "APNG": (encode(grey.convert("RGB"), "PNG", save_all=True, append_images=[inverted.convert("RGB")]),
                 pixels),
        "EXIF-rotated JPEG": (encode(sideways, "JPEG", exif=exif, quality=95), pixels),
        "WEBP": (encode(grey, "WEBP", lossless=True), pixels),
        "BMP": (encode(grey, "BMP"), pixels),
    }


@pytest.mark.parametrize("kind", list(image_cases()))
def test_every_image_kind_decodes_to_the_right_grey_pixels(kind):
    from preprocess import load_image

    data, expected = image_cases()[kind]
    decoded = load_image(data)
    assert decoded.shape == expected.shape, kind
    assert np.abs(decoded.astype(int) - expected).mean() < 2.0, kind


@pytest.mark.parametrize("size", [(1, 1), (5000, 20), (20, 5000)])
def test_extreme_shapes_preprocess_to_the_model_input(size, shipped_reader):
    data = encode(Image.new("L", size, 90), "PNG")
    prepared = shipped_reader.prepare(data)
    assert prepared.shape == (1, *shipped_reader.spec.image_shape, 1)
    assert np.isfinite(prepared).all() and 0 <= prepared.min() and prepared.max() <= 1
    assert isinstance(shipped_reader.read(data).text, str)


def test_transparency_is_flattened_alike_in_training_and_reading(tmp_path, shipped_reader):
    """The training cache and the reader see the same pixels for an RGBA image."""
    from preprocess import preprocessed_cache

    rgba = np.zeros((50, 150, 4), np.uint8)
    rgba[10:40, 20:60] = (200, 0, 0, 255)
    rgba[10:40, 80:120] = (0, 0, 0, 120)
    path = tmp_path / "ab3.png"
    Image.fromarray(rgba, "RGBA").save(path)
    cached, ok = preprocessed_cache([path], tmp_path / ".cache", shipped_reader.spec)
    read = np.round(shipped_reader.prepare(path)[0, ..., 0] * 255).astype(np.uint8)
    assert ok.all() and np.array_equal(cached[0], read)


# Model files -----------------------------------------------------------------------------

def model_with(tmp_path: Path, name: str, layer) -> Path:
    """A .keras file whose model holds `layer`, with the shipped spec beside it."""
    import keras

    inputs = keras.Input((50, 200, 1))
    path = tmp_path / f"{name}.keras"
    keras.Model(inputs, layer(inputs)).save(path)
    path.with_suffix(".json").write_text(SPEC_OF_SHIPPED.read_text())
    return path


def test_a_lambda_layer_is_refused_and_never_run(tmp_path):
    import keras

    from reader import Reader
    from spec import ModelLoadError

    marker = tmp_path / "ran"
    touch = keras.layers.Lambda(lambda x, marker: (open(marker, "w").close(), x)[1],
                                arguments={"marker": str(marker)})
    path = model_with(tmp_path, "lambda", touch)
    marker.unlink()  # building the model ran it once; loading must not
    with pytest.raises(ModelLoadError, match="Lambda layer"):
        Reader.load(path)
    result = subprocess.run([sys.executable, "test.py", "--model", str(path), "--image",
                             "docs/samples/2AsJd.png"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Lambda layer" in result.stderr
    assert not marker.exists()


def test_an_unknown_custom_layer_is_refused(tmp_path):
    import keras

    from reader import Reader
    from spec import ModelLoadError

    @keras.saving.register_keras_serializable(package="someone_else")
    class Passthrough(keras.layers.Layer):
        def call(self, x):
            return x

    path = model_with(tmp_path, "custom", Passthrough())
    with pytest.raises(ModelLoadError, match="custom object someone_else>Passthrough"):
        Reader.load(path)


def test_damaged_files_and_bad_specs_are_refused(tmp_path):
    from reader import Reader
    from spec import ModelLoadError

    def copy_with(name: str, model_bytes: bytes, spec_text: str) -> Path:
        path = tmp_path / f"{name}.keras"
        path.write_bytes(model_bytes)
        path.with_suffix(".json").write_text(spec_text)
        return path

    good_model, good_spec = SHIPPED.read_bytes(), SPEC_OF_SHIPPED.read_text()
    spec = json.loads(good_spec)
    cases = {
        "truncated": (good_model[: len(good_model) // 2], good_spec, "truncated, or not a Keras zip"),
        "not_zip": (b"PK but not really" * 10, good_spec, "truncated, or not a Keras zip"),
        "other_charset": (good_model, json.dumps({**spec, "charset": "0123456789"}),
                          "does not match its spec"),
        "spaced_charset": (good_model, json.dumps({**spec, "charset": "AB C"}), "invalid model spec"),
        "repeated_charset": (good_model, json.dumps({**spec, "charset": "AAB"}), "invalid model spec"),
        "number_charset": (good_model, json.dumps({**spec, "charset": 12345}), "invalid model spec"),
        "not_json": (good_model, "{charset:", "invalid model spec"),
    }
    for name, (model_bytes, spec_text, message) in cases.items():
        with pytest.raises(ModelLoadError, match=message):
            Reader.load(copy_with(name, model_bytes, spec_text))


# Crashes and interruptions ---------------------------------------------------------------

def start(*args: str) -> subprocess.Popen:
    """A script as its own process group, so that `kill` takes its worker processes too."""
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL, as `kill -9` or the out-of-memory killer sends it: no handler runs."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()


def test_a_model_save_killed_midway_leaves_the_previous_file_whole(tmp_path):
    """A process saves a model over the same path again and again and is killed at random
    moments: every time, the file there still loads."""
    from model import load_reader

    target = tmp_path / "m.keras"
    saver = tmp_path / "saver.py"
    saver.write_text(
        "import sys; sys.path.insert(0, sys.argv[2])\n"
        "from model import load_reader, save_reader\n"
        f"model, spec = load_reader({str(SHIPPED)!r})\n"
        "save_reader(model, spec, sys.argv[1]); print('saved', flush=True)\n"
        "while True: save_reader(model, spec, sys.argv[1])\n")
    rng = np.random.default_rng(0)
    for _ in range(4):
        process = subprocess.Popen([sys.executable, str(saver), str(target), str(ROOT)],
                                   stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert process.stdout.readline().strip() == "saved"
        time.sleep(rng.uniform(0.05, 0.6))
        kill(process)
        model, spec = load_reader(target)
        assert model.output_shape[-1] == spec.num_classes


def test_generation_killed_midway_completes_on_rerun_without_duplicates(tmp_path):
    from preprocess import list_images, load_image

    out = tmp_path / "gen"
    command = ["generate.py", "--style", "mixed", "--fonts", "fonts", "--out", str(out), "--count", "300",
               "--seed", "3"]
    process = start(*command)
    wait_for(lambda: out.is_dir() and len(list(out.glob("*.png"))) >= 40, process)
    kill(process)
    assert len(list_images(out)) < 300
    subprocess.run([sys.executable, *command], cwd=ROOT, check=True, capture_output=True, timeout=300)
    images = list_images(out)
    assert len(images) == 300 and len(os.listdir(out)) == 300  # no partial files left either
    for path in images:
        load_image(path)


def test_cache_building_killed_midway_completes_on_rerun(tmp_path, captcha_dir):
    """The preprocessing cache of a killed run is rebuilt whole, equal to one never killed."""
    from preprocess import list_images, preprocessed_cache
    from spec import ModelSpec

    many = tmp_path / "many"
    many.mkdir()
    for i, path in enumerate(list_images(captcha_dir) * 100):  # 6,400 files: seconds of work
        (many / f"{path.stem}_{i}.png").write_bytes(path.read_bytes())
    builder = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
               "from preprocess import list_images, preprocessed_cache; from spec import ModelSpec\n"
               "preprocessed_cache(list_images(sys.argv[2]), sys.argv[3], ModelSpec())\n")
    cache = tmp_path / "cache"
    process = subprocess.Popen([sys.executable, "-c", builder, str(ROOT), str(many), str(cache)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    wait_for(lambda: any(cache.glob(".*partial*")), process)
    time.sleep(0.3)
    kill(process)
    assert not list(cache.glob("*.ok.npy"))  # it was killed before finishing
    images, ok = preprocessed_cache(list_images(many), cache, ModelSpec())
    fresh, fresh_ok = preprocessed_cache(list_images(many), tmp_path / "fresh", ModelSpec())
    assert ok.all() and fresh_ok.all() and np.array_equal(images, fresh)


def test_two_processes_building_one_cache_take_turns(tmp_path, captcha_dir):
    """Two processes that want the same cache at once (the workers of a distributed run on one
    machine) both get it whole: the second waits for the first instead of writing over it."""
    from preprocess import list_images, preprocessed_cache
    from spec import ModelSpec

    many = tmp_path / "many"
    many.mkdir()
    for i, path in enumerate(list_images(captcha_dir) * 20):
        (many / f"{path.stem}_{i}.png").write_bytes(path.read_bytes())
    builder = ("import sys; sys.path.insert(0, sys.argv[1]); import numpy as np\n"
               "from preprocess import list_images, preprocessed_cache; from spec import ModelSpec\n"
               "images, ok = preprocessed_cache(list_images(sys.argv[2]), sys.argv[3], ModelSpec())\n"
               "assert ok.all(); print(int(np.asarray(images, np.int64).sum()))\n")
    cache = tmp_path / "cache"
    processes = [subprocess.Popen([sys.executable, "-c", builder, str(ROOT), str(many), str(cache)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    fresh, _ = preprocessed_cache(list_images(many), tmp_path / "fresh", ModelSpec())
    assert [int(o.split()[-1]) for o in outputs] == [int(np.asarray(fresh, np.int64).sum())] * 2
    assert len(list(cache.glob("*.images.npy"))) == 1


@pytest.mark.slow
def test_training_killed_resumes_losing_at_most_the_current_epoch(tmp_path, captcha_dir):
    """kill -9 after an epoch: the same command (a different --epochs is the same run)
    resumes after the last finished epoch. While the first run lives, a second run into the
    same folder is refused; once it is killed, its lock is gone with it."""
    out = tmp_path / "out"

    def command(epochs: int) -> list[str]:
        return ["train.py", "--data-dir", str(captcha_dir), "--epochs", str(epochs), "--patience", "99",
                "--batch-size", "16", "--out", str(out), "--charset",
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"]

    process = start(*command(99))
    states = out / ".resume"
    wait_for(lambda: any(states.glob("*/state.json")), process, timeout=400)
    second = subprocess.run([sys.executable, *command(99)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 1 and second.stderr.count("\n") == 1, second.stderr[-2000:]
    assert f"output folder {out} is in use by another run (pid {process.pid})" in second.stderr
    kill(process)
    done = json.loads(next(states.glob("*/state.json")).read_text())["epoch"]
    resumed = subprocess.run([sys.executable, *command(done + 1)], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming after epoch {done}" in resumed.stdout
    assert json.loads((out / "crnn_ctc_final.metrics.json").read_text())["epochs_run"] == done + 1


def test_labels_that_do_not_fit_are_counted_in_a_warning(tmp_path, captcha_dir, capsys):
    """Fine-tuning with a narrower charset, and scoring a folder partly named otherwise,
    both say how many labels were left out and why."""
    import importlib.util

    import train

    from spec import DEFAULT_CHARSET

    narrower = "".join(c for c in DEFAULT_CHARSET if c not in "xyzXYZ")
    code = train.main(["--data-dir", str(captcha_dir), "--epochs", "0", "--out", str(tmp_path / "o"),
                       "--init-from", str(SHIPPED), "--charset", narrower])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "of 64 labels do not fit the model" in err and "unknown symbols '" in err

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in sorted(captcha_dir.glob("*.png"))[:6]:
        (mixed / path.name).write_bytes(path.read_bytes())
    (mixed / "toolong12.png").write_bytes(next(captcha_dir.glob("*.png")).read_bytes())
    spec = importlib.util.spec_from_file_location("captcha_test_cli", ROOT / "test.py")
    test_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_py)
    assert test_py.cli(["--model", str(SHIPPED.with_suffix(".onnx")), "--folder", str(mixed), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "1 of 7 labels do not fit the model (1 wrong length" in captured.err
    assert "n=6" in captured.out
