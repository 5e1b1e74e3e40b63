"""Draw docs/predictions.png: each sample CAPTCHA with the shipped model's reading.

    python docs/make_figures.py            # reads docs/samples/ with saved_model/crnn_ctc_final.keras
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preprocess import label_from_path, list_images  # noqa: E402
from reader import Reader  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "saved_model" / "crnn_ctc_final.keras"))
    parser.add_argument("--samples", default=str(ROOT / "docs" / "samples"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "predictions.png"))
    args = parser.parse_args()

    paths = list_images(args.samples)
    readings = Reader.load(args.model).read_all(paths)
    cell_w, cell_h, cols = 220, 100, 4
    rows = (len(paths) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)
    for i, (path, reading) in enumerate(zip(paths, readings)):
        x, y = (i % cols) * cell_w + 10, (i // cols) * cell_h + 4
        sheet.paste(Image.open(path).convert("RGB"), (x, y))
        truth = label_from_path(path)
        colour = (0, 120, 0) if reading.text == truth else (200, 0, 0)
        draw.text((x, y + 74), f"read {reading.text}  ({reading.confidence:.2f})", fill=colour, font=font)
    sheet.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
