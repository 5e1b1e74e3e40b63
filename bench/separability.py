"""How far apart does the default generator draw the symbols that readers confuse?

ImageCaptcha draws each symbol at a random font size (42, 50 or 56), crops it to its ink,
then stretches it into the box (text right edge x text bottom) before rotating (+-30 deg) and
warping it. The stretch gives a lowercase "o" the height of an "O". This script renders each
symbol of a pair the way the generator does, without the random rotation and warp, and
prints the box sizes per font size and the pixel difference between the two glyphs brought
to one size: 0 means the generator cannot tell them apart except through random noise.

    python bench/separability.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from captcha.image import ImageCaptcha
from PIL import Image, ImageDraw

PAIRS = ["cC", "oO", "sS", "vV", "wW", "xX", "zZ", "uU", "kK", "pP", "0O", "0o", "1l", "lI", "1I",
         "9g", "5S", "2Z", "8B", "qg"]


def glyph(generator: ImageCaptcha, symbol: str, font_index: int) -> Image.Image:
    """The symbol as the generator stretches it, before rotation and warp."""
    font = generator.truefonts[font_index]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    _, _, w, h = probe.multiline_textbbox((1, 1), symbol, font=font)
    im = Image.new("L", (int(w) + 10, int(h) + 10), 0)
    ImageDraw.Draw(im).text((5, 5), symbol, font=font, fill=255)
    return im.crop(im.getbbox()).resize((int(w), int(h)))


def difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference (0..1) of the two glyphs resized to a common box."""
    size = (32, 48)
    return float(np.abs(np.asarray(a.resize(size), float) - np.asarray(b.resize(size), float)).mean() / 255)


def main() -> int:
    generator = ImageCaptcha(width=200, height=70)
    sizes = range(len(generator.truefonts))
    print("pair  box sizes per font size (w x h)                     shape difference")
    for pair in PAIRS:
        glyphs = {s: [glyph(generator, s, i) for i in sizes] for s in pair}
        boxes = "  ".join(f"{s}:" + ",".join(f"{g.width}x{g.height}" for g in glyphs[s]) for s in pair)
        diff = np.mean([difference(glyphs[pair[0]][i], glyphs[pair[1]][i]) for i in sizes])
        print(f"{pair:<5} {boxes:<52} {diff:.3f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
