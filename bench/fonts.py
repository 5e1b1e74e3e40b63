"""Which of multicolorcaptcha's fonts and noise levels does a model misread?

The generator draws each symbol in one of its 44 bundled fonts, picked at random. This script
draws a fresh set as `generate.py --style multicolorcaptcha` does, records the font of every
symbol, reads the images with the model and prints, per font, how often the symbol in that
position was read right (answers of the wrong length count as wrong everywhere). It tells
apart a reader that fails on a few illegible fonts (a bound on exact match) from one that
fails on all of them (room to learn). It also lists, per font, the symbol pairs whose glyphs
are near-identical before rotation (intersection over union above 0.93). Last, exact match
per image setting: one background per cell or one for all, and difficulty 1-3 (1-3 noise
lines, 10-25 circles).

    python bench/fonts.py --model saved_model/multicolorcaptcha.keras --count 1500
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import generate  # noqa: E402
from metrics import score  # noqa: E402
from model import load_reader, read_files  # noqa: E402


def draw_recording_fonts(labels: list[str], folder: Path,
                         seed: int) -> tuple[list[Path], list[list[str]], list[tuple[bool, int]]]:
    """Write the images and return, per image, the font name of each symbol and the image's
    settings (one background per cell, difficulty)."""
    generator = generate._multicolor_generator()
    pick_font, pick_settings = generator.gen_rand_font, generate.multicolorcaptcha_settings
    chosen: list[str] = []
    settings: list[tuple[bool, int]] = []

    def recording(fonts):
        font = pick_font(fonts)
        chosen.append(Path(font).stem)
        return font

    def recording_settings() -> tuple[bool, int]:
        settings.append(pick_settings())
        return settings[-1]

    generator.gen_rand_font, generate.multicolorcaptcha_settings = recording, recording_settings
    paths, fonts = [], []
    try:
        for i, label in enumerate(labels):
            chosen.clear()
            path = folder / f"{label}_{i}.png"
            generate.draw_multicolorcaptcha(label, f"{seed}:{path.name}").save(path)
            paths.append(path)
            fonts.append(list(chosen))
    finally:
        generator.gen_rand_font, generate.multicolorcaptcha_settings = pick_font, pick_settings
    return paths, fonts, settings


def look_alike_pairs(font_path: str, charset: str, size: int = 40, threshold: float = 0.93) -> list[str]:
    """Symbol pairs the font draws nearly the same (binary glyphs, IoU above threshold)."""
    font = ImageFont.truetype(font_path, size)
    masks = {}
    for symbol in charset:
        image = Image.new("L", (2 * size, 2 * size), 0)
        ImageDraw.Draw(image).text((size // 4, size // 8), symbol, fill=255, font=font)
        masks[symbol] = np.asarray(image) > 60
    pairs = []
    for i, a in enumerate(charset):
        for b in charset[i + 1:]:
            union = (masks[a] | masks[b]).sum()
            if union and (masks[a] & masks[b]).sum() / union > threshold:
                pairs.append(a + b)
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "saved_model" / "multicolorcaptcha.keras"))
    parser.add_argument("--count", type=int, default=1500, help="images to draw")
    parser.add_argument("--seed", type=int, default=4242, help="label and pixel seed")
    args = parser.parse_args()

    model, spec = load_reader(args.model)
    # Labels the model can read: its own charset and longest length (4 of A-Z 0-9, as the set).
    labels = generate.synthetic_labels(args.count, args.seed, spec.max_length, spec.charset)
    with tempfile.TemporaryDirectory() as tmp:
        paths, fonts, settings = draw_recording_fonts(labels, Path(tmp), args.seed)
        texts, _ = read_files(model, spec, paths)
    right, seen = Counter(), Counter()
    for label, text, symbol_fonts in zip(labels, texts, fonts):
        for position, font in enumerate(symbol_fonts):
            seen[font] += 1
            right[font] += len(text) == len(label) and text[position] == label[position]
    exact = score(texts, labels)["exact_match"]
    print(f"{args.count} images, exact match {exact:.4f}, symbols read right "
          f"{sum(right.values()) / sum(seen.values()):.4f}")
    font_files = {Path(f).stem: f for f in generate._multicolor_generator().l_fonts}
    print(f"{'font':32s} {'symbols':>7s} {'right':>6s}  near-identical pairs")
    for font in sorted(seen, key=lambda f: right[f] / seen[f]):
        pairs = " ".join(look_alike_pairs(font_files[font], spec.charset))
        print(f"{font:32s} {seen[font]:7d} {right[font] / seen[font]:6.3f}  {pairs}")
    print(f"{'background':12s} {'difficulty':>10s} {'images':>7s} {'exact':>6s}")
    for setting in sorted(set(settings)):
        chosen_texts = [(t, s) for t, s, x in zip(texts, labels, settings) if x == setting]
        exact = score([t for t, _ in chosen_texts], [s for _, s in chosen_texts])["exact_match"]
        background = "per cell" if setting[0] else "one for all"
        print(f"{background:12s} {setting[1]:10d} {len(chosen_texts):7d} {exact:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
