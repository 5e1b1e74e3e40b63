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

A glyph never appears alone, though. `--in-captcha` cuts the training and test glyphs out of
whole CAPTCHAs instead: the symbol is drawn third of five, among random neighbours that
overlap it, squeezed sideways with them when their widths add up to more than the image
(`create_captcha_image`), under the dots and the arc, and read by the project's own
preprocessing; the crop is centred where the generator put it (recorded from its own calls).
`--model` also reads those test CAPTCHAs whole and prints how the CRNN read their third symbol.

    python bench/separability.py --learned 0Oo --in-captcha --per-symbol 10000 --epochs 8 \
        --model saved_model/crnn_ctc_final.keras

Does the reader's scale cost a pair anything? The reader sees the 70-row CAPTCHA at 50 rows.
`--scale generator` cuts the glyphs at the generator's own 70 rows instead (its grey levels,
the same contrast equalization, no downscale), a box 1.4 times as large around the same place.
For a pair, the classifier's error at the threshold that best balances the two swaps, and its
AUC, are printed too: where the argmax puts the line moves from run to run.

    python bench/separability.py --learned 0O --in-captcha --scale generator
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from captcha.image import ImageCaptcha
from PIL import Image, ImageDraw, ImageFilter
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preprocess import (DEFAULT_CHARSET, IMG_HEIGHT, equalize_contrast, placement,  # noqa: E402
                        preprocess_image, to_grayscale)

GENERATOR_HEIGHT = 70  # ImageCaptcha(width=200, height=70), read at IMG_HEIGHT rows
GLYPH_BOX = (48, 40)  # rows, columns around a glyph's ink centre, at the reader's scale
SCALES = {"reader": IMG_HEIGHT, "generator": GENERATOR_HEIGHT}  # rows the glyphs are cut at
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


def glyph_box(rows: int) -> tuple[int, int]:
    """GLYPH_BOX for glyphs cut at `rows` rows, even sides."""
    return tuple(2 * round(side * rows / IMG_HEIGHT / 2) for side in GLYPH_BOX)


def drawn_glyph(generator: ImageCaptcha, symbol: str, rng: np.random.Generator,
                rows: int = IMG_HEIGHT) -> np.ndarray:
    """One glyph as the generator draws it (its own random font size, rotation and warp) in a
    random ink on a light background, smoothed as the generator does, brought to `rows` rows
    for the image: a glyph_box crop around the ink, ink 1 and background 0."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    drawn = generator._draw_character(symbol, probe, (255, 255, 255, 255))
    ink = np.clip(np.asarray(drawn.convert("L"), np.float32) * 1.97 / 255, 0, 1)  # its paste mask
    canvas = np.full((GENERATOR_HEIGHT, ink.shape[1] + 20), 245.0, np.float32)
    top = (GENERATOR_HEIGHT - ink.shape[0]) // 2
    cell = canvas[top:top + ink.shape[0], 10:10 + ink.shape[1]]
    cell[:] = cell * (1 - ink) + rng.uniform(10, 200) * ink
    smooth = np.asarray(Image.fromarray(canvas.astype(np.uint8)).filter(ImageFilter.SMOOTH))
    scale = rows / GENERATOR_HEIGHT
    small = cv2.resize(smooth, (max(1, round(smooth.shape[1] * scale)), rows),
                       interpolation=cv2.INTER_AREA)
    darkness = 1 - small.astype(np.float32) / 255
    ys, xs = np.nonzero(darkness > 0.15)
    return crop_around(darkness, int(ys.mean()), int(xs.mean()), glyph_box(rows))


def crop_around(darkness: np.ndarray, row: int, column: int, box: tuple[int, int]) -> np.ndarray:
    """The `box` (rows, columns) of `darkness` centred on (row, column), zero beyond its edges."""
    h, w = box
    padded = np.pad(darkness, ((h, h), (w, w)))
    cy, cx = row + h, column + w
    return padded[cy - h // 2: cy + h // 2, cx - w // 2: cx + w // 2]


def glyph_in_captcha(generator: ImageCaptcha, symbol: str, rng: np.random.Generator,
                     rows: int = IMG_HEIGHT) -> tuple[np.ndarray, np.ndarray, str]:
    """`symbol` as the third of five in a whole CAPTCHA with random neighbours: the glyph_box
    crop around its place, cut at `rows` rows (the reader's: after the project's preprocessing;
    the generator's: its own pixels, contrast equalized the same way), the whole image as the
    reader gets it, and the label.

    Where the generator puts a glyph is random (secrets), so the sizes of the glyphs it draws
    and the columns where it pastes them are recorded from its own calls; the final squeeze
    to the image width is the ratio `create_captcha_image` applies."""
    neighbours = "".join(rng.choice(list(DEFAULT_CHARSET), 4))
    label = neighbours[:2] + symbol + neighbours[2:]
    drawn, columns = [], []
    draw_character, paste = generator._draw_character, Image.Image.paste

    def recording_draw(c, draw, color):
        glyph_image = draw_character(c, draw, color)
        drawn.append((c, glyph_image.width))
        return glyph_image

    def recording_paste(self, im, box=None, mask=None):
        if mask is not None:  # the glyphs; the background is pasted without a mask
            columns.append(box[0])
        return paste(self, im, box, mask)

    generator._draw_character, Image.Image.paste = recording_draw, recording_paste
    try:
        image = generator.generate_image(label)
    finally:
        Image.Image.paste = paste
        del generator._draw_character
    squeeze = generator._width / max(generator._width, sum(width for _, width in drawn))
    third = [i for i, (c, _) in enumerate(drawn) if c != " "][2]
    centre = (columns[third] + drawn[third][1] / 2) * squeeze  # in the generator's columns
    read = preprocess_image(image)[..., 0]
    if rows == IMG_HEIGHT:
        scale, _, _, top, left = placement(image.height, image.width)
        row, column = top + image.height / 2 * scale, left + centre * scale
        darkness = 1 - read
    else:
        row, column = image.height / 2, centre
        darkness = 1 - equalize_contrast(to_grayscale(image)).astype(np.float32) / 255
    return crop_around(darkness, round(row), round(column), glyph_box(rows)), read, label


def pair_separation(p_second: np.ndarray, is_second: np.ndarray) -> tuple[float, float]:
    """For a pair: the mean of the two swap rates at the threshold on P(second symbol) that
    makes it least, and the AUC. Unlike the argmax's swaps, neither depends on where training
    happened to put the line between the two."""
    first_read_as_second, second_read_as_second, _ = roc_curve(is_second, p_second)
    balanced = np.min((first_read_as_second + 1 - second_read_as_second) / 2)
    return float(balanced), float(roc_auc_score(is_second, p_second))


def learned_confusions(symbols: str, per_symbol: int, epochs: int, in_captcha: bool = False,
                       model_path: str | None = None, seed: int = 0, rows: int = IMG_HEIGHT,
                       ) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float] | None]:
    """Train a small CNN to tell `symbols` apart from drawn glyphs (alone, or cut from whole
    CAPTCHAs) cut at `rows` rows; its confusion matrix (rows: true symbol, columns: read as)
    on 3,000 new glyphs of each symbol, and for a pair its `pair_separation`. With
    `model_path` (and `in_captcha`), also the CRNN's reading of the third symbol of those
    test CAPTCHAs, with a last column for anything else (another symbol, or an answer of
    another length)."""
    from model import load_reader, predict_texts, stderr_kept_unless_failing

    with stderr_kept_unless_failing():  # TensorFlow's start-up lines
        import keras
        from keras import layers

    generator = ImageCaptcha(width=200, height=GENERATOR_HEIGHT)
    rng = np.random.default_rng(seed)

    def glyph_set(n: int, keep_wholes: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                              list[str]]:
        classes = np.arange(n * len(symbols)) % len(symbols)
        if not in_captcha:
            glyphs = np.stack([drawn_glyph(generator, symbols[k], rng, rows) for k in classes])
            return glyphs[..., None], classes, None, []
        glyphs, wholes, labels = [], [], []
        for k in tqdm(classes, desc="CAPTCHAs", leave=False):
            crop, whole, label = glyph_in_captcha(generator, symbols[k], rng, rows)
            glyphs.append(crop)
            if keep_wholes:  # only the test set's: 90,000 whole images would take gigabytes
                wholes.append(whole)
                labels.append(label)
        return np.stack(glyphs)[..., None], classes, np.stack(wholes)[..., None] if wholes else None, labels

    def standardized(glyphs: np.ndarray) -> np.ndarray:
        """Zero mean, unit spread per glyph: amid neighbours and noise, raw darkness left
        the classifier at chance for whole epochs."""
        mean = glyphs.mean(axis=(1, 2, 3), keepdims=True)
        return (glyphs - mean) / (glyphs.std(axis=(1, 2, 3), keepdims=True) + 1e-6)

    train_x, train_y, _, _ = glyph_set(per_symbol)
    test_x, test_y, test_wholes, test_labels = glyph_set(3000, keep_wholes=model_path is not None)
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((*glyph_box(rows), 1))
    for filters in (16, 32, 64):
        for _ in range(2):  # BatchNorm: without it the larger crops left it at chance for 8 epochs
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.ReLU()(layers.BatchNormalization()(x))
        x = layers.MaxPooling2D()(x)
    x = layers.Dropout(0.3)(layers.GlobalAveragePooling2D()(x))
    classifier = keras.Model(inputs, layers.Dense(len(symbols), activation="softmax")(x))
    classifier.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    classifier.fit(standardized(train_x), train_y, batch_size=128, epochs=epochs, verbose=2,
                   callbacks=[keras.callbacks.ReduceLROnPlateau("loss", factor=0.3, patience=1)])
    probs = classifier.predict(standardized(test_x), verbose=0)
    confusions = np.zeros((len(symbols), len(symbols)), int)
    np.add.at(confusions, (test_y, probs.argmax(axis=1)), 1)
    separation = pair_separation(probs[:, 1], test_y == 1) if len(symbols) == 2 else None
    if not (model_path and in_captcha):
        return confusions, None, separation
    model, spec = load_reader(model_path)
    texts, _ = predict_texts(model, test_wholes, spec)
    crnn = np.zeros((len(symbols), len(symbols) + 1), int)
    for true, text, label in zip(test_y, texts, test_labels):
        third = text[2] if len(text) == len(label) else ""
        crnn[true, symbols.index(third) if third and third in symbols else len(symbols)] += 1
    return confusions, crnn, separation


def print_confusions(title: str, symbols: str, confusions: np.ndarray) -> None:
    """Rows: true symbol; columns: read as, each row's swaps also as shares."""
    columns = symbols + ("?" if confusions.shape[1] > len(symbols) else "")
    print(title)
    print("    " + "".join(f"{s:>7}" for s in columns))
    for i, (symbol, row) in enumerate(zip(symbols, confusions)):
        share = ", ".join(f"{n / row.sum():.1%} as {columns[j]}" for j, n in enumerate(row) if j != i and n)
        print(f"{symbol:>4}" + "".join(f"{n:>7}" for n in row) + (f"   ({share})" if share else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learned", metavar="SYMBOLS", help="also train a glyph classifier on these")
    parser.add_argument("--per-symbol", type=int, default=10000, help="training glyphs per symbol")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--in-captcha", action="store_true",
                        help="cut the glyphs from whole CAPTCHAs (neighbours, squeeze, noise)")
    parser.add_argument("--model", help="with --in-captcha: also read the test CAPTCHAs with this model")
    parser.add_argument("--scale", choices=SCALES, default="reader",
                        help="cut the glyphs at the reader's 50 rows or the generator's own 70")
    args = parser.parse_args()
    if args.model and not (args.learned and args.in_captcha):
        parser.error("--model reads the CAPTCHAs of --learned SYMBOLS --in-captcha")
    generator = ImageCaptcha(width=200, height=GENERATOR_HEIGHT)
    sizes = range(len(generator.truefonts))
    print("pair  box sizes per font size (w x h)                     shape difference")
    for pair in PAIRS:
        glyphs = {s: [glyph(generator, s, i) for i in sizes] for s in pair}
        boxes = "  ".join(f"{s}:" + ",".join(f"{g.width}x{g.height}" for g in glyphs[s]) for s in pair)
        diff = np.mean([difference(glyphs[pair[0]][i], glyphs[pair[1]][i]) for i in sizes])
        print(f"{pair:<5} {boxes:<52} {diff:.3f}")
    if args.learned:
        confusions, crnn, separation = learned_confusions(args.learned, args.per_symbol, args.epochs,
                                                          args.in_captcha, args.model,
                                                          rows=SCALES[args.scale])
        where = "cut from whole CAPTCHAs" if args.in_captcha else "drawn alone"
        print_confusions(f"glyph classifier, glyphs {where} at {SCALES[args.scale]} rows, "
                         f"{args.per_symbol} training glyphs per symbol, {args.epochs} epochs; "
                         "rows: true symbol, columns: read as (3,000 new glyphs each)",
                         args.learned, confusions)
        if separation:
            print(f"{args.learned[0]}/{args.learned[1]}: mean swap rate at the best threshold "
                  f"{separation[0]:.1%}, AUC {separation[1]:.4f}")
        if crnn is not None:
            print_confusions(f"{args.model}, reading the same test CAPTCHAs whole: their third symbol "
                             "(?: anything else, or an answer of another length)", args.learned, crnn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
