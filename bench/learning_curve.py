"""Learning curves on the labelled sets in ../shared/realdata: from scratch vs fine-tuned.

For each set (every folder with a SOURCE.md), a seeded 20% is held out for evaluation and
never trained on; models are trained by train.py itself on the first N images of the rest,
once from scratch and once fine-tuned from the shipped default model, and read the
held-out part. Writes docs/learning_curves.md (table), .json and .png (plot).

    python bench/learning_curve.py --sizes 50 100 250 500 all
    python bench/learning_curve.py --sets multicolorcaptcha --auto-crop --color-distance
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import train  # noqa: E402
from accuracy import read_folder  # noqa: E402
from files import write_text_atomic  # noqa: E402
from metrics import score  # noqa: E402
from preprocess import label_from_path, list_images  # noqa: E402
from reader import Reader  # noqa: E402
from spec import infer_spec  # noqa: E402

BASE_MODEL = ROOT / "saved_model" / "crnn_ctc_final.keras"
# Labelled sets made by others (file name = label, a SOURCE.md each), kept beside the clone.
REALDATA_DIR = ROOT.parent / "shared" / "realdata"
HELD_OUT_FRACTION = 0.2
# The settings for each mode, as a user would type them (see README, "Fine-tuning").
MODE_FLAGS = {
    "scratch": ["--epochs", "150", "--patience", "20"],
    "finetune": ["--epochs", "100", "--patience", "10"],
}


def split_set(folder: Path, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """(training pool, held-out) file lists; the same seed always holds out the same files."""
    files = list_images(folder)
    random.Random(seed).shuffle(files)
    cut = round(len(files) * HELD_OUT_FRACTION)
    return files[cut:], files[:cut]


def link_folder(files: list[Path], folder: Path) -> Path:
    """A folder of symbolic links: train.py reads it, nothing is copied."""
    folder.mkdir(parents=True)
    for f in files:
        (folder / f.name).symlink_to(f.resolve())
    return folder


def run_one(set_dir: Path, pool: list[Path], held_out: Path, size: int, mode: str,
            extra: list[str], work: Path, base_model: Path) -> dict:
    data = link_folder(pool[:size], work / f"{set_dir.name}_{mode}_{size}")
    out = work / f"out_{set_dir.name}_{mode}_{size}"
    start = time.time()
    args = ["--data-dir", str(data), "--out", str(out), "--test-fraction", "0",
            "--val-fraction", "0.15", *MODE_FLAGS[mode], *extra]
    if mode == "finetune":
        args += ["--init-from", str(base_model)]
    if train.main(args) != 0:
        raise RuntimeError(f"training failed: {args}")
    minutes = (time.time() - start) / 60
    predictions, truths, _ = read_folder(Reader.load(out / "crnn_ctc_final.keras"), held_out)
    result = score(predictions, truths)
    result.update(set=set_dir.name, size=size, mode=mode, minutes=round(minutes, 2))
    print(json.dumps(result))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--realdata", default=str(REALDATA_DIR), help="folder of labelled sets")
    parser.add_argument("--sets", nargs="*", help="set names (default: every folder in --realdata)")
    parser.add_argument("--sizes", nargs="+", default=["50", "100", "250", "500", "all"])
    parser.add_argument("--modes", nargs="+", default=["scratch", "finetune"], choices=list(MODE_FLAGS))
    parser.add_argument("--auto-crop", action="store_true", help="pass --auto-crop to train.py")
    parser.add_argument("--color-distance", action="store_true",
                        help="pass --color-distance to train.py")
    parser.add_argument("--no-augment", action="store_true", help="pass --no-augment to train.py")
    parser.add_argument("--base-model", default=str(BASE_MODEL), help="model to fine-tune from")
    parser.add_argument("--append", action="store_true",
                        help="keep the results already in the output JSON (resume or extend)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "learning_curves"),
                        help="prefix for the .json/.md/.png outputs")
    args = parser.parse_args()

    realdata = Path(args.realdata)
    sets = [realdata / s for s in args.sets] if args.sets else sorted(
        d for d in realdata.iterdir() if (d / "SOURCE.md").exists())
    extra = (["--auto-crop"] * args.auto_crop + ["--color-distance"] * args.color_distance
             + ["--no-augment"] * args.no_augment)
    output = Path(args.out + ".json")
    results = json.loads(output.read_text()) if args.append and output.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        for set_dir in sets:
            pool, held = split_set(set_dir)
            # The alphabet of the whole set, as a user would state it with --charset.
            charset = infer_spec([label_from_path(p) for p in pool + held]).charset
            held_out = link_folder(held, Path(tmp) / f"{set_dir.name}_held_out")
            for size in args.sizes:
                n = len(pool) if size == "all" else int(size)
                for mode in args.modes:
                    row = run_one(set_dir, pool, held_out, n, mode, extra + ["--charset", charset],
                                  Path(tmp), Path(args.base_model))
                    key = (row["set"], row["size"], row["mode"])
                    results = [r for r in results if (r["set"], r["size"], r["mode"]) != key] + [row]
                    results.sort(key=lambda r: (r["set"], r["size"], r["mode"]))
                    write_text_atomic(output, json.dumps(results, indent=2))  # saved after every run
                    write_table(results, Path(args.out + ".md"))
    plot(results, Path(args.out + ".png"))
    return 0


def write_table(results: list[dict], path: Path) -> None:
    """Write the results table into `path`, keeping the text written above an earlier table."""
    header = "| set | training images | mode | exact match | CER | train minutes |"
    preamble = path.read_text().split(header)[0] if path.exists() else ""
    lines = [header, "|---|---:|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['set']} | {r['size']} | {r['mode']} | {r['exact_match']:.4f} | "
                     f"{r['cer']:.4f} | {r['minutes']:.1f} |")
    write_text_atomic(path, preamble + "\n".join(lines) + "\n")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["set"] for r in results})
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for mode, style in (("scratch", "o--"), ("finetune", "s-")):
            rows = sorted((r for r in results if r["set"] == name and r["mode"] == mode),
                          key=lambda r: r["size"])
            if rows:
                ax.plot([r["size"] for r in rows], [r["exact_match"] for r in rows], style, label=mode)
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.set_title(name)
        ax.set_xlabel("training images")
        ax.set_ylabel("exact match on held-out images")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
