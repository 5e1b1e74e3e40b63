"""Data preparation: labels from file names, loading any image, the one preprocessing
function, the training cache and the split.

Every image, in training and at inference, goes through `preprocess_image`, so the model
always sees the same kind of input; the size and options come from the model's spec.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, reduce
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from files import atomic_path, exclusive_lock
from spec import ModelSpec

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
PREPROCESS_VERSION = 3  # bump when preprocess_image changes, to invalidate caches
# The most pixels an image may have to be decoded: 25 megapixels (75 MB as RGB), far above any
# CAPTCHA and far below a decompression bomb (a PNG of a few KB can claim 30000 x 30000).
# Checked from the header, before decoding; `max_pixels` of load_image and Reader overrides it.
MAX_PIXELS = 25_000_000
# Pillow's own warning (above 89 megapixels) is superseded by the limit above, which the caller chose.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# What a reader accepts as one image: a file path, the encoded bytes of a file (PNG, JPEG,
# GIF, ... as a web page serves them), a PIL image, or a uint8 array (H, W) or (H, W, 3|4)
# in RGB(A) order (OpenCV users hold BGR: convert with cv2.cvtColor first).
ImageSource = Union[str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray]


class ImageReadError(ValueError):
    """An image is missing, empty, corrupt, not an image at all, or an unusable array."""


class ImageTooLargeError(ImageReadError):
    """An image with more pixels than the limit (MAX_PIXELS): refused before decoding, so a
    decompression bomb costs neither time nor memory."""


def too_large(source, pixels: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(f"image too large: {describe(source)} has {pixels} pixels, over the "
                              f"limit of {max_pixels}")


def unreadable(source, err: Exception) -> ImageReadError:
    """The project's error for what Pillow could not open, with its reason in a few words."""
    if isinstance(err, Image.DecompressionBombError):
        return ImageTooLargeError(f"image too large: {describe(source)} ({err})")
    reason = "not an image format Pillow reads" if isinstance(err, UnidentifiedImageError) else str(err)
    return ImageReadError(f"not a readable image: {describe(source)} ({reason})")


def label_from_path(path: str | Path) -> str:
    """`aB3xQ.png` -> "aB3xQ"; a suffix after the first `_` is ignored (`aB3xQ_2.png`)."""
    return os.path.splitext(os.path.basename(path))[0].split("_", 1)[0]


def image_names(folder: str | Path) -> list[str]:
    """Names of the image files directly inside `folder`, sorted, hidden files left out.

    Plain names, not Path objects: a folder of 1M images is listed in about 70 MB this way
    against over 300 MB as Paths, and the names are all a labelled data set needs to keep.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder not found: {folder}")
    with os.scandir(folder) as entries:
        return sorted(
            e.name for e in entries
            if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            and e.is_file()
        )


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted, hidden files left out."""
    return [Path(folder) / name for name in image_names(folder)]


def describe(source: ImageSource) -> str:
    """How an error message names an image: its path, or what kind of object it is."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, np.ndarray):
        return f"array {source.shape} {source.dtype}"
    return f"{type(source).__name__} image" if isinstance(source, Image.Image) else type(source).__name__


def open_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Any accepted source -> a loaded PIL image, upright as its EXIF orientation says (a
    phone photo of a CAPTCHA); the first frame of an animation. Raises ImageTooLargeError
    for more than `max_pixels` before decoding, ImageReadError with the reason otherwise."""
    if isinstance(source, Image.Image):
        if source.width * source.height > max_pixels:
            raise too_large(source, source.width * source.height, max_pixels)
        return source
    if isinstance(source, np.ndarray):
        if source.ndim >= 2 and source.shape[0] * source.shape[1] > max_pixels:
            raise too_large(source, source.shape[0] * source.shape[1], max_pixels)
        return image_from_array(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageReadError(f"image not found: {path}")
        if path.stat().st_size == 0:
            raise ImageReadError(f"empty file: {path}")
        opener = path
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageReadError("empty image bytes")
        opener = io.BytesIO(source)
    else:
        raise ImageReadError(f"not an image: a {type(source).__name__} (give a path, bytes, "
                             "a PIL image or a uint8 array)")
    try:
        with Image.open(opener) as img:
            if img.width * img.height > max_pixels:  # from the header: nothing decoded yet
                raise too_large(source, img.width * img.height, max_pixels)
            img.load()
            return ImageOps.exif_transpose(img)  # a copy, turned upright when EXIF says so
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error,
            Image.DecompressionBombError) as err:
        raise unreadable(source, err) from None


def image_from_array(array: np.ndarray) -> Image.Image:
    """A uint8 array (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA -> PIL image."""
    if array.dtype != np.uint8:
        raise ImageReadError(f"image arrays must be uint8, not {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageReadError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4), not {array.shape}")
    if array.size == 0:
        raise ImageReadError(f"image array has no pixels: {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array))


def load_image(source: ImageSource, color: bool = False, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any accepted source as 8-bit grayscale (H, W), or RGB (H, W, 3) with `color`.

    Handles RGB, RGBA (composited on white), palette, 16-bit, CMYK and animated images (first
    frame) alike, whether they come as files, bytes, PIL images or arrays; training and
    reading both load through here, so transparency is flattened the same way in both.
    """
    img = open_image(source, max_pixels)
    if img.width == 0 or img.height == 0:
        raise ImageReadError(f"image has no pixels: {describe(source)}")
    return to_rgb(img) if color else to_grayscale(img)


def _flatten(img: Image.Image) -> Image.Image:
    """Any PIL mode -> one that converts to 8-bit L or RGB correctly: integer greys scaled,
    transparency composited on white (skipped when every pixel is opaque: nothing changes)."""
    if img.mode.startswith("I"):  # 16- or 32-bit integer greys
        arr = np.asarray(img, dtype=np.float64)
        if arr.max() > 255:
            arr = arr / 257.0
        return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA") and img.getchannel("A").getextrema()[0] < 255:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    return img


def to_grayscale(img: Image.Image) -> np.ndarray:
    """PIL image in any mode -> uint8 grayscale array."""
    return np.asarray(_flatten(img).convert("L"), dtype=np.uint8)


def to_rgb(img: Image.Image) -> np.ndarray:
    """PIL image in any mode -> uint8 RGB array."""
    return np.asarray(_flatten(img).convert("RGB"), dtype=np.uint8)


def column_background(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> (W, C) float32: the most common colour of each column (colours
    quantized to 32 levels per channel), then a median across neighbouring columns.

    The most common colour is the block's background even where ink, lines and dark crop
    margins together cover more than half of a column, where a median fails. The median
    across half the height in columns repairs the few that a vertical stroke fills.
    """
    height = image.shape[0]
    levels = (image >> 3).astype(np.int32)
    codes = np.zeros(image.shape[:2], np.int32)
    for channel in range(image.shape[2]):
        codes = (codes << 5) | levels[..., channel]
    codes = np.sort(codes.T, axis=1)  # one row per column: contiguous, so the sort is fast
    positions = np.arange(height)[None, :]
    run_start = np.ones(codes.shape, bool)
    run_start[:, 1:] = codes[:, 1:] != codes[:, :-1]
    run_length = positions - np.maximum.accumulate(np.where(run_start, positions, 0), axis=1)
    mode = codes[np.arange(codes.shape[0]), run_length.argmax(axis=1)]
    colour = np.stack([(mode >> (5 * i)) & 31 for i in reversed(range(image.shape[2]))], -1) * 8 + 4
    window = max(3, (height // 2) | 1)
    padded = np.pad(colour, ((window // 2, window // 2), (0, 0)), mode="edge")
    neighbours = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)
    return np.median(neighbours, axis=-1).astype(np.float32)


def color_ink_map(image: np.ndarray) -> np.ndarray:
    """Grey or RGB image -> uint8 grey where ink is dark: each pixel's colour distance from
    the background of its column (`column_background`).

    Some CAPTCHAs draw each symbol in a colour on a block of another colour of about the same
    brightness, blocks side by side, and change polarity from block to block; in grey they all
    but vanish. The distance from the block's colour is large on every stroke whatever its
    colour, so every block reaches the model as dark ink on white. Strokes stay solid however
    thick (a square median window hollows them) and block edges stay sharp.
    """
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    height, width, channels = image.shape
    rows = image.reshape(height, width * channels).astype(np.float32)
    distance = np.abs(rows - column_background(image).reshape(1, -1)).reshape(height, width, channels)
    distance = reduce(np.maximum, [distance[..., c] for c in range(channels)])  # 10x .max(axis=-1)
    scale = 255.0 / max(float(np.percentile(distance, 99.5)), 1.0)
    return 255 - np.clip(distance * scale, 0, 255).astype(np.uint8)


def background_level(gray: np.ndarray) -> int:
    """The background grey: the median of the outermost rows and columns."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return int(np.median(border))


def needs_inversion(gray: np.ndarray, color_distance: bool = False) -> bool:
    """Light text on a dark background, which preprocessing flips so that every style reaches
    the model dark on light. Never a colour-distance map: dark ink on white by construction."""
    return not color_distance and background_level(gray) < 128


def text_box(gray: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    """The box (rows, columns) of pixels that differ clearly from the background.

    The whole image when the box would be implausibly small (noise only).
    """
    whole = (slice(None), slice(None))
    diff = np.abs(gray.astype(np.int16) - background_level(gray)) > 40
    diff = cv2.morphologyEx(diff.astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    per_row = np.count_nonzero(diff, axis=1)
    if per_row.sum() < 20:
        return whole
    # The coordinates of the marked pixels, rebuilt sorted from row and column counts: the
    # same percentiles as np.nonzero's coordinates at a third of the cost.
    ys = np.repeat(np.arange(diff.shape[0]), per_row)
    xs = np.repeat(np.arange(diff.shape[1]), np.count_nonzero(diff, axis=0))
    y0, y1 = np.percentile(ys, [0.5, 99.5]).astype(int)
    x0, x1 = np.percentile(xs, [0.5, 99.5]).astype(int)
    if (y1 - y0) < gray.shape[0] * 0.15 or (x1 - x0) < gray.shape[1] * 0.15:
        return whole
    h, w = gray.shape
    rows = slice(max(0, y0 - margin), min(h, y1 + margin + 1))
    return rows, slice(max(0, x0 - margin), min(w, x1 + margin + 1))


def placement(h: int, w: int, shape: tuple[int, int]) -> tuple[float, int, int, int, int]:
    """Where `preprocess_image` puts an h x w image in a model input of `shape` (height,
    width): the scale that fits it with its aspect ratio kept, the resized height and width,
    and the top and left offsets that centre it."""
    height, width = shape
    scale = min(width / w, height / h)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    return scale, new_h, new_w, (height - new_h) // 2, (width - new_w) // 2


def equalize_contrast(gray: np.ndarray) -> np.ndarray:
    """CLAHE: faint and dark CAPTCHAs alike reach the model with full-range local contrast."""
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 8)).apply(gray)


def preprocess_image(image: np.ndarray | Image.Image, spec: ModelSpec, *, invert: bool | None = None,
                     strong: bool = False, auto_crop: bool | None = None,
                     stages: dict | None = None) -> np.ndarray:
    """Grey or RGB image -> (H, W, 1) float32 in [0, 1] at the spec's size, dark text on a
    light background.

    Resize keeps the aspect ratio and pads with the background level (a colour-distance
    map's white, or black if inverted), so glyphs are never stretched; CLAHE evens out contrast.
    `invert=None` flips images whose background is darker than mid-grey (never a
    colour-distance map, dark on light by construction), so all styles reach the model with
    the same polarity. `strong` thickens thin strokes. `auto_crop` (None: the spec's) first
    cuts the image to `text_box`. The spec's `color_distance` replaces brightness by
    `color_ink_map`. If `stages` is a dict, each intermediate image is stored in it.
    """
    color_distance = spec.color_distance
    if isinstance(image, Image.Image):
        image = to_rgb(image) if color_distance else to_grayscale(image)
    image = np.asarray(image, np.uint8)
    if image.size == 0:
        raise ImageReadError("image has no pixels")
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    if spec.auto_crop if auto_crop is None else auto_crop:
        box = text_box(gray)
        image, gray = image[box], gray[box]
    if color_distance:
        gray = color_ink_map(image)
    if stages is not None:
        stages["1_gray"] = gray
    if invert is None:
        invert = needs_inversion(gray, color_distance)
    if invert:
        gray = 255 - gray
    h, w = gray.shape
    scale, new_h, new_w, top, left = placement(h, w, spec.image_shape)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(gray, (new_w, new_h), interpolation=interpolation)
    if color_distance:  # the map's background is white by construction, black once inverted
        pad = 0 if invert else 255
    else:
        pad = background_level(gray)
    canvas = np.full(spec.image_shape, pad, dtype=np.uint8)
    canvas[top: top + new_h, left: left + new_w] = resized
    if stages is not None:
        stages["2_resized"] = canvas
    if strong:
        canvas = cv2.erode(canvas, np.ones((2, 2), np.uint8))  # dark strokes grow
    canvas = equalize_contrast(canvas)
    if stages is not None:
        stages["3_clahe"] = canvas
    return (canvas.astype(np.float32) / 255.0)[..., None]


def prepare(source: ImageSource, spec: ModelSpec, *, invert: bool | None = None,
            strong: bool = False) -> np.ndarray:
    """Load any accepted image (in colour when the spec's colour distance needs it) and
    preprocess it; raises ImageReadError for unreadable input."""
    return preprocess_image(load_image(source, color=spec.color_distance), spec, invert=invert,
                            strong=strong)


def in_parallel(work, items: list) -> list:
    """`work` over `items` on all cores, results in input order; an ImageReadError is
    returned in its item's place, so the caller decides whether to skip it or stop.

    Threads suffice (Pillow's decoders and OpenCV release the GIL) and cost far less to
    start than processes: 1.7x faster than one item at a time on 2 cores. All calls share
    one pool that lives as long as the process.
    """
    def guarded(item):
        try:
            return work(item)
        except ImageReadError as err:
            return err

    if len(items) == 1:  # one image at a time (a QA script): handing it to a thread costs 10%
        return [guarded(items[0])]
    return list(_thread_pool().map(guarded, items))


@lru_cache(maxsize=1)
def _thread_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count())


@dataclass
class Dataset:
    """Labelled image files found in a folder, with what was skipped and why.

    Files are kept as names within `folder` (see image_names); `paths` and `path_strings`
    make the full paths when a caller needs them.
    """

    folder: Path
    names: list[str]
    labels: list[str]
    skipped: Counter

    @property
    def paths(self) -> list[Path]:
        return [self.folder / name for name in self.names]

    def path_strings(self, limit: int | None = None) -> list[str]:
        """The first `limit` (default all) full paths as strings, the lighter form for 1M files."""
        folder = str(self.folder)
        return [os.path.join(folder, name) for name in self.names[:limit]]

    def summary(self) -> str:
        parts = [f"{len(self.names)} labelled images"]
        if self.skipped:
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            parts.append(f"skipped {sum(self.skipped.values())} ({why})")
        return "; ".join(parts)

    def filtered(self, spec: ModelSpec) -> "Dataset":
        """Only the labels `spec` can read; the others are counted by reason."""
        names, labels, skipped = [], [], Counter(self.skipped)
        for name, label in zip(self.names, self.labels):
            problem = spec.label_problem(label)
            if problem:
                skipped[problem] += 1
            else:
                names.append(name)
                labels.append(label)
        return Dataset(self.folder, names, labels, skipped)


def scan_labelled_folder(folder: str | Path, spec: ModelSpec | None) -> Dataset:
    """Find images whose file name is a label; with a spec, keep only valid labels."""
    names, labels, skipped = [], [], Counter()
    for name in image_names(folder):
        label = label_from_path(name)
        if label:
            names.append(name)
            labels.append(label)
        else:
            skipped["empty label"] += 1
    found = Dataset(Path(folder), names, labels, skipped)
    return found.filtered(spec) if spec else found


def label_fit_warning(labels: list[str], spec: ModelSpec, outcome: str = "left out") -> str | None:
    """What to warn of when some labels do not fit `spec` (their images are left out of
    training and scores: `outcome`), with counts and the unknown symbols; None when all fit."""
    problems = Counter(spec.label_problem(label) for label in labels)
    problems.pop(None, None)
    if not problems:
        return None
    unknown = sorted({c for label in labels for c in label if c not in spec.charset})
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(problems.items()))
    return (f"{sum(problems.values())} of {len(labels)} labels do not fit the model ({reasons}; "
            f"lengths {spec.min_length}..{spec.max_length}"
            + (f", unknown symbols {''.join(unknown)!r}" if unknown else "") + f"): {outcome}")


def readable_labelled_images(folder: str | Path, spec: ModelSpec) -> Dataset:
    """`scan_labelled_folder` for reading with a model, in one scan: warns on stderr of the
    labels `spec` cannot give (label_fit_warning), so that a score never silently covers part
    of a folder, and raises ValueError when no image is left, so that a benchmark says why
    instead of printing figures of nothing."""
    found = scan_labelled_folder(folder, None)
    warning = label_fit_warning(found.labels, spec)
    if warning:
        print(f"warning: {folder}: {warning}", file=sys.stderr)
    scan = found.filtered(spec)
    if not scan.names:
        raise ValueError(f"{folder}: no labelled images this model can read ({scan.summary()})")
    return scan


class CachedImages:
    """The images of a cache file, (N, H, W) uint8, read row by row from disk.

    Not memory-mapped: the pages a map touches count toward the process's resident memory,
    so an epoch of random batches over a mapped 10 GB cache (1M images) would come to hold
    10 GB; read so, memory holds only the batches in flight, whatever the data size, while
    the kernel's page cache still serves repeated reads. Indexing with an int, a slice or
    an index array returns a new array, like NumPy's; `np.asarray` reads everything.
    """

    def __init__(self, path: str | Path):
        header = np.load(path, mmap_mode="r")  # the shape and the data's offset; nothing is read
        self.shape, self.dtype, self.offset = header.shape, header.dtype, header.offset
        del header
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._file = open(path, "rb")  # held for the object's life
        self._lock = threading.Lock()  # one file position shared by tf.data's threads

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self[[index]][0]
        rows = range(*index.indices(len(self))) if isinstance(index, slice) else np.asarray(index).ravel()
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        with self._lock:
            for target, row in zip(out, rows):
                if not 0 <= row < len(self):
                    raise IndexError(f"row {row} out of range for {len(self)} cached images")
                self._file.seek(self.offset + int(row) * self.row_bytes)
                self._file.readinto(memoryview(target).cast("B"))
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)

    def __del__(self):
        self._file.close()


def preprocessed_cache(paths: Sequence[str | Path], cache_dir: str | Path, spec: ModelSpec,
                       workers: int | None = None) -> tuple[CachedImages, np.ndarray]:
    """Preprocess every image once, in parallel, into a uint8 array on disk.

    Returns (images (N, height, width), ok mask). Unreadable files get ok=False. The cache
    is keyed by the files (name, size, mtime), the preprocessing version and the spec's size
    and options, so a changed folder is preprocessed again while an unchanged one costs
    nothing. uint8 is lossless here (CLAHE output is 8-bit) and 4x smaller than float32:
    123k images take 1.2 GB on disk, 1M 10 GB, and neither building nor reading holds more
    than a few batches in memory (CachedImages). Processes that want the same cache at once
    (the workers of a distributed run on one machine, two runs on one data set) take turns:
    the first builds it, the others load it.
    """
    key = hashlib.sha1(f"v{PREPROCESS_VERSION} crop={spec.auto_crop} color={spec.color_distance}"
                       f" size={spec.image_shape}".encode())
    for p in paths:
        st = os.stat(p)
        key.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    images_path = cache_dir / f"{key.hexdigest()[:16]}.images.npy"
    ok_path = cache_dir / f"{key.hexdigest()[:16]}.ok.npy"
    with exclusive_lock(cache_dir / f"{key.hexdigest()[:16]}.lock", "cache", wait=True):
        if not (images_path.exists() and ok_path.exists()):
            build_cache(paths, spec, images_path, ok_path, workers)
    return CachedImages(images_path), np.load(ok_path)


CACHE_CHUNK = 256  # images per task of the cache's worker processes


def _preprocess_rows(job: tuple[str, int, int, list[str], ModelSpec]) -> list[bool]:
    """Preprocess a chunk of images straight into their rows of the cache file; which were
    readable. Workers write disjoint rows, so nothing passes through the parent."""
    cache_file, offset, first, paths, spec = job
    row_bytes = spec.image_shape[0] * spec.image_shape[1]
    ok = []
    with open(cache_file, "r+b") as f:
        for i, path in enumerate(paths):
            try:
                row = np.round(prepare(path, spec)[..., 0] * 255).astype(np.uint8)
            except ImageReadError:
                ok.append(False)
                continue
            f.seek(offset + (first + i) * row_bytes)
            f.write(row.tobytes())
            ok.append(True)
    return ok


def build_cache(paths: Sequence[str | Path], spec: ModelSpec, images_path: Path, ok_path: Path,
                workers: int | None) -> None:
    """Preprocess `paths` into the two files of a cache (preprocessed_cache), atomically."""
    ok = np.zeros(len(paths), dtype=bool)
    with atomic_path(images_path) as partial:
        header = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8,
                                           shape=(len(paths), *spec.image_shape))  # a sparse file
        offset = header.offset
        del header
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool, \
                tqdm(total=len(paths), desc="preprocess", unit="img", disable=None) as progress:
            # A window of chunks at a time: Executor.map submits all it is given at once.
            for window in range(0, len(paths), CACHE_CHUNK * 64):
                starts = range(window, min(len(paths), window + CACHE_CHUNK * 64), CACHE_CHUNK)
                jobs = [(str(partial), offset, start, [str(p) for p in paths[start:start + CACHE_CHUNK]],
                         spec) for start in starts]
                for start, rows_ok in zip(starts, pool.map(_preprocess_rows, jobs)):
                    ok[start:start + len(rows_ok)] = rows_ok
                    progress.update(len(rows_ok))
    with atomic_path(ok_path) as partial:
        np.save(partial, ok)


def split_dataset(n: int, val_fraction: float = 0.1, test_fraction: float = 0.1,
                  seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/validation/test index split (scikit-learn); a zero fraction is empty."""
    from sklearn.model_selection import train_test_split  # 2 s to import: only training needs it

    indices = np.arange(n)
    if n < 3:
        raise ValueError(f"need at least 3 images to split, got {n}")
    empty = np.array([], dtype=int)
    test = empty
    if test_fraction > 0:
        indices, test = train_test_split(indices, test_size=max(1, round(n * test_fraction)),
                                         random_state=seed)
    train, val = train_test_split(indices, test_size=max(1, round(n * val_fraction)),
                                  random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)
