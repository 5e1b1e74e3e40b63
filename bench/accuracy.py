"""Accuracy of a model on CAPTCHAs it has never seen, with the confusions that remain.

By default generates a fresh default-style set (the generator's noise is never the same
twice, and the label seed differs from training's 0), or reads an existing labelled folder.

    python bench/accuracy.py --count 2000 --seed 2026
    python generate.py --out data/acc10k --count 10000 --seed 31337    # a set saved once, then
    python bench/accuracy.py --folder data/acc10k --views 3            # 3 shifted views
    python bench/accuracy.py --folder data/acc10k --views 5 --reread-below 0.9   # views if unsure
    python bench/accuracy.py --folder tests/data/sample200 --record sample200   # what tests check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from files import write_text_atomic  # noqa: E402
from generate import generate_captchas  # noqa: E402
from metrics import calibration_report, confusion_pairs, score  # noqa: E402
from preprocess import readable_labelled_images  # noqa: E402
from reader import Reader  # noqa: E402
from spec import ModelLoadError  # noqa: E402


def read_folder(reader: Reader, folder: Path) -> tuple[list[str], list[str], list[float]]:
    """(predictions, truths, confidences) for every labelled image in `folder` the model can
    read; the others are counted in a warning."""
    scan = readable_labelled_images(folder, reader.spec)
    readings = reader.read_all(scan.paths)
    return [r.text for r in readings], scan.labels, [r.confidence for r in readings]


def merge_lookalikes(text: str) -> str:
    """Case and 0/O/o forgiven: the default generator draws 0 and O as the same oval
    (docs/experiments.md), so what is left after merging them is what the model, not the
    glyphs, gets wrong."""
    return text.lower().replace("0", "o")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "saved_model" / "crnn_ctc_final.keras"))
    parser.add_argument("--folder", help="labelled folder to read instead of a generated set")
    parser.add_argument("--count", type=int, default=2000, help="images to generate")
    parser.add_argument("--seed", type=int, default=2026, help="label seed for the generated set")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--beam-width", type=int, default=1)
    parser.add_argument("--views", type=int, help="sideways-shifted readings averaged per image "
                        "(test.py --views; default: the model's own)")
    parser.add_argument("--reread-below", type=float, default=0.0, metavar="P", help="with --views: "
                        "only answers less confident than P after one reading get the views "
                        "(test.py --reread-below); also prints the share re-read")
    parser.add_argument("--top", type=int, default=15, help="confusion pairs to list")
    parser.add_argument("--try-variants", action="store_true", help="also read each image inverted, "
                        "thickened and cropped, keeping the most confident reading (test.py --try-variants)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--record", metavar="KEY", help="also store exact match and CER under KEY in "
                        "the model's .metrics.json, where the tests find the figures they check")
    args = parser.parse_args()
    if args.views is not None and args.views < 1:
        parser.error("--views must be positive")

    options = dict(batch_size=args.batch_size, beam_width=args.beam_width, try_variants=args.try_variants)
    reader = Reader.load(args.model, views=args.views, reread_below=args.reread_below, **options)
    args.views = reader.views
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder) if args.folder else Path(tmp)
        if not args.folder:
            generate_captchas(folder, args.count, seed=args.seed)
        predictions, truths, confidences = read_folder(reader, folder)
        reread_share = None
        if args.reread_below:
            once = read_folder(Reader.load(args.model, views=1, **options), folder)[2]
            reread_share = float(np.mean(np.array(once) < args.reread_below))
    results = score(predictions, truths)
    pairs = confusion_pairs(predictions, truths)
    if reread_share is not None:
        results["reread_share"] = reread_share
    results["exact_match_ci_0o"] = score([merge_lookalikes(p) for p in predictions],
                                         [merge_lookalikes(t) for t in truths])["exact_match"]
    calib = calibration_report(confidences, [p == t for p, t in zip(predictions, truths)])
    results["calibration"] = {k: v for k, v in calib.items() if k != "table"}
    # Files first: a report piped into `head` may end this process at any line below.
    if args.record:
        record(Path(args.model).with_suffix(".metrics.json"), args.record, results)
    if args.json:
        write_text_atomic(args.json, json.dumps(
            results | {"confusions": {f"{t}->{p}": n for (t, p), n in pairs.most_common()}}, indent=2))

    source = args.folder or f"generated default style, {args.count} images, seed {args.seed}"
    print(f"model: {args.model}\ndata: {source}" + (f"\nviews: {args.views}" if args.views > 1 else ""))
    if reread_share is not None:
        print(f"re-read with {args.views} views below confidence {args.reread_below}: "
              f"{reread_share:.1%} of the images (model time {1 + reread_share * (args.views - 1):.2f}x "
              "one reading)")
    print(f"exact_match={results['exact_match']:.4f} exact_match_ci={results['exact_match_ci']:.4f} "
          f"cer={results['cer']:.4f} n={results['n']}")
    case_only = sum(n for (t, p), n in pairs.items() if t.lower() == p.lower())
    print(f"substitutions: {sum(pairs.values())}, of which case only: {case_only}")
    print(f"exact match ignoring case and 0/O/o: {results['exact_match_ci_0o']:.4f}")
    print("top confusions (true -> predicted: count):")
    for (t, p), n in pairs.most_common(args.top):
        print(f"  {t} -> {p}: {n}")
    print(f"confidence: ECE={calib['ece']:.4f}; accuracy at 100% coverage "
          f"{calib['accuracy_at_100_coverage']:.4f}, at 90% coverage "
          f"{calib['accuracy_at_90_coverage']:.4f} "
          f"(--min-confidence {calib['threshold_at_90_coverage']:.3f})")
    print("reliability (confidence bin: n, mean confidence, accuracy):")
    for lo, hi, n, mean_conf, acc in calib["table"]:
        print(f"  {lo:.1f}-{hi:.1f}: {n:5d}  {mean_conf:.3f}  {acc:.3f}")
    return 0


def record(metrics_path: Path, key: str, results: dict) -> None:
    """Merge the headline figures into a model's metrics file under `key`."""
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics[key] = {k: round(results[k], 4) for k in ("exact_match", "exact_match_ci", "cer")}
    metrics[key]["n"] = results["n"]
    write_text_atomic(metrics_path, json.dumps(metrics, indent=2))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ModelLoadError, ValueError) as err:
        sys.exit(f"error: {err}")
    except BrokenPipeError:  # the reader of a pipe stopped early; the files are written by then
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)
