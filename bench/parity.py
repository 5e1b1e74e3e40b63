"""Do the exports read as the Keras model does? Each format, on the same fresh images.

Exports the model to every format (export.py) in a temporary folder, reads one set of
images with each through `Reader`, and prints per format the share of answers identical to
the Keras model's, the largest difference of any per-step probability, and exact match.

    python bench/parity.py --count 500 --seed 8080
    python bench/parity.py --model saved_model/digits4-site.keras --folder ../shared/realdata/digits4-site
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export import default_out, export  # noqa: E402
from generate import generate_captchas  # noqa: E402
from metrics import score  # noqa: E402
from preprocess import prepare, readable_labelled_images  # noqa: E402
from reader import Reader  # noqa: E402

EXPORTS = (("onnx", False), ("tflite", False), ("tflite", True), ("savedmodel", False))


def compare(reference: Reader, other: Reader, images: np.ndarray, labels: list[str]) -> dict:
    """Identical answers, largest probability difference and exact match of `other`."""
    expected = reference.read_prepared(images)
    got = other.read_prepared(images)
    diff = max(float(np.abs(reference.probabilities(batch) - other.probabilities(batch)).max())
               for batch in np.array_split(images, max(1, len(images) // 64)))
    return {"identical": float(np.mean([a.text == b.text for a, b in zip(expected, got)])),
            "max_prob_diff": diff, "exact_match": score([r.text for r in got], labels)["exact_match"]}


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of every file in a folder (a SavedModel)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "saved_model" / "crnn_ctc_final.keras"))
    parser.add_argument("--folder", help="labelled folder to read (default: generate a fresh set)")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=8080)
    args = parser.parse_args()

    keras_reader = Reader.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder) if args.folder else Path(tmp) / "images"
        if not args.folder:
            generate_captchas(folder, args.count, seed=args.seed, progress=False)
        scan = readable_labelled_images(folder, keras_reader.spec)
        images = np.stack([prepare(p, keras_reader.spec) for p in scan.paths])
        base = score([r.text for r in keras_reader.read_prepared(images)], scan.labels)["exact_match"]
        print(f"data: {args.folder or f'generated default style, seed {args.seed}'}, n={len(images)}")
        print(f"{'format':<16} {'size MB':>8} {'identical':>10} {'max prob diff':>14} {'exact':>7}")
        keras_mb = Path(args.model).stat().st_size / 2**20
        print(f"{'keras':<16} {keras_mb:>8.2f} {1:>10.4f} {0:>14.2e} {base:>7.4f}")
        for fmt, quantize in EXPORTS:
            path = export(args.model, fmt, Path(tmp) / default_out(Path(args.model), fmt, quantize).name,
                          quantize)
            row = compare(keras_reader, Reader.load(path), images, scan.labels)
            name = fmt + (" int8" if quantize else "")
            print(f"{name:<16} {size_on_disk(path) / 2**20:>8.2f} {row['identical']:>10.4f} "
                  f"{row['max_prob_diff']:>14.2e} {row['exact_match']:>7.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
