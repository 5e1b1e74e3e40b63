"""Speed of the project's CRNN against the original reference CRNN, side by side.

Both models see the same input (50x200x1) and batch size in one process, so the ratios
hold even on a shared, noisy machine. Then times the whole `test.py --folder` path
(read + preprocess + predict + decode) and reports its peak memory.

    python bench/speed.py --batch-size 64 --steps 20
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
from spec import ModelSpec  # noqa: E402


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
        start = time.perf_counter()
        probe = subprocess.run([sys.executable, "-c", PEAK_RSS_PROBE, *cmd], check=True,
                               capture_output=True, text=True)
        elapsed = time.perf_counter() - start
    return count / elapsed, int(probe.stdout.split()[-1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--model", default=str(ROOT / "saved_model" / "crnn_ctc_final.keras"),
                        help="model for the end-to-end test.py measurement")
    parser.add_argument("--folder-size", type=int, default=1000,
                        help="images for the end-to-end measurement (0 skips it)")
    args = parser.parse_args()

    ours = build_model(ModelSpec())
    reference = build_reference_model()
    print(f"CPU threads: {os.cpu_count()}  batch: {args.batch_size}  steps: {args.steps}")
    rows = []
    for name, model in (("reference", reference), ("ours", ours)):
        train, infer = measure(model, args.batch_size, args.steps)
        rows.append((name, model.count_params(), train, infer))
    print(f"{'model':<10} {'params':>10} {'train img/s':>12} {'infer img/s':>12}")
    for name, params, train, infer in rows:
        print(f"{name:<10} {params:>10,} {train:>12.1f} {infer:>12.1f}")
    (_, _, ref_train, ref_infer), (_, _, our_train, our_infer) = rows
    print(f"{'ratio':<10} {'':>10} {our_train / ref_train:>11.1f}x {our_infer / ref_infer:>11.1f}x")
    if args.folder_size > 0:
        rate, peak_mb = end_to_end(args.model, args.folder_size, args.batch_size)
        print(f"test.py --folder end to end (start-up included): {rate:.1f} img/s over "
              f"{args.folder_size} images, peak memory {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
