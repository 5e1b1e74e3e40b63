"""Read CAPTCHAs with a trained model: one image or a whole folder.

    python test.py --image docs/samples/aB3xQ.png
    python test.py --folder docs/samples --output results.csv
    python test.py --folder my_captchas --limit 100 --output results.json --min-confidence 0.5
    python test.py --folder my_captchas --views 5 --reread-below 0.9   # unsure answers read 5 times

Prints `path,prediction,confidence` per image (CSV, so it pipes). The confidence is the
probability, calibrated at the end of training, that the whole answer is right. When file
names are labels, a final line gives `exact_match=... cer=... n=...`. Unreadable files are
reported and skipped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

DEFAULT_MODEL = "saved_model/crnn_ctc_final.keras"
REREAD_NEEDS_VIEWS = "--reread-below needs --views 2 or more"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="trained .keras model (its .json spec "
                   "beside it gives the charset and lengths)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="read one image")
    source.add_argument("--folder", help="read every image in this folder")
    p.add_argument("--limit", type=int, help="read at most N images of the folder")
    p.add_argument("--batch_size", "--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--output", help="also write all results to FILE.csv or FILE.json")
    p.add_argument("--beam-width", type=int, default=1, help="CTC beam search width (1 = greedy)")
    p.add_argument("--views", type=int, help="read each image N times, shifted sideways by 0, +3, "
                   "-3, +6, ... pixels, and average (more accurate, N times slower); default: as the "
                   "model's spec says (1 unless it was trained with --views)")
    p.add_argument("--reread-below", type=float, default=0.0, metavar="P",
                   help="with --views N: read each image once and only answers less confident than "
                   "P again with the N views (most of their gain for a fraction of their time)")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="mark answers below this confidence as rejected")
    p.add_argument("--no_auto_crop", "--no-auto-crop", action="store_true",
                   help="single image: do not also try a crop to the text region")
    p.add_argument("--force_invert", "--force-invert", action="store_true",
                   help="invert the image (light text on a dark background)")
    p.add_argument("--strong", action="store_true", help="thicken thin strokes before reading")
    p.add_argument("--save_debug", "--save-debug", metavar="DIR",
                   help="single image: write each preprocessing stage as PNG into DIR")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = p.parse_args(argv)
    if args.output and Path(args.output).suffix.lower() not in (".csv", ".json"):
        p.error("--output must end in .csv or .json")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be positive")
    if args.batch_size < 1 or args.beam_width < 1 or (args.views is not None and args.views < 1):
        p.error("--batch_size, --beam-width and --views must be positive")
    if args.reread_below and args.views == 1:
        p.error(REREAD_NEEDS_VIEWS)
    return args


def image_variants(image, spec, args) -> dict:
    """Preprocessed versions of one image to try; the most confident reading wins."""
    from functools import partial

    from preprocess import needs_inversion, preprocess_image

    prepare = partial(preprocess_image, color_distance=spec.color_distance)
    invert = args.force_invert or needs_inversion(image, spec.color_distance)
    variants = {"plain": prepare(image, spec.auto_crop, invert, args.strong)}
    # A colour-distance map is dark ink on white whatever the polarity: no inverted variant.
    if not args.force_invert and not spec.color_distance:
        variants["inverted"] = prepare(image, spec.auto_crop, not invert, args.strong)
    if not args.strong:
        variants["strong"] = prepare(image, spec.auto_crop, invert, True)
    if not args.no_auto_crop and not spec.auto_crop:
        variants["cropped"] = prepare(image, True, invert, args.strong)
    return variants


def read_single(model, spec, args) -> list[dict]:
    import numpy as np

    from model import predict_texts
    from preprocess import preprocess_image, read_image

    image = read_image(args.image, color=spec.color_distance)
    if args.save_debug:
        import cv2

        stages: dict = {}
        preprocess_image(image, spec.auto_crop or not args.no_auto_crop,
                         True if args.force_invert else None, args.strong, stages,
                         spec.color_distance)
        debug_dir = Path(args.save_debug)
        debug_dir.mkdir(parents=True, exist_ok=True)
        for name, stage in stages.items():
            cv2.imwrite(str(debug_dir / f"{Path(args.image).stem}_{name}.png"), stage)
    variants = image_variants(image, spec, args)
    texts, confidences = predict_texts(model, np.stack(list(variants.values())), spec,
                                       beam_width=args.beam_width, views=args.views,
                                       reread_below=args.reread_below)
    best = int(np.argmax(confidences))
    return [{"path": str(args.image), "prediction": texts[best], "confidence": confidences[best]}]


def read_folder(model, spec, args) -> tuple[list[dict], int]:
    """Read a folder in batches; returns the results and the number of skipped files."""
    from tqdm import tqdm

    from model import read_batches
    from preprocess import list_images

    paths = list_images(args.folder)[: args.limit]
    if not paths:
        raise FileNotFoundError(f"no images (png, jpg, jpeg, bmp, gif, webp) in {args.folder}")
    results, skipped = [], 0
    invert = True if args.force_invert else None
    progress = tqdm(total=len(paths), unit="img", desc="read", disable=args.quiet or None,
                    file=sys.stderr)
    for read, texts, confidences, errors in read_batches(model, spec, paths, args.batch_size,
                                                         args.beam_width, invert, args.strong,
                                                         args.views, args.reread_below):
        for error in errors:
            print(f"skipped: {error}", file=sys.stderr)
        skipped += len(errors)
        results += [{"path": str(p), "prediction": t, "confidence": c}
                    for p, t, c in zip(read, texts, confidences)]
        progress.update(len(read) + len(errors))
    progress.close()
    if not results:
        raise ValueError(f"none of the {len(paths)} images in {args.folder} could be read")
    return results, skipped


def write_output(results: list[dict], path: str) -> None:
    """CSV (header path,prediction,confidence[,rejected]) or JSON list, written atomically."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(results, indent=2)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(results[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(results)
        text = buffer.getvalue()
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from metrics import score
    from model import load_reader
    from preprocess import label_from_path

    if args.image and not Path(args.image).is_file():
        raise FileNotFoundError(f"image not found: {args.image}")
    if args.folder and not Path(args.folder).is_dir():
        raise FileNotFoundError(f"folder not found: {args.folder}")
    model, spec = load_reader(args.model)
    args.views = args.views or spec.views
    if args.reread_below and args.views == 1:
        raise ValueError(REREAD_NEEDS_VIEWS + " (this model reads each image once by default)")
    results, skipped = read_folder(model, spec, args) if args.folder else (read_single(model, spec, args), 0)
    for row in results:
        row["confidence"] = round(row["confidence"], 4)
        if args.min_confidence > 0:
            row["rejected"] = row["confidence"] < args.min_confidence
    if not args.quiet:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(results[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(results)
    if args.output:
        write_output(results, args.output)
    truths = [label_from_path(r["path"]) for r in results]
    if args.folder and all(spec.label_problem(t) is None for t in truths):
        s = score([r["prediction"] for r in results], truths)
        print(f"exact_match={s['exact_match']:.4f} cer={s['cer']:.4f} n={s['n']}"
              + (f" skipped={skipped}" if skipped else ""))
    return 0


def cli(argv: list[str] | None = None) -> int:
    from model import ModelLoadError
    from preprocess import ImageReadError

    try:
        return main(argv)
    except (FileNotFoundError, ImageReadError, ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
