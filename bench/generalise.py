"""How well a model reads styles it never saw: zero-shot, and fine-tuned on 100 and 500
labelled images of each with the documented command and nothing else
(`python train.py --init-from MODEL --data-dir DIR --name NAME`).

The outside styles are generators and font families that pretraining leaves out
(fonts/README.md lists the families; the base model's card its data):
- `default-unseen-fonts`: the default generator (captcha.ImageCaptcha) drawing held-out fonts;
- `wheezy`: the wheezy.captcha generator (generate.py --style wheezy) in held-out fonts;
- `varied-unseen-fonts`: generate.py's varied style in held-out fonts;
- `multicolorcaptcha`: that package's generator (4 of A-Z 0-9);
- `wheezy-4-caps`: wheezy again, in held-out fonts, with a site's narrower alphabet: 4 of A-Z 2-9;
and, when ../shared/realdata is beside the clone, each labelled set there (zero-shot only).
Every style gets 1,000 test images and a separate pool of 500 for fine-tuning, made once into
data/generalise/ by seeds of their own. Writes OUT.md (table), OUT.json and OUT.png (plot).

    python bench/generalise.py --model saved_model/crnn_ctc_final.keras saved_model/base.keras ddddocr
    python bench/generalise.py --model saved_model/base.keras --finetune 100 500
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from files import write_text_atomic  # noqa: E402
from generate import generate_captchas  # noqa: E402
from metrics import score  # noqa: E402
from preprocess import list_images, scan_labelled_folder  # noqa: E402
from peers import read_with_ddddocr  # noqa: E402
from reader import Reader  # noqa: E402

DATA = ROOT / "data" / "generalise"
REALDATA_DIR = ROOT.parent / "shared" / "realdata"
# Font families never drawn in pretraining (fonts/README.md); Debian packages install them.
HELD_OUT_FONTS = tuple("/usr/share/fonts/" + place for place in (
    "truetype/dejavu", "truetype/freefont", "opentype/urw-base35", "opentype/linux-libertine",
    "truetype/gentium", "truetype/crosextra/Carlito-Regular.ttf", "truetype/hack", "truetype/noto"))
FONT_PACKAGES = ("fonts-dejavu-core fonts-freefont-ttf fonts-urw-base35 fonts-linuxlibertine "
                 "fonts-sil-gentium fonts-crosextra-carlito fonts-hack fonts-noto-mono")
LETTERS_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
CAPS_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ23456789"  # no 0 and 1, which read as O and I
# style name -> generate_captchas options (labels: 5 of A-Z a-z 0-9 unless given)
STYLES = {
    "default-unseen-fonts": dict(style="default", held_out_fonts=True),
    "wheezy": dict(style="wheezy", held_out_fonts=True),
    "varied-unseen-fonts": dict(style="varied", held_out_fonts=True, min_length=4, length=6),
    "multicolorcaptcha": dict(style="multicolorcaptcha", length=4, charset=LETTERS_DIGITS),
    # A site's narrower alphabet, as many show: 4 of A-Z 2-9, warped, in held-out fonts.
    "wheezy-4-caps": dict(style="wheezy", held_out_fonts=True, length=4, charset=CAPS_DIGITS),
}
TEST_COUNT, POOL_COUNT = 1000, 500


def held_out_fonts() -> tuple[str, ...]:
    found = tuple(f for f in HELD_OUT_FONTS if Path(f).exists())
    if not found:
        raise SystemExit(f"error: none of the held-out fonts is installed; on Debian: apt-get install "
                         f"{FONT_PACKAGES}")
    return found


def make_style(name: str) -> tuple[Path, Path]:
    """(test folder, fine-tuning pool folder) of one outside style, generated on first use;
    the seeds follow the style's place in STYLES, so a folder always holds the same draw."""
    index = list(STYLES).index(name)
    options = dict(STYLES[name])
    fonts = held_out_fonts() if options.pop("held_out_fonts", False) else None
    folders = []
    for part, count, seed in (("test", TEST_COUNT, 9100 + index), ("pool", POOL_COUNT, 9200 + index)):
        folder = DATA / name / part
        generate_captchas(folder, count, seed=seed, fonts=fonts, **options)
        folders.append(folder)
    return folders[0], folders[1]


def link_first(pool: Path, size: int, folder: Path) -> Path:
    """The first `size` images of the pool, as symbolic links (nothing is copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in list_images(pool)[:size]:
        link = folder / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    return folder


def fine_tune(model: Path, pool: Path, size: int, name: str, work: Path) -> tuple[Path, float]:
    """The documented fine-tuning command, run as a user runs it; (model, minutes)."""
    import subprocess

    data = link_first(pool, size, work / f"{name}_{size}")
    out = work / f"out_{name}_{size}"
    start = time.time()
    command = [sys.executable, str(ROOT / "train.py"), "--init-from", str(model), "--data-dir", str(data),
               "--name", name, "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return out / f"{name}_final.keras", (time.time() - start) / 60


PEER = "ddddocr"  # as --model: the peer out of the box (pip install ddddocr==1.6.1), for comparison


def reading_function(model: str):
    """paths -> texts, for one of our models or the peer."""
    if model == PEER:
        return lambda paths: read_with_ddddocr(paths)[0]
    reader = Reader.load(model)
    return lambda paths: [r.text for r in reader.read_all(paths)]


def scored(read, folder: Path) -> dict:
    """Scores over every labelled image, those with labels the model cannot give included
    (a model of 5 symbols reading 4): they count as wrong, as they would for a user."""
    found = scan_labelled_folder(folder, None)
    result = score(read(found.paths), found.labels)
    return {k: result[k] for k in ("exact_match", "exact_match_ci", "cer", "n")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=[str(ROOT / "saved_model" / "crnn_ctc_final.keras")],
                        help=f"models to compare, each scored on every style; {PEER!r}: that peer")
    parser.add_argument("--styles", nargs="+", choices=list(STYLES), default=list(STYLES))
    parser.add_argument("--finetune", nargs="*", type=int, default=[], metavar="N",
                        help="also fine-tune on the first N pool images of each style (at most 500)")
    parser.add_argument("--no-realdata", action="store_true", help="leave out ../shared/realdata")
    parser.add_argument("--out", default=str(ROOT / "docs" / "generalise"),
                        help="prefix of the .md, .json and .png outputs")
    args = parser.parse_args()
    if any(not 1 <= n <= POOL_COUNT for n in args.finetune):
        parser.error(f"--finetune sizes must be between 1 and {POOL_COUNT}")
    rows = []
    work = Path(tempfile.mkdtemp(prefix="generalise-"))
    folders = {name: make_style(name) for name in args.styles}
    if not args.no_realdata and REALDATA_DIR.is_dir():
        folders.update({f"realdata/{p.name}": (p, None) for p in sorted(REALDATA_DIR.iterdir())
                        if (p / "SOURCE.md").exists()})
    for model in args.model:
        read = reading_function(model)
        for name, (test, pool) in folders.items():
            row = {"style": name, "model": Path(model).name, "zero_shot": scored(read, test)}
            for size in args.finetune if pool and model != PEER else []:
                tuned, minutes = fine_tune(Path(model), pool, size, name.replace("-", "_"), work)
                row[f"finetune_{size}"] = {**scored(reading_function(str(tuned)), test),
                                           "minutes": round(minutes, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    command = "python bench/generalise.py " + " ".join(sys.argv[1:])
    write_text_atomic(Path(args.out + ".json"), json.dumps({"command": command, "rows": rows}, indent=2))
    write_table(rows, args.finetune, command, Path(args.out + ".md"))
    plot(rows, Path(args.out + ".png"))
    return 0


def write_table(rows: list[dict], sizes: list[int], command: str, path: Path) -> None:
    header = ["style", "model", "zero-shot exact (ignoring case)", "CER",
              *(f"fine-tuned on {n}: exact (minutes)" for n in sizes)]
    lines = ["# Reading styles never seen in training", "",
             f"`{command}`", "",
             "1,000 test images of each generated style (realdata: every image of the set); fine-tuned",
             "with `python train.py --init-from MODEL --data-dir DIR --name NAME` on the first N of",
             "another 500. A label a model cannot give (its lengths or symbols) counts as wrong.", "",
             "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in rows:
        zero = row["zero_shot"]
        cells = [row["style"], row["model"], f"{zero['exact_match']:.3f} ({zero['exact_match_ci']:.3f})",
                 f"{zero['cer']:.3f}"]
        for n in sizes:
            tuned = row.get(f"finetune_{n}")
            cells.append(f"{tuned['exact_match']:.3f} ({tuned['minutes']:.0f})" if tuned else "")
        lines.append("| " + " | ".join(cells) + " |")
    write_text_atomic(path, "\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    """Zero-shot exact match, one group of bars per style, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = list(dict.fromkeys(row["style"] for row in rows))
    models = list(dict.fromkeys(row["model"] for row in rows))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, model in enumerate(models):
        exact = {row["style"]: row["zero_shot"]["exact_match"] for row in rows if row["model"] == model}
        ax.bar([k + i * width for k in range(len(styles))], [exact.get(s, 0) for s in styles], width,
               label=model)
    ax.set_xticks([k + width * (len(models) - 1) / 2 for k in range(len(styles))], styles,
                  rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("zero-shot exact match")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
