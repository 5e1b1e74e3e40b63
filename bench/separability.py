"""How far apart does the default generator draw the symbols that readers confuse?

ImageCaptcha draws each symbol at a random font size (42, 50 or 56), crops it to its ink,
then stretches it into the box (text right edge x text bottom) before rotating (+-30 deg) and
warping it. The stretch gives a lowercase "o" the height of an "O". This script renders each
symbol of a pair the way the generator does, without the random rotation and warp, and
prints the box sizes per font size and the pixel difference between the two glyphs brought
to one size: 0 means the generator cannot tell them apart except through random noise.

    python bench/separability.py

Pixel differences say little about what a reader can learn, so `--learned SYMBOLS` also trains
a small classifier on single glyphs that the generator draws with its own code (random font
size, rotation, warp, ink colour and smoothing; no neighbours, dots or arcs, so the task is
easier than a whole CAPTCHA) and prints its confusion matrix on new glyphs: what a model
can at best do on these symbols, and how far the CRNN is from it.

    python bench/separability.py --learned 0Oo --per-symbol 10000 --epochs 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from captcha.image import ImageCaptcha
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preprocess import IMG_HEIGHT  # noqa: E402

GENERATOR_HEIGHT = 70  # ImageCaptcha(width=200, height=70), read at IMG_HEIGHT rows
GLYPH_BOX = (48, 40)  # rows, columns around a glyph's ink centre, at the reader's scale
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


def drawn_glyph(generator: ImageCaptcha, symbol: str, rng: np.random.Generator) -> np.ndarray:
    """One glyph as the generator draws it (its own random font size, rotation and warp) in a
    random ink on a light background, smoothed as the generator does, at the reader's scale:
    a GLYPH_BOX crop around the ink, ink 1 and background 0."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    drawn = generator._draw_character(symbol, probe, (255, 255, 255, 255))
    ink = np.clip(np.asarray(drawn.convert("L"), np.float32) * 1.97 / 255, 0, 1)  # its paste mask
    canvas = np.full((GENERATOR_HEIGHT, ink.shape[1] + 20), 245.0, np.float32)
    top = (GENERATOR_HEIGHT - ink.shape[0]) // 2
    cell = canvas[top:top + ink.shape[0], 10:10 + ink.shape[1]]
    cell[:] = cell * (1 - ink) + rng.uniform(10, 200) * ink
    smooth = np.asarray(Image.fromarray(canvas.astype(np.uint8)).filter(ImageFilter.SMOOTH))
    scale = IMG_HEIGHT / GENERATOR_HEIGHT
    small = cv2.resize(smooth, (max(1, round(smooth.shape[1] * scale)), IMG_HEIGHT),
                       interpolation=cv2.INTER_AREA)
    darkness = 1 - small.astype(np.float32) / 255
    ys, xs = np.nonzero(darkness > 0.15)
    h, w = GLYPH_BOX
    padded = np.pad(darkness, ((h, h), (w, w)))
    cy, cx = int(ys.mean()) + h, int(xs.mean()) + w
    return padded[cy - h // 2: cy + h // 2, cx - w // 2: cx + w // 2]


def learned_confusions(symbols: str, per_symbol: int, epochs: int, seed: int = 0) -> np.ndarray:
    """Train a small CNN to tell `symbols` apart from drawn glyphs; its confusion matrix
    (rows: true symbol, columns: read as) on 3,000 new glyphs of each symbol."""
    from model import stderr_kept_unless_failing

    with stderr_kept_unless_failing():  # TensorFlow's start-up lines
        import keras
        from keras import layers

    generator = ImageCaptcha(width=200, height=GENERATOR_HEIGHT)
    rng = np.random.default_rng(seed)

    def glyph_set(n: int) -> tuple[np.ndarray, np.ndarray]:
        classes = np.arange(n * len(symbols)) % len(symbols)
        images = np.stack([drawn_glyph(generator, symbols[k], rng) for k in classes])
        return images[..., None], classes

    train_x, train_y = glyph_set(per_symbol)
    test_x, test_y = glyph_set(3000)
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((*GLYPH_BOX, 1))
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Dropout(0.3)(layers.GlobalAveragePooling2D()(x))
    classifier = keras.Model(inputs, layers.Dense(len(symbols), activation="softmax")(x))
    classifier.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    classifier.fit(train_x, train_y, batch_size=128, epochs=epochs, verbose=2,
                   callbacks=[keras.callbacks.ReduceLROnPlateau("loss", factor=0.3, patience=1)])
    read_as = classifier.predict(test_x, verbose=0).argmax(axis=1)
    confusions = np.zeros((len(symbols), len(symbols)), int)
    np.add.at(confusions, (test_y, read_as), 1)
    return confusions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learned", metavar="SYMBOLS", help="also train a glyph classifier on these")
    parser.add_argument("--per-symbol", type=int, default=10000, help="training glyphs per symbol")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    generator = ImageCaptcha(width=200, height=GENERATOR_HEIGHT)
    sizes = range(len(generator.truefonts))
    print("pair  box sizes per font size (w x h)                     shape difference")
    for pair in PAIRS:
        glyphs = {s: [glyph(generator, s, i) for i in sizes] for s in pair}
        boxes = "  ".join(f"{s}:" + ",".join(f"{g.width}x{g.height}" for g in glyphs[s]) for s in pair)
        diff = np.mean([difference(glyphs[pair[0]][i], glyphs[pair[1]][i]) for i in sizes])
        print(f"{pair:<5} {boxes:<52} {diff:.3f}")
    if args.learned:
        confusions = learned_confusions(args.learned, args.per_symbol, args.epochs)
        print(f"glyph classifier, {args.per_symbol} training glyphs per symbol, {args.epochs} epochs; "
              "rows: true symbol, columns: read as (3,000 new glyphs each)")
        print("    " + "".join(f"{s:>7}" for s in args.learned))
        for symbol, row in zip(args.learned, confusions):
            share = ", ".join(f"{n / row.sum():.1%} as {args.learned[j]}" for j, n in enumerate(row)
                              if j != args.learned.index(symbol) and n)
            print(f"{symbol:>4}" + "".join(f"{n:>7}" for n in row) + (f"   ({share})" if share else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
