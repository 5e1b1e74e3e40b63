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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from captcha.image import ImageCaptcha
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preprocess import DEFAULT_CHARSET, IMG_HEIGHT, placement, preprocess_image  # noqa: E402

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
    return crop_around(darkness, int(ys.mean()), int(xs.mean()))


def crop_around(darkness: np.ndarray, row: int, column: int) -> np.ndarray:
    """The GLYPH_BOX of `darkness` centred on (row, column), zero beyond its edges."""
    h, w = GLYPH_BOX
    padded = np.pad(darkness, ((h, h), (w, w)))
    cy, cx = row + h, column + w
    return padded[cy - h // 2: cy + h // 2, cx - w // 2: cx + w // 2]


def glyph_in_captcha(generator: ImageCaptcha, symbol: str,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """`symbol` as the third of five in a whole CAPTCHA with random neighbours, after the
    project's preprocessing: the GLYPH_BOX crop around its place, the whole image and the label.

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
    scale, _, _, top, left = placement(image.height, image.width)
    row, column = top + image.height / 2 * scale, left + centre * scale
    return crop_around(1 - read, round(row), round(column)), read, label


def learned_confusions(symbols: str, per_symbol: int, epochs: int, in_captcha: bool = False,
                       model_path: str | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Train a small CNN to tell `symbols` apart from drawn glyphs (alone, or cut from whole
    CAPTCHAs); its confusion matrix (rows: true symbol, columns: read as) on 3,000 new glyphs
    of each symbol. With `model_path` (and `in_captcha`), also the CRNN's reading of the third
    symbol of those test CAPTCHAs, with a last column for anything else (another symbol, or
    an answer of another length)."""
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
            glyphs = np.stack([drawn_glyph(generator, symbols[k], rng) for k in classes])
            return glyphs[..., None], classes, None, []
        glyphs, wholes, labels = [], [], []
        for k in tqdm(classes, desc="CAPTCHAs", leave=False):
            crop, whole, label = glyph_in_captcha(generator, symbols[k], rng)
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
    x = inputs = keras.Input((*GLYPH_BOX, 1))
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Dropout(0.3)(layers.GlobalAveragePooling2D()(x))
    classifier = keras.Model(inputs, layers.Dense(len(symbols), activation="softmax")(x))
    classifier.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    classifier.fit(standardized(train_x), train_y, batch_size=128, epochs=epochs, verbose=2,
                   callbacks=[keras.callbacks.ReduceLROnPlateau("loss", factor=0.3, patience=1)])
    read_as = classifier.predict(standardized(test_x), verbose=0).argmax(axis=1)
    confusions = np.zeros((len(symbols), len(symbols)), int)
    np.add.at(confusions, (test_y, read_as), 1)
    if not (model_path and in_captcha):
        return confusions, None
    model, spec = load_reader(model_path)
    texts, _ = predict_texts(model, test_wholes, spec)
    crnn = np.zeros((len(symbols), len(symbols) + 1), int)
    for true, text, label in zip(test_y, texts, test_labels):
        third = text[2] if len(text) == len(label) else ""
        crnn[true, symbols.index(third) if third and third in symbols else len(symbols)] += 1
    return confusions, crnn


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
        confusions, crnn = learned_confusions(args.learned, args.per_symbol, args.epochs,
                                              args.in_captcha, args.model)
        where = "cut from whole CAPTCHAs" if args.in_captcha else "drawn alone"
        print_confusions(f"glyph classifier, glyphs {where}, {args.per_symbol} training glyphs per "
                         f"symbol, {args.epochs} epochs; rows: true symbol, columns: read as "
                         "(3,000 new glyphs each)", args.learned, confusions)
        if crnn is not None:
            print_confusions(f"{args.model}, reading the same test CAPTCHAs whole: their third symbol "
                             "(?: anything else, or an answer of another length)", args.learned, crnn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
