"""Make synthetic CAPTCHAs written as `<label>.png`.

Five styles:
- `default`, the embedded default dataset: the `captcha` package's
  ImageCaptcha(width=200, height=70) with its bundled font. The package draws its noise
  from `secrets`, so the pixels differ from run to run: every generated set is unseen.
- `varied`, a pretraining set for fine-tuning to other styles: every font installed on the
  machine (plus the bundled one), symbols rotated up to 45 degrees on coloured cells,
  crossed by lines, circles and dots (`draw_varied`). Its pixels are seeded.
- `mixed`, a generalist pretraining style (`draw_mixed`): any image size and aspect ratio,
  solid, gradient, textured or per-symbol backgrounds, light or dark, one font or one per
  symbol, filled, outlined or hollow glyphs, rotation, overlap or spacing, lines, curves,
  dots and pixel noise, a wave warp and blur. Its pixels are seeded.
- `multicolorcaptcha`, the third-party generator of that name (pinned in
  requirements-dev.txt, GPLv3, not a requirement of the reader), drawn as its `gen_captcha_image`
  draws (`draw_multicolorcaptcha`): unlimited pretraining images for a site that uses it.

- `wheezy`, the third-party generator wheezy.captcha (MIT, a development dependency) with the
  drawings its documentation shows: background, text warped, rotated and offset, a curve,
  noise, smoothing. An outside style for scoring models on a generator they never saw.

Labels come from a seeded generator, so the same seed names the same files and a second
run reuses what is already on disk.

    python generate.py --out data/synthetic --count 20000 --seed 0
    python generate.py --style varied --out data/varied --count 60000 --min-length 4 --length 6
    python generate.py --style mixed --out data/mixed --count 100000 --min-length 3 --length 8
    python generate.py --style multicolorcaptcha --out data/mcc --count 150000 --length 4 \
        --charset ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache, partial
from pathlib import Path

import cv2
import numpy as np
from fontTools.agl import UV2AGL
from fontTools.ttLib import TTFont, TTLibError
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from files import atomic_path
from preprocess import label_from_path
from spec import DEFAULT_CHARSET, DEFAULT_LABEL_LENGTH

CAPTCHA_WIDTH, CAPTCHA_HEIGHT = 200, 70
STYLES = ("default", "varied", "mixed", "multicolorcaptcha", "wheezy")
SHIPPED_FONTS = Path(__file__).resolve().parent / "fonts"  # freely licensed, see fonts/README.md
FONT_FOLDERS = ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts",
                "/System/Library/Fonts", "C:/Windows/Fonts")
VARIED_CELL = 56  # pixels per symbol, and the image height, of the varied style
MIXED_MIN_LUMA = 70  # grey levels between a mixed-style symbol and the mean background under it


def synthetic_labels(count: int, seed: int, length: int = DEFAULT_LABEL_LENGTH,
                     charset: str = DEFAULT_CHARSET, min_length: int | None = None,
                     oversample: str = "", oversample_factor: float = 4.0) -> list[str]:
    """`count` labels of `min_length`..`length` symbols drawn from `charset`: uniformly, or
    with each symbol of `oversample` `oversample_factor` times as likely as any other, so a
    reader sees more of the look-alikes it confuses (0 and O in the default style)."""
    rng = random.Random(seed)
    shortest = min_length or length

    def draw_length() -> int:
        # No draw for a fixed length: the default sets keep the labels their seeds always named.
        return length if shortest == length else rng.randint(shortest, length)

    if oversample:
        weights = [oversample_factor if symbol in oversample else 1.0 for symbol in charset]
        return ["".join(rng.choices(charset, weights, k=draw_length())) for _ in range(count)]
    return ["".join(rng.choice(charset) for _ in range(draw_length())) for _ in range(count)]


def draws_charset(path: str, charset: str = DEFAULT_CHARSET) -> bool:
    """Whether the font at `path` draws every symbol of `charset` as that symbol.

    Symbol fonts (Dingbats, Symbol's Greek) map the Latin code points to other glyphs, and
    initials or caps-only fonts (Bebas Neue) leave out the lower case or draw it as the upper
    case: an image in any of them shows another label than its file name, which teaches a
    wrong reading in training and caps every reader's score in a benchmark. A glyph is taken
    as the symbol when its name is the symbol's standard (AGL) name or `uniXXXX`, either with
    a suffix (`a.alt`) or not, and a small letter when it is not drawn as its capital is."""
    try:
        with TTFont(path, lazy=True) as font:
            glyphs = font.getBestCmap() or {}
    except (TTLibError, OSError, KeyError, AssertionError):  # fontTools' errors on broken files
        return False
    for symbol in charset:
        name = glyphs.get(ord(symbol))
        if name is None or name.split(".")[0] not in (UV2AGL.get(ord(symbol)), f"uni{ord(symbol):04X}"):
            return False
    try:
        drawn = ImageFont.truetype(path, 32)
    except OSError:  # a file fontTools reads but FreeType, which draws, does not
        return False
    return not any(bytes(drawn.getmask(symbol)) == bytes(drawn.getmask(symbol.upper()))
                   for symbol in charset if symbol != symbol.upper())  # a capital for a small letter


@lru_cache(maxsize=8)
def font_files(folders: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Every TrueType/OpenType font in `folders` (font files, or folders searched recursively)
    that draws all of A-Z a-z 0-9 (`draws_charset`); by default the fonts shipped in fonts/
    and every font installed on the machine.

    Installed fonts differ between machines, so a set made elsewhere draws from other fonts;
    naming `fonts` alone makes the same images everywhere, and leaves font families out of
    pretraining so that a benchmark can score the model on fonts it never saw.
    """
    places = [Path(f) for f in folders or (str(SHIPPED_FONTS), *FONT_FOLDERS)]
    found = sorted({str(p) for place in places if place.exists()
                    for p in (place.rglob("*") if place.is_dir() else [place])
                    if p.suffix.lower() in (".ttf", ".otf")})
    if not found:
        raise RuntimeError(f"no .ttf or .otf fonts in {', '.join(map(str, places))}")
    usable = tuple(path for path in found if draws_charset(path))
    if not usable:
        raise RuntimeError(f"none of the {len(found)} fonts in {', '.join(map(str, places))} draws "
                           f"all of A-Z a-z 0-9")
    return usable


def _random_color(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))


def _luma(color) -> float:
    return 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]


def _contrasting_color(rng: random.Random, background, min_distance: float = 110.0,
                       min_luma: float = 0.0) -> tuple[int, int, int]:
    """A random colour at least `min_distance` (RGB Euclidean) from `background`, and at
    least `min_luma` grey levels brighter or darker (so that it shows in grey too)."""
    while True:
        color = _random_color(rng)
        if math.dist(color, background) >= min_distance and abs(_luma(color) - _luma(background)) >= min_luma:
            return color


def _glyph(symbol: str, font_path: str, size: int, color: tuple[int, int, int],
           angle: float, outline: bool) -> Image.Image:
    """One symbol, rotated, on a transparent tile cropped to its ink."""
    font = ImageFont.truetype(font_path, size)
    tile = Image.new("RGBA", (2 * size, 2 * size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    if outline:
        draw.text((size // 2, size // 3), symbol, font=font, fill=(0, 0, 0, 0),
                  stroke_width=max(1, size // 20), stroke_fill=color + (255,))
    else:
        draw.text((size // 2, size // 3), symbol, font=font, fill=color + (255,))
    tile = tile.rotate(angle, resample=Image.BICUBIC, expand=True)
    return tile.crop(tile.getbbox() or (0, 0, 1, 1))


def draw_varied(label: str, rng: random.Random, fonts: tuple[str, ...]) -> Image.Image:
    """A CAPTCHA of the varied style: one cell per symbol, each with its own font and colours.

    Covers what other generators vary and ours does not: many fonts, strong rotation,
    outlined glyphs, per-symbol background colours that make the ink brighter or darker than
    its surroundings, and clutter in the symbols' own colours that crosses them.
    """
    cell = VARIED_CELL
    width, height = cell * len(label), cell
    one_background = rng.random() < 0.4
    backgrounds = [_random_color(rng)] * len(label) if one_background else \
        [_random_color(rng) for _ in label]
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for i, color in enumerate(backgrounds):
        draw.rectangle((i * cell, 0, (i + 1) * cell, height), fill=color)
    ink = []
    for i, symbol in enumerate(label):
        color = _contrasting_color(rng, backgrounds[i])
        ink.append(color)
        glyph = _glyph(symbol, rng.choice(fonts), rng.randint(38, 58), color,
                       rng.uniform(-45, 45), outline=rng.random() < 0.15)
        glyph.thumbnail((cell, height))
        x = i * cell + rng.randint(0, cell - glyph.width)
        y = rng.randint(0, height - glyph.height)
        image.paste(glyph, (x, y), glyph)
    for i, color in enumerate(ink):  # strokes in the symbol's colour, crossing it
        for _ in range(rng.randint(0, 2)):
            cx, cy = i * cell + rng.uniform(0, cell), rng.uniform(0, height)
            angle, half = rng.uniform(0, math.pi), rng.uniform(10, 30)
            dx, dy = half * math.cos(angle), half * math.sin(angle)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=color, width=rng.randint(1, 4))
        if rng.random() < 0.2:
            r = rng.uniform(4, 10)
            cx, cy = i * cell + rng.uniform(r, cell - r), rng.uniform(r, height - r)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=color, width=1)
    for _ in range(rng.randint(0, 3)):  # long lines across the whole image
        color = (0, 0, 0) if rng.random() < 0.5 else _random_color(rng)
        y0, y1 = rng.uniform(0, height), rng.uniform(0, height)
        draw.line((rng.uniform(0, width / 4), y0, rng.uniform(3 * width / 4, width), y1),
                  fill=color, width=rng.randint(1, 4))
    for _ in range(rng.randint(0, 25)):  # dots
        r = rng.uniform(1, 5)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_random_color(rng))
    return image


def _background(rng: random.Random, width: int, height: int, cells: int) -> Image.Image:
    """Solid, a linear gradient between two colours, blurred noise, or one colour per cell."""
    kind = rng.choice(("solid", "gradient", "texture", "cells"))
    if kind == "solid":
        return Image.new("RGB", (width, height), _random_color(rng))
    if kind == "cells":
        image = Image.new("RGB", (width, height))
        draw = ImageDraw.Draw(image)
        for i in range(cells):
            draw.rectangle((i * width // cells, 0, (i + 1) * width // cells, height), fill=_random_color(rng))
        return image
    noise = np.random.default_rng(rng.getrandbits(32))
    if kind == "gradient":
        start, end = np.array(_random_color(rng), float), np.array(_random_color(rng), float)
        along = np.linspace(0, 1, width if rng.random() < 0.7 else height)
        ramp = start + (end - start) * along[:, None]
        pixels = np.broadcast_to(ramp[None] if len(along) == width else ramp[:, None], (height, width, 3))
    else:
        base = np.array(_random_color(rng), float)
        grain = cv2.GaussianBlur(noise.normal(0, rng.uniform(20, 60), (height, width, 3)), (0, 0),
                                 rng.uniform(0.5, 3))
        pixels = base + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _wave(image: Image.Image, rng: random.Random) -> Image.Image:
    """Bend the image along a sine wave, rows sideways and columns up and down."""
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    amplitude, period = rng.uniform(1, height / 10), rng.uniform(width / 4, width)
    phase = rng.uniform(0, 2 * math.pi)
    map_y = ys + amplitude * np.sin(2 * math.pi * xs / period + phase)
    map_x = xs + amplitude / 2 * np.sin(2 * math.pi * ys / (period / 2) + phase)
    return Image.fromarray(cv2.remap(pixels, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))


def draw_mixed(label: str, rng: random.Random, fonts: tuple[str, ...]) -> Image.Image:
    """A CAPTCHA of the generalist style: every drawing choice of the generators we know of is
    a random draw, so that a model pretrained on it has seen no single style (see STYLES).
    Each symbol's colour is chosen against the background under it, in colour and in grey
    level, so it stays legible to a grey reader."""
    size = rng.randint(28, 72)
    spacing = rng.uniform(-0.25, 0.35)  # overlap (negative) to gaps, in font sizes
    one_font = rng.choice(fonts) if rng.random() < 0.6 else None
    outline = rng.random() < 0.15
    shapes = [_glyph(symbol, one_font or rng.choice(fonts), int(size * rng.uniform(0.85, 1.15)),
                     (0, 0, 0), rng.uniform(-30, 30), outline).getchannel("A") for symbol in label]
    margin = int(size * rng.uniform(0.1, 1.0))
    step = [max(4, int(shape.width + spacing * size)) for shape in shapes]
    width = max(sum(step[:-1]) + shapes[-1].width + 2 * margin, size)
    height = max(shape.height for shape in shapes) + 2 * int(size * rng.uniform(0.1, 0.6))
    image = _background(rng, width, height, len(label))
    pixels = np.asarray(image, float)
    one_colour = rng.random() < 0.6
    ink = None
    x = margin
    for shape, advance in zip(shapes, step):
        y = rng.randint(0, max(0, height - shape.height))
        under = tuple(pixels[y:y + shape.height, x:x + shape.width].reshape(-1, 3).mean(axis=0))
        if ink is None or not one_colour or abs(_luma(ink) - _luma(under)) < MIXED_MIN_LUMA:
            ink = _contrasting_color(rng, under, min_luma=MIXED_MIN_LUMA)
        image.paste(Image.new("RGB", shape.size, ink), (x, y), shape)
        x += advance
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(0, 4)):  # lines and curves across the text
        color = ink if rng.random() < 0.5 else _random_color(rng)
        points = [(rng.uniform(0, width), rng.uniform(0, height)) for _ in range(rng.choice((2, 4)))]
        if len(points) == 4:  # a cubic Bezier curve
            points = [tuple(sum(c * p[k] for c, p in zip(((1 - t) ** 3, 3 * (1 - t) ** 2 * t,
                                                           3 * (1 - t) * t ** 2, t ** 3), points))
                            for k in (0, 1)) for t in np.linspace(0, 1, 24)]
        draw.line(points, fill=color, width=rng.randint(1, max(1, size // 12)))
    for _ in range(rng.choice((0, 0, rng.randint(5, 80)))):  # dots
        r = rng.uniform(0.5, size / 14)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_random_color(rng))
    if rng.random() < 0.3:
        image = _wave(image, rng)
    if rng.random() < 0.3:  # pixel noise
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(5, 30), (height, width, 3))
        image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return image


@lru_cache(maxsize=1)
def _multicolor_generator():
    try:
        from multicolorcaptcha import CaptchaGenerator
    except ImportError as exc:
        raise RuntimeError("the multicolorcaptcha style needs the package: "
                           "pip install -r requirements-dev.txt") from exc
    return CaptchaGenerator(0)


def multicolorcaptcha_settings() -> tuple[bool, int]:
    """One background per cell or one for all (half each), and a difficulty of 1 to 3 (noise
    lines and circles), drawn from the global `random` as `gen_captcha_image` draws them."""
    return random.random() < 0.5, random.randint(1, 3)


def draw_multicolorcaptcha(label: str, seed: str) -> Image.Image:
    """A CAPTCHA as multicolorcaptcha 1.2.0 draws one, but of our label.

    Its `gen_captcha_image` picks the symbols itself, so this repeats its steps with the
    package's own parts: a 64-pixel cell per symbol (random font, size, colour, rotation up to
    55 degrees, two strokes in the symbol's colour), one background or one per cell (half each),
    then horizontal lines and circles for a difficulty of 1 to 3, on a black 256x144 canvas.
    The package draws from the global `random`, seeded here per image.
    """
    from multicolorcaptcha._constants import DIFFICULT_LEVELS_VALUES

    generator = _multicolor_generator()
    random.seed(seed)
    cell = round(generator.captcha_size[0] / 4)
    multicolor, difficulty = multicolorcaptcha_settings()
    lines, circles = DIFFICULT_LEVELS_VALUES[difficulty]
    background = None if multicolor else generator.gen_rand_color()
    image = generator.images_join_horizontal(
        [generator.gen_captcha_char_image(symbol, (cell, cell), 2, background)["image"]
         for symbol in label])
    for _ in range(lines):
        generator.add_rand_horizontal_line_to_image(image, random.randint(1, 5))
    for _ in range(circles):
        generator.add_rand_circle_to_image(image, int(0.05 * cell), int(0.15 * cell))
    width, height = max(generator.captcha_size[0], image.width), generator.captcha_size[1]
    canvas = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    canvas.paste(image, (0, (height - image.height) // 2))
    return canvas


def _wheezy():
    try:
        from wheezy.captcha import image
    except ImportError as exc:
        raise RuntimeError("the wheezy style needs the package: pip install -r requirements-dev.txt") from exc
    return image


def draw_wheezy(label: str, seed: str, fonts: tuple[str, ...]) -> Image.Image:
    """A CAPTCHA of wheezy.captcha 3 as its documentation draws one, in `fonts`. The package
    draws from the global `random`, seeded here per image."""
    wheezy = _wheezy()
    random.seed(seed)
    draw = wheezy.captcha(drawings=[
        wheezy.background(),
        wheezy.text(fonts=list(fonts), drawings=[wheezy.warp(), wheezy.rotate(), wheezy.offset()]),
        wheezy.curve(), wheezy.noise(), wheezy.smooth()])
    return draw(list(label))


def _write_one(path: str, style: str, seed: int, font_paths: tuple[str, ...] | None) -> None:
    label = label_from_path(path)
    with atomic_path(path) as tmp:
        if style == "varied":
            draw_varied(label, random.Random(f"{seed}:{Path(path).name}"), font_paths).save(tmp)
        elif style == "mixed":
            draw_mixed(label, random.Random(f"{seed}:{Path(path).name}"), font_paths).save(tmp)
        elif style == "multicolorcaptcha":
            draw_multicolorcaptcha(label, f"{seed}:{Path(path).name}").save(tmp)
        elif style == "wheezy":
            draw_wheezy(label, f"{seed}:{Path(path).name}", font_paths).save(tmp)
        else:
            from captcha.image import ImageCaptcha

            chosen = list(font_paths) if font_paths else None  # None: the package's own font
            ImageCaptcha(width=CAPTCHA_WIDTH, height=CAPTCHA_HEIGHT, fonts=chosen).write(label, tmp)


GENERATION_WINDOW = 16384  # images submitted to the worker processes at a time


def generate_captchas(out_dir: str | Path, count: int, seed: int = 0,
                      length: int = DEFAULT_LABEL_LENGTH, charset: str = DEFAULT_CHARSET,
                      workers: int | None = None, progress: bool = True,
                      style: str = "default", min_length: int | None = None,
                      oversample: str = "", oversample_factor: float = 4.0,
                      fonts: tuple[str, ...] | None = None) -> list[Path]:
    """Write `count` CAPTCHAs into `out_dir` (files already there are kept) and list them.
    Labels as `synthetic_labels` draws them; `fonts` names the font folders (font_files)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    if style == "multicolorcaptcha":
        _multicolor_generator()  # fail here, with the install hint, not in every worker
    if style == "wheezy":
        _wheezy()  # the same: fail once, here
    font_paths = None
    if style != "multicolorcaptcha" and (fonts or style != "default"):
        # Found and checked once, here: a missing font fails before any work, and the workers
        # skip the checks (seconds per process with a few hundred fonts installed).
        font_paths = font_files(fonts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    paths = []
    for label in synthetic_labels(count, seed, length, charset, min_length, oversample,
                                  oversample_factor):
        n = seen[label] = seen.get(label, 0) + 1
        paths.append(out_dir / (f"{label}.png" if n == 1 else f"{label}_{n}.png"))
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        write = partial(_write_one, style=style, seed=seed, font_paths=font_paths)
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool, \
                tqdm(total=len(missing), desc=f"generate {out_dir}", unit="img",
                     disable=None if progress else True) as bar:  # None: off in a pipe
            # A window at a time: Executor.map submits all it is given at once, and a million
            # pending tasks would hold a million futures in memory.
            for start in range(0, len(missing), GENERATION_WINDOW):
                for _ in pool.map(write, missing[start:start + GENERATION_WINDOW], chunksize=64):
                    bar.update()
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synthetic", help="folder to write into")
    parser.add_argument("--count", type=int, default=20000, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="seed for the labels")
    parser.add_argument("--length", type=int, default=DEFAULT_LABEL_LENGTH,
                        help="symbols per image (the most, with --min-length)")
    parser.add_argument("--min-length", type=int, help="fewest symbols per image (default --length)")
    parser.add_argument("--charset", default=DEFAULT_CHARSET, help="symbols to draw from")
    parser.add_argument("--style", choices=STYLES, default="default",
                        help="default: the embedded dataset; varied: many fonts and colours, for "
                             "pretraining; mixed: a generalist pretraining style; multicolorcaptcha, "
                             "wheezy: those packages' styles (pip install -r requirements-dev.txt)")
    parser.add_argument("--oversample", default="", metavar="SYMBOLS",
                        help="draw these symbols more often than the others (look-alikes a "
                             "reader confuses, e.g. 0O)")
    parser.add_argument("--oversample-factor", type=float, default=4.0,
                        help="how many times as likely each --oversample symbol is (default 4)")
    parser.add_argument("--fonts", nargs="+", metavar="FOLDER",
                        help="draw with the fonts in these folders only (default: the package's own "
                             "font for the default style; fonts/ and the installed fonts otherwise)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.length < 1 or not args.charset:
        parser.error("--count and --length must be positive and --charset non-empty")
    if not set(args.oversample) <= set(args.charset) or args.oversample_factor <= 0:
        parser.error("--oversample symbols must be in --charset and --oversample-factor positive")
    if args.min_length is not None and not 1 <= args.min_length <= args.length:
        parser.error("--min-length must be between 1 and --length")
    try:
        paths = generate_captchas(args.out, args.count, args.seed, args.length, args.charset,
                                  style=args.style, min_length=args.min_length,
                                  oversample=args.oversample,
                                  oversample_factor=args.oversample_factor,
                                  fonts=tuple(args.fonts) if args.fonts else None)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(paths)} images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
