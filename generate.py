"""Make the embedded default dataset: synthetic CAPTCHAs written as `<label>.png`.

Uses the `captcha` package's ImageCaptcha(width=200, height=70) with its bundled font.
Labels come from a seeded generator, so the same seed names the same files and a second
run reuses what is already on disk. The package draws its noise from `secrets`, so the
pixels themselves differ from run to run: every generated set is unseen by any model.

    python generate.py --out data/synthetic --count 20000 --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from preprocess import DEFAULT_CHARSET, DEFAULT_LABEL_LENGTH

CAPTCHA_WIDTH, CAPTCHA_HEIGHT = 200, 70


def synthetic_labels(count: int, seed: int, length: int = DEFAULT_LABEL_LENGTH,
                     charset: str = DEFAULT_CHARSET) -> list[str]:
    """`count` labels of `length` symbols drawn uniformly from `charset`."""
    rng = random.Random(seed)
    return ["".join(rng.choice(charset) for _ in range(length)) for _ in range(count)]


def _write_one(path: str) -> None:
    from captcha.image import ImageCaptcha

    label = Path(path).stem.split("_", 1)[0]
    tmp = f"{path}.partial.png"
    ImageCaptcha(width=CAPTCHA_WIDTH, height=CAPTCHA_HEIGHT).write(label, tmp)
    os.replace(tmp, path)


def generate_captchas(out_dir: str | Path, count: int, seed: int = 0,
                      length: int = DEFAULT_LABEL_LENGTH, charset: str = DEFAULT_CHARSET,
                      workers: int | None = None, progress: bool = True) -> list[Path]:
    """Write `count` CAPTCHAs into `out_dir` (files already there are kept) and list them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    paths = []
    for label in synthetic_labels(count, seed, length, charset):
        n = seen[label] = seen.get(label, 0) + 1
        paths.append(out_dir / (f"{label}.png" if n == 1 else f"{label}_{n}.png"))
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
            jobs = pool.map(_write_one, missing, chunksize=64)
            for _ in tqdm(jobs, total=len(missing), desc=f"generate {out_dir}", unit="img",
                          disable=not progress):
                pass
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synthetic", help="folder to write into")
    parser.add_argument("--count", type=int, default=20000, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="seed for the labels")
    parser.add_argument("--length", type=int, default=DEFAULT_LABEL_LENGTH, help="symbols per image")
    parser.add_argument("--charset", default=DEFAULT_CHARSET, help="symbols to draw from")
    args = parser.parse_args(argv)
    if args.count < 1 or args.length < 1 or not args.charset:
        parser.error("--count and --length must be positive and --charset non-empty")
    paths = generate_captchas(args.out, args.count, args.seed, args.length, args.charset)
    print(f"{len(paths)} images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
