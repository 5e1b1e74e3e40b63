"""Our reader against ddddocr on the same held-out images: exact match, CER, ms per image.

ddddocr is a peer, not a requirement: install it for this benchmark only
(`pip install ddddocr==1.6.1`). Both read the same files one at a time from disk, as a
QA script would; our model is also timed in batches of 64, how test.py --folder reads.

    python bench/peers.py                                  # fresh default-style set, 1,000 images
    python bench/peers.py --folder HELD_OUT_DIR --model saved_model/multicolorcaptcha.keras
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generate import generate_captchas  # noqa: E402
from metrics import score  # noqa: E402
from preprocess import readable_labelled_images  # noqa: E402
from reader import Reader  # noqa: E402
from spec import ModelLoadError  # noqa: E402


def read_with_ddddocr(paths: list[Path]) -> tuple[list[str], float]:
    import ddddocr

    ocr = ddddocr.DdddOcr(show_ad=False)
    ocr.classification(paths[0].read_bytes())  # warm-up
    start = time.perf_counter()
    texts = [ocr.classification(p.read_bytes()) for p in paths]
    return texts, (time.perf_counter() - start) * 1000 / len(paths)


def read_with_ours(reader: Reader, paths: list[Path]) -> tuple[list[str], float]:
    # Warm-up: the first call traces the model's graph, a one-off cost per process (1 to 2 s)
    # that ddddocr's single warm-up call also leaves out of its timing.
    reader.read_all(paths[:reader.batch_size])
    start = time.perf_counter()
    if reader.batch_size == 1:  # as a QA script reads: one call per image
        texts = [reader.read(p).text for p in paths]
    else:
        texts = [r.text for r in reader.read_all(paths)]
    return texts, (time.perf_counter() - start) * 1000 / len(paths)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "saved_model" / "crnn_ctc_final.keras"))
    parser.add_argument("--folder", help="labelled held-out folder (default: generate one)")
    parser.add_argument("--count", type=int, default=1000, help="images to generate")
    parser.add_argument("--seed", type=int, default=4242, help="label seed of the generated set")
    args = parser.parse_args()

    reader = Reader.load(args.model)
    spec = reader.spec
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder) if args.folder else Path(tmp)
        if not args.folder:
            generate_captchas(folder, args.count, seed=args.seed, progress=False)
        scan = readable_labelled_images(folder, spec)
        other_views = 3 if spec.views == 1 else 1  # the model's own reading, and the other one
        rows = [("ddddocr 1.6.1", *read_with_ddddocr(scan.paths)),
                ("ours, one at a time", *read_with_ours(Reader.load(args.model, batch_size=1), scan.paths)),
                ("ours, batches of 64", *read_with_ours(reader, scan.paths)),
                (f"ours, {other_views} view{'s' * (other_views > 1)}, by 64",
                 *read_with_ours(Reader.load(args.model, views=other_views), scan.paths))]
    print(f"data: {args.folder or f'generated default style, seed {args.seed}'}, n={len(scan.labels)}")
    print(f"ours: {spec.views} view{'s' * (spec.views > 1)} per image unless the row says otherwise "
          "(the model's own reading)")
    print(f"{'reader':<22} {'exact':>7} {'exact_ci':>9} {'CER':>7} {'ms/img':>7}")
    for name, texts, ms in rows:
        s = score(texts, scan.labels)
        print(f"{name:<22} {s['exact_match']:>7.4f} {s['exact_match_ci']:>9.4f} {s['cer']:>7.4f} {ms:>7.1f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ModelLoadError, ValueError) as err:
        sys.exit(f"error: {err}")
