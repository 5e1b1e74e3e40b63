"""Speed of the project's CRNN against the original reference CRNN, and of its runtimes.

Both models see the same input (50x200x1) and batch size in one process, so the ratios
hold even on a shared, noisy machine. Then, side by side in one run, for the Keras model and
its ONNX export: a cold one-image read (`test.py --image`, process start to answer, median of
several runs, with peak memory) and warm reading throughput at batch 1 and 64. Last, the
whole `test.py --folder` path (read + preprocess + predict + decode) and its peak memory.

    python bench/speed.py --batch-size 64 --steps 20
    python bench/speed.py --steps 0 --folder-size 0      # only the two runtimes
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
from keras import layers  # noqa: E402

from model import build_model, ctc_loss  # noqa: E402
from preprocess import list_images, prepare  # noqa: E402
from reader import Reader  # noqa: E402
from spec import ModelSpec  # noqa: E402

SAMPLES = ROOT / "tests" / "data" / "sample200"


def build_reference_model(num_classes: int = 63) -> keras.Model:
    """The original project's CRNN, rebuilt for comparison only (4.39M parameters)."""
    inputs = keras.Input((50, 200, 1))
    x = inputs
    for filters, pool in ((64, (2, 2)), (128, (2, 2)), (256, (2, 1))):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D(pool)(x)
        x = layers.Dropout(0.25)(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu")(x)
    x = layers.Permute((2, 1, 3))(x)
    x = layers.Lambda(lambda t: keras.ops.mean(t, axis=2))(x)
    for _ in range(2):
        x = layers.Bidirectional(layers.LSTM(256, return_sequences=True, dropout=0.15))(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="reference_crnn")


def images_per_second(fn, batch_size: int, steps: int) -> float:
    fn()  # warm-up: tracing and first-call allocation
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return batch_size * steps / (time.perf_counter() - start)


def measure(model: keras.Model, batch_size: int, steps: int) -> tuple[float, float]:
    """(training images/s, inference images/s) on random input with 5-symbol labels."""
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, 50, 200, 1), dtype=np.float32)
    y = rng.integers(1, 63, (batch_size, 5)).astype(np.int32)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=ctc_loss)
    train = images_per_second(lambda: model.train_on_batch(x, y), batch_size, steps)
    infer = images_per_second(lambda: model.predict_on_batch(x), batch_size, steps)
    return train, infer


PEAK_RSS_PROBE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
                  "stdout=subprocess.DEVNULL); "
                  "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a command, measured by a small probe process: a child
    forked from this process, which holds several models, would count its pages as its own."""
    start = time.perf_counter()
    probe = subprocess.run([sys.executable, "-c", PEAK_RSS_PROBE, *cmd], check=True,
                           capture_output=True, text=True)
    return time.perf_counter() - start, int(probe.stdout.split()[-1]) / 1024


def cold_read(model_path: Path, runs: int) -> tuple[float, float]:
    """(median seconds, peak MB) of `test.py --image` from process start to answer."""
    image = list_images(SAMPLES)[0]
    cmd = [sys.executable, str(ROOT / "test.py"), "--model", str(model_path), "--image", str(image)]
    timings = [peak_rss_mb(cmd) for _ in range(runs)]
    return float(np.median([t for t, _ in timings])), max(mb for _, mb in timings)


def warm_throughput(reader: Reader, images: np.ndarray, batch_size: int) -> float:
    """Images per second through the reader (model, decoding, calibration) on preprocessed
    images, after a warm-up call."""
    reader.batch_size = batch_size
    reader.read_prepared(images[:batch_size])
    start = time.perf_counter()
    reader.read_prepared(images)
    return len(images) / (time.perf_counter() - start)


def runtimes(model_path: Path, cold_runs: int) -> None:
    """The Keras model and its ONNX export side by side: cold one-image read, warm throughput."""
    onnx_path = model_path.with_suffix(".onnx")
    if not onnx_path.is_file():
        print(f"no {onnx_path}: make it with python export.py --model {model_path} --format onnx")
        return
    readers = {"keras": Reader.load(model_path), "onnxruntime": Reader.load(onnx_path)}
    images = np.stack([prepare(p, readers["keras"].spec) for p in list_images(SAMPLES)])
    print(f"{'runtime':<12} {'cold read s':>11} {'cold MB':>8} {'batch 1 img/s':>14} {'batch 64 img/s':>15}")
    for (name, reader), path in zip(readers.items(), (model_path, onnx_path)):
        seconds, mb = cold_read(path, cold_runs)
        one, many = warm_throughput(reader, images, 1), warm_throughput(reader, images, 64)
        print(f"{name:<12} {seconds:>11.2f} {mb:>8.0f} {one:>14.1f} {many:>15.1f}")


def end_to_end(model_path: str, count: int, batch_size: int) -> tuple[float, float]:
    """(images/s, peak RSS in MB) of `test.py --folder` on freshly generated CAPTCHAs.

    test.py is started by a small probe process that reports its peak memory: a child forked
    from this process, which holds two models, would count this process's pages as its own.
    """
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(ROOT / "generate.py"), "--out", tmp, "--count",
                        str(count), "--seed", "987654"], check=True, capture_output=True)
        out = Path(tmp) / "out.csv"
        cmd = [sys.executable, str(ROOT / "test.py"), "--model", model_path, "--folder", tmp,
               "--batch-size", str(batch_size), "--output", str(out), "--quiet"]
        elapsed, peak_mb = peak_rss_mb(cmd)
    return count / elapsed, peak_mb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--model", default=str(ROOT / "saved_model" / "crnn_ctc_final.keras"),
                        help="model for the end-to-end test.py measurement")
    parser.add_argument("--folder-size", type=int, default=1000,
                        help="images for the end-to-end measurement (0 skips it)")
    parser.add_argument("--cold-runs", type=int, default=5, help="cold one-image reads per runtime "
                        "(the median is reported; 0 skips the runtime comparison)")
    args = parser.parse_args()

    print(f"CPU threads: {os.cpu_count()}  batch: {args.batch_size}  steps: {args.steps}")
    if args.steps > 0:
        rows = []
        for name, model in (("reference", build_reference_model()), ("ours", build_model(ModelSpec()))):
            train, infer = measure(model, args.batch_size, args.steps)
            rows.append((name, model.count_params(), train, infer))
        print(f"{'model':<10} {'params':>10} {'train img/s':>12} {'infer img/s':>12}")
        for name, params, train, infer in rows:
            print(f"{name:<10} {params:>10,} {train:>12.1f} {infer:>12.1f}")
        (_, _, ref_train, ref_infer), (_, _, our_train, our_infer) = rows
        print(f"{'ratio':<10} {'':>10} {our_train / ref_train:>11.1f}x {our_infer / ref_infer:>11.1f}x")
    if args.cold_runs > 0:
        runtimes(Path(args.model), args.cold_runs)
    if args.folder_size > 0:
        rate, peak_mb = end_to_end(args.model, args.folder_size, args.batch_size)
        print(f"test.py --folder end to end (start-up included): {rate:.1f} img/s over "
              f"{args.folder_size} images, peak memory {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
