"""Read CAPTCHAs with a trained model: one image or a whole folder.

    python test.py --image docs/samples/2AsJd.png
    python test.py --folder docs/samples --output results.csv
    python test.py --folder my_captchas --limit 100 --output results.json --min-confidence 0.5
    python test.py --folder my_captchas --views 5 --reread-below 0.9   # unsure answers read 5 times

Prints `path,prediction,confidence` per image (CSV, so it pipes). The confidence is the
probability, calibrated at the end of training, that the whole answer is right. When file
names are labels, a final line gives `exact_match=... cer=... n=...`. Unreadable files are
reported and skipped. One image and a folder are read the same way (reader.Reader).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

DEFAULT_MODEL = "saved_model/crnn_ctc_final.keras"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from preprocess import MAX_PIXELS  # light: no TensorFlow

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="trained model: .keras, or an export "
                   "(.onnx reads without TensorFlow, .tflite, a SavedModel folder); its .json spec beside "
                   "it gives the charset, lengths, image size and reading options")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="read one image")
    source.add_argument("--folder", help="read every image in this folder")
    p.add_argument("--limit", type=int, help="read at most N images of the folder")
    p.add_argument("--batch-size", "--batch_size", type=int, default=64, help="images per model call")
    p.add_argument("--output", help="also write all results to FILE.csv or FILE.json")
    p.add_argument("--beam-width", type=int, default=1, help="CTC beam search width (1 = greedy)")
    p.add_argument("--views", type=int, help="read each image N times, shifted sideways by 0, +3, "
                   "-3, +6, ... pixels, and average (N times the model time); default: the model's own")
    p.add_argument("--reread-below", type=float, default=0.0, metavar="P",
                   help="with --views N: read each image once and only answers less confident than "
                   "P again with the N views (most of their gain for a fraction of their time)")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="mark answers below this confidence as rejected")
    p.add_argument("--try-variants", action="store_true", help="also read each image inverted, with "
                   "thickened strokes and cropped to its text, and keep the most confident reading")
    p.add_argument("--no-auto-crop", "--no_auto_crop", action="store_true",
                   help="with --try-variants: leave out the variant cropped to the text")
    p.add_argument("--force-invert", "--force_invert", action="store_true",
                   help="invert every image (light text on a dark background)")
    p.add_argument("--strong", action="store_true", help="thicken thin strokes before reading")
    p.add_argument("--save-debug", "--save_debug", metavar="DIR",
                   help="with --image: write each preprocessing stage as PNG into DIR")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images before "
                   f"decoding them (default {MAX_PIXELS}: a decompression bomb costs nothing)")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = p.parse_args(argv)
    if args.output and Path(args.output).suffix.lower() not in (".csv", ".json"):
        p.error("--output must end in .csv or .json")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be positive")
    if args.batch_size < 1 or args.beam_width < 1 or (args.views is not None and args.views < 1):
        p.error("--batch-size, --beam-width and --views must be positive")
    if args.max_pixels < 1:
        p.error("--max-pixels must be positive")
    if args.reread_below and args.views == 1:
        from reader import REREAD_NEEDS_VIEWS

        p.error(REREAD_NEEDS_VIEWS)
    return args


def image_paths(args: argparse.Namespace) -> list[Path]:
    from preprocess import IMAGE_EXTENSIONS, list_images, load_image

    if args.image:
        if not Path(args.image).is_file():
            raise FileNotFoundError(f"image not found: {args.image}")
        load_image(args.image, max_pixels=args.max_pixels)  # fails now, not after the model loads
        return [Path(args.image)]
    paths = list_images(args.folder)[: args.limit]
    if not paths:
        names = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise FileNotFoundError(f"no images ({names}) in {args.folder}")
    return paths


def save_debug_stages(image_path: Path, reader, folder: str) -> None:
    """Each preprocessing stage of one image as PNG, to see what the model is given."""
    import cv2

    from preprocess import load_image, preprocess_image

    stages: dict = {}
    preprocess_image(load_image(image_path, color=reader.spec.color_distance), reader.spec,
                     invert=reader.invert, strong=reader.strong, stages=stages)
    debug_dir = Path(folder)
    debug_dir.mkdir(parents=True, exist_ok=True)
    for name, stage in stages.items():
        cv2.imwrite(str(debug_dir / f"{image_path.stem}_{name}.png"), stage)


def read_paths(reader, paths: list[Path], quiet: bool, skip_unreadable: bool) -> tuple[list[dict], int]:
    """Read in batches with a progress bar; unreadable files stop the run or, with
    `skip_unreadable`, are reported and skipped. Returns the result rows and the number skipped."""
    from tqdm import tqdm

    from preprocess import ImageReadError

    rows, skipped = [], 0
    with tqdm(total=len(paths), unit="img", desc="read", disable=quiet or len(paths) == 1 or None,
              file=sys.stderr) as progress:
        start = 0
        for batch in reader.read_batches(paths):
            for path, result in zip(paths[start:start + len(batch)], batch):
                if isinstance(result, ImageReadError):
                    if not skip_unreadable:
                        raise result
                    print(f"skipped: {result}", file=sys.stderr)
                    skipped += 1
                else:
                    rows.append({"path": str(path), "prediction": result.text,
                                 "confidence": round(result.confidence, 4)})
            start += len(batch)
            progress.update(len(batch))
    if not rows:
        raise ValueError(f"none of the {len(paths)} images in {paths[0].parent} could be read")
    return rows, skipped


def results_text(rows: list[dict], as_json: bool) -> str:
    """CSV (header path,prediction,confidence[,rejected]) or a JSON list."""
    if as_json:
        return json.dumps(rows, indent=2)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from files import write_text_atomic
    from reader import Reader

    paths = image_paths(args)
    reader = Reader.load(args.model, beam_width=args.beam_width, views=args.views,
                         reread_below=args.reread_below, try_variants=args.try_variants,
                         crop_variant=not args.no_auto_crop, invert=True if args.force_invert else None,
                         strong=args.strong, batch_size=args.batch_size, max_pixels=args.max_pixels)
    if args.save_debug and args.image:
        save_debug_stages(paths[0], reader, args.save_debug)
    rows, skipped = read_paths(reader, paths, args.quiet, skip_unreadable=bool(args.folder))
    if args.min_confidence > 0:
        for row in rows:
            row["rejected"] = row["confidence"] < args.min_confidence
    if not args.quiet:
        sys.stdout.write(results_text(rows, as_json=False))
    if args.output:
        write_text_atomic(args.output, results_text(rows, Path(args.output).suffix.lower() == ".json"))
    if args.folder:
        print_score(rows, reader.spec, skipped)
    return 0


def print_score(rows: list[dict], spec, skipped: int) -> None:
    """Exact match and CER over the files whose names are labels this model reads. Files
    named otherwise are not scored; when only some are, a warning says how many."""
    from metrics import score
    from preprocess import label_fit_warning, label_from_path

    truths = [label_from_path(r["path"]) for r in rows]
    fits = [spec.label_problem(t) is None for t in truths]
    if not any(fits):
        return
    warning = label_fit_warning(truths, spec, outcome="not scored")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    s = score([r["prediction"] for r, ok in zip(rows, fits) if ok], [t for t, ok in zip(truths, fits) if ok])
    print(f"exact_match={s['exact_match']:.4f} cer={s['cer']:.4f} n={s['n']}"
          + (f" skipped={skipped}" if skipped else ""))


def cli(argv: list[str] | None = None) -> int:
    from preprocess import ImageReadError
    from spec import ModelLoadError

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
