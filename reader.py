"""Read CAPTCHAs with a trained model: the project's one reading path.

    from reader import Reader
    reader = Reader.load()                       # the shipped default model
    reader.read("captcha.png")                   # Reading(text='aB3xQ', confidence=0.97)
    reader.read([path, png_bytes, pil_image, rgb_array])   # a list in, a list out

An image is a file path, the bytes of an image file, a PIL image, or a uint8 NumPy array
(H, W) or (H, W, 3|4) in RGB(A) order (OpenCV holds BGR: `cv2.cvtColor(a, cv2.COLOR_BGR2RGB)`).
`test.py`, the benchmarks, the figures and `train.py`'s evaluation all read through `Reader`,
so an image reads the same wherever it comes from. The pipeline: preprocess each image on all
cores (preprocess.py), run the model over batches, average the sideways-shifted views if the
model's spec asks for them, decode (decode.py) and calibrate the confidence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from decode import calibrated, decode, log_of_probs
from preprocess import (MAX_PIXELS, ImageReadError, ImageSource, in_parallel, load_image, needs_inversion,
                        preprocess_image)
from spec import ModelLoadError, ModelSpec, spec_path_for

DEFAULT_MODEL = Path(__file__).resolve().parent / "saved_model" / "crnn_ctc_final.keras"
VIEW_SHIFT = 3  # pixels between the sideways-shifted views (view_offsets)
REREAD_NEEDS_VIEWS = "--reread-below needs --views 2 or more"


@dataclass(frozen=True)
class Reading:
    """What a CAPTCHA says, and the calibrated probability that all of it is right."""

    text: str
    confidence: float


def view_offsets(views: int) -> list[int]:
    """Sideways shifts, in pixels, of the views averaged per image: 0, +3, -3, +6, -6, ...

    Odd, so each view meets the strided convolution and the pools at another phase: the views
    then err on different images, which is what makes averaging them pay (an even shift of 4
    pixels, the same phase at the second level, gains almost nothing).
    """
    return [VIEW_SHIFT * ((i + 1) // 2) * (1 if i % 2 else -1) for i in range(views)]


def shift_sideways(images: np.ndarray, offset: int) -> np.ndarray:
    """(N, H, W, 1) images moved `offset` pixels right (left if negative); the columns that
    come free repeat the edge column, which is background after preprocessing."""
    if offset == 0:
        return images
    moved = np.roll(images, offset, axis=2)
    if offset > 0:
        moved[:, :, :offset] = images[:, :, :1]
    else:
        moved[:, :, offset:] = images[:, :, -1:]
    return moved


class Reader:
    """A model with its spec and one reading policy, applied to every image alike.

    `predict` maps a float32 batch (N, H, W, 1) to per-step probabilities (N, steps, classes);
    `Reader.load` builds it from a model file. Options:
    - `beam_width`: 1 decodes greedily; more runs a CTC beam search;
    - `views`: readings per image, shifted sideways and averaged (None: the spec's own);
    - `reread_below`: read once, and give the views only to answers less confident than this;
    - `try_variants`: also read each image inverted, with thickened strokes and cropped to its
      text (unless `crop_variant` is False) and keep the most confident reading;
    - `invert` (None: decided per image) and `strong` (thicken strokes): preprocessing choices;
    - `batch_size`: images per model call;
    - `max_pixels`: larger images are refused before decoding (ImageTooLargeError).
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], spec: ModelSpec, *, name: str = "",
                 beam_width: int = 1, views: int | None = None, reread_below: float = 0.0,
                 try_variants: bool = False, crop_variant: bool = True, invert: bool | None = None,
                 strong: bool = False, batch_size: int = 64, max_pixels: int = MAX_PIXELS):
        views = spec.views if views is None else views
        if beam_width < 1 or views < 1 or batch_size < 1:
            raise ValueError("beam width, views and batch size must be positive")
        if not 0.0 <= reread_below <= 1.0:
            raise ValueError(f"reread_below is a confidence in [0, 1], not {reread_below}")
        if reread_below and views == 1:
            raise ValueError(REREAD_NEEDS_VIEWS + (" (this model reads each image once by default)"
                                                   if spec.views == 1 else ""))
        self.predict, self.spec, self.name = predict, spec, name
        self.beam_width, self.views, self.reread_below = beam_width, views, reread_below
        self.try_variants, self.crop_variant = try_variants, crop_variant
        self.invert, self.strong, self.batch_size = invert, strong, batch_size
        self.max_pixels = max_pixels

    @classmethod
    def load(cls, path: str | Path | None = None, **options) -> "Reader":
        """The model at `path` (default: the shipped default model) with its spec; options as
        for `Reader`. The format follows the name: `.keras` (Keras), `.onnx` (onnxruntime, no
        TensorFlow), `.tflite`, or a TensorFlow SavedModel folder (export.py writes the last
        three). Raises ModelLoadError for a missing, unreadable or mismatched model."""
        path = Path(path) if path is not None else DEFAULT_MODEL
        if not path.exists():
            raise ModelLoadError(f"model not found: {path}")
        if path.is_dir():
            predict, spec = saved_model_predictor(path)
        elif path.suffix in PREDICTORS:
            predict, spec = PREDICTORS[path.suffix](path)
        else:
            raise ModelLoadError(f"unsupported model format {path.suffix or '(none)'!r}: {path} "
                                 f"(give a {', '.join(PREDICTORS)} file or a SavedModel folder)")
        check_output_shape(predict, spec, path)
        return cls(predict, spec, name=path.name.split(".")[0], **options)

    @classmethod
    def from_keras(cls, model, spec: ModelSpec, **options) -> "Reader":
        """A reader over a Keras model already in memory (training evaluates through this)."""
        return cls(in_memory_predictor(model), spec, **options)

    def read(self, image: ImageSource | Sequence[ImageSource]) -> Reading | list[Reading]:
        """One image -> a Reading; a list (or tuple) of images -> a list, read in batches.
        Raises ImageReadError for the first image that cannot be read."""
        if isinstance(image, (list, tuple)):
            return self.read_all(image)
        return self.read_all([image])[0]

    def read_all(self, images: Sequence[ImageSource]) -> list[Reading]:
        readings: list[Reading] = []
        for batch in self.read_batches(images):
            for result in batch:
                if isinstance(result, ImageReadError):
                    raise result
                readings.append(result)
        return readings

    def read_batches(self, images: Sequence[ImageSource]) -> Iterator[list[Reading | ImageReadError]]:
        """Read batch by batch, yielding per batch a Reading or, in its place, the
        ImageReadError of each image: callers choose whether a bad image stops them, and can
        show progress."""
        for start in range(0, len(images), self.batch_size):
            prepared = in_parallel(self.prepare, list(images[start:start + self.batch_size]))
            stacks = [p for p in prepared if not isinstance(p, ImageReadError)]
            best = iter(self._most_confident(stacks) if stacks else [])
            yield [p if isinstance(p, ImageReadError) else next(best) for p in prepared]

    def prepare(self, image: ImageSource) -> np.ndarray:
        """One image -> its preprocessed versions to read, (V, H, W, 1): itself, and with
        `try_variants` also inverted, thickened and cropped."""
        spec = self.spec
        raw = load_image(image, color=spec.color_distance, max_pixels=self.max_pixels)
        plain = preprocess_image(raw, spec, invert=self.invert, strong=self.strong)
        if not self.try_variants:
            return plain[None]
        variants = [plain]
        # A colour-distance map is dark ink on white whatever the polarity: no inverted variant.
        if self.invert is None and not spec.color_distance:
            gray = cv2.cvtColor(raw, cv2.COLOR_RGB2GRAY) if raw.ndim == 3 else raw
            variants.append(preprocess_image(raw, spec, invert=not needs_inversion(gray),
                                             strong=self.strong))
        if not self.strong:
            variants.append(preprocess_image(raw, spec, invert=self.invert, strong=True))
        if self.crop_variant and not spec.auto_crop:
            variants.append(preprocess_image(raw, spec, invert=self.invert, strong=self.strong,
                                             auto_crop=True))
        return np.stack(variants)

    def _most_confident(self, stacks: list[np.ndarray]) -> list[Reading]:
        """The most confident reading of each image's versions."""
        readings = self.read_prepared(np.concatenate(stacks))
        ends = np.cumsum([len(s) for s in stacks])
        return [max(readings[end - len(s):end], key=lambda r: r.confidence)
                for s, end in zip(stacks, ends)]

    def read_prepared(self, images: np.ndarray) -> list[Reading]:
        """Images already preprocessed for this model, (N, H, W, 1) float32 in [0, 1]."""
        readings: list[Reading] = []
        for start in range(0, len(images), self.batch_size):
            batch = np.asarray(images[start:start + self.batch_size], np.float32)
            probs = self.probabilities(batch, 1 if self.reread_below else self.views)
            texts, path_probs = decode(probs, self.spec, self.beam_width)
            confidences = calibrated(path_probs, self.spec)
            unsure = np.flatnonzero(confidences < self.reread_below)
            if self.views > 1 and len(unsure):
                probs = self.probabilities(batch[unsure], self.views, probs[unsure])
                reread_texts, reread_probs = decode(probs, self.spec, self.beam_width)
                confidences[unsure] = calibrated(reread_probs, self.spec)
                for i, text in zip(unsure, reread_texts):
                    texts[i] = text
            readings += [Reading(t, float(c)) for t, c in zip(texts, confidences)]
        return readings

    def probabilities(self, images: np.ndarray, views: int = 1,
                      unshifted: np.ndarray | None = None) -> np.ndarray:
        """Per-step probabilities, averaged over `views` sideways-shifted copies of the images
        (test-time augmentation: more accurate, `views` times the model time), all read in
        one model call. `unshifted`: the first view's output when already known.

        The average is the geometric mean, renormalized: an arithmetic mean flattens every step
        and leaves the confidence too low (ECE 0.056 against 0.041 on 2,000 default-style images).
        """
        known = [] if unshifted is None else [unshifted]
        to_read = view_offsets(views)[len(known):]
        if to_read:
            known.append(self.predict(np.concatenate([shift_sideways(images, dx) for dx in to_read])))
        probs = np.concatenate(known)
        if views == 1:
            return probs
        log_probs = log_of_probs(probs).reshape(views, len(images), *probs.shape[1:])
        mean = np.exp(log_probs.mean(axis=0))
        return mean / mean.sum(axis=-1, keepdims=True)


Predictor = Callable[[np.ndarray], np.ndarray]


def in_memory_predictor(model) -> Predictor:
    """A Keras model through its one traced inference graph (model.run_model)."""
    from model import run_model

    return lambda images: run_model(model, images)


def keras_predictor(path: Path) -> tuple[Predictor, ModelSpec]:
    try:
        from model import load_reader
    except ImportError as err:
        raise ModelLoadError(f"reading {path.name} needs TensorFlow ({err}): pip install -r "
                             f"requirements.txt, or read {path.with_suffix('.onnx')} instead") from None

    model, spec = load_reader(path)
    return in_memory_predictor(model), spec


def onnx_predictor(path: Path) -> tuple[Predictor, ModelSpec]:
    """onnxruntime on the CPU; the spec from the `.json` beside the file, else from the spec
    that export.py stores in the file's metadata. Imports no TensorFlow."""
    import onnxruntime

    try:
        inference = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types for files that are not models
        raise ModelLoadError(f"not a loadable ONNX model: {path} ({type(err).__name__})") from None
    beside = spec_path_for(path)
    embedded = inference.get_modelmeta().custom_metadata_map.get("spec")
    if beside.is_file() or embedded is None:
        spec = ModelSpec.load(beside)
    else:
        spec = ModelSpec.from_json(embedded, f"in {path}")
    name = inference.get_inputs()[0].name
    return (lambda images: inference.run(None, {name: images})[0]), spec


def tflite_predictor(path: Path) -> tuple[Predictor, ModelSpec]:
    """TensorFlow Lite's interpreter, resized to each batch size it meets."""
    import warnings

    spec = ModelSpec.load(spec_path_for(path))
    from model import stderr_kept_unless_failing

    with stderr_kept_unless_failing(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter announces its successor package
        import tensorflow as tf

        try:
            interpreter = tf.lite.Interpreter(model_path=str(path))
        except ValueError as err:
            raise ModelLoadError(f"not a loadable TFLite model: {path} ({err})") from None
    into, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    shape: list[tuple] = [()]

    def predict(images: np.ndarray) -> np.ndarray:
        if images.shape != shape[0]:
            interpreter.resize_tensor_input(into, images.shape)
            interpreter.allocate_tensors()
            shape[0] = images.shape
        interpreter.set_tensor(into, images)
        interpreter.invoke()
        return interpreter.get_tensor(out)

    return predict, spec


def saved_model_predictor(path: Path) -> tuple[Predictor, ModelSpec]:
    """A TensorFlow SavedModel folder as Keras's `model.export` writes it (endpoint `serve`)."""
    spec = ModelSpec.load(spec_path_for(path))
    from model import stderr_kept_unless_failing

    with stderr_kept_unless_failing():
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(path))  # kept: it owns the variables `serve` reads
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"not a loadable SavedModel: {path} ({type(err).__name__})") from None
    if not hasattr(loaded, "serve"):
        raise ModelLoadError(f"{path} has no 'serve' endpoint (export it with export.py)")
    return (lambda images: loaded.serve(tf.constant(images)).numpy()), spec


PREDICTORS: dict[str, Callable[[Path], tuple[Predictor, ModelSpec]]] = {
    ".keras": keras_predictor, ".onnx": onnx_predictor, ".tflite": tflite_predictor}


def check_output_shape(predict: Predictor, spec: ModelSpec, path: Path) -> None:
    """One blank image through the model: its output must have one class per symbol of the
    spec and the blank, or the spec does not belong to this model."""
    try:
        out = predict(np.ones((1, *spec.image_shape, 1), np.float32))
    except Exception as err:  # each runtime raises its own error for a wrong input shape
        raise ModelLoadError(f"{path} does not read {spec.image_shape} images as its spec says "
                             f"({type(err).__name__})") from None
    if out.ndim != 3 or out.shape[-1] != spec.num_classes:
        raise ModelLoadError(f"{path} outputs {out.shape[1:]} per image, its spec says "
                             f"{spec.num_classes} classes")
