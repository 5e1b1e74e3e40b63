"""The CRNN: a small CNN reads the image, two BiLSTMs read the columns, CTC aligns.

Image (50, 200, 1) -> CNN (strided stem, 8x downsampling) -> height folded into features
-> 25 time steps of 8 pixels each -> 2 x BiLSTM
-> per-step softmax over the symbols + the CTC blank (index 0).

The saved model maps image -> per-step probabilities and contains only built-in
layers, so `keras.saving.load_model(path)` loads it in safe mode.
"""

from __future__ import annotations

import os
import sys
import tempfile
import weakref
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def stderr_kept_unless_failing():
    """Hold back what native code writes to stderr (TensorFlow's start-up log lines), and
    replay it only if the block fails, so a CLI error stays one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
with stderr_kept_unless_failing():
    import keras
    import numpy as np
    import tensorflow as tf
    from keras import layers, ops

from preprocess import ImageReadError, LabelSpec, load_and_preprocess_many, spec_path_for  # noqa: E402

CONV_FILTERS = (16, 32, 96, 128)
RNN_UNITS = 128
DOWNSAMPLE_W = 8  # image columns per time step
VIEW_SHIFT = 3  # pixels between the views of test-time augmentation (view_offsets)


def time_steps(spec: LabelSpec) -> int:
    return spec.img_width // DOWNSAMPLE_W


def conv_block(x, filters: int, name: str, strides: int = 1):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_model(spec: LabelSpec, dropout: float = 0.2) -> keras.Model:
    """The inference model: image -> (time_steps, num_classes) probabilities.

    Speed comes from shape, not kernels: a strided first convolution and few channels
    where maps are large keep the CNN cheap; 25 unrolled LSTM steps keep the RNN cheap.
    Raises ValueError when the time steps cannot hold the longest label: CTC needs a
    blank between repeated symbols, so a label of length L may need 2L - 1 steps.
    """
    steps = time_steps(spec)
    if steps < 2 * spec.max_length - 1:
        raise ValueError(f"{steps} time steps cannot hold labels of {spec.max_length} symbols "
                         f"(need {2 * spec.max_length - 1})")
    inputs = keras.Input((spec.img_height, spec.img_width, 1), name="image")
    x = conv_block(inputs, CONV_FILTERS[0], "block1", strides=2)  # 25 x 100
    x = conv_block(x, CONV_FILTERS[1], "block2")
    x = layers.MaxPooling2D(2, name="pool2")(x)  # 12 x 50
    x = conv_block(x, CONV_FILTERS[2], "block3")
    x = conv_block(x, CONV_FILTERS[3], "block4")
    x = layers.MaxPooling2D(2, name="pool3")(x)  # 6 x 25
    # (H, W, C) -> (W, H * C): each time step sees one whole column band.
    x = layers.Permute((2, 1, 3), name="width_first")(x)
    x = layers.Reshape((steps, -1), name="columns")(x)
    x = layers.Dense(RNN_UNITS, activation="relu", name="column_features")(x)
    x = layers.Dropout(dropout, name="feature_dropout")(x)
    for i in (1, 2):
        lstm = layers.LSTM(RNN_UNITS, return_sequences=True, unroll=True)
        x = layers.Bidirectional(lstm, name=f"bilstm{i}")(x)
    x = layers.Dropout(dropout, name="sequence_dropout")(x)
    outputs = layers.Dense(spec.num_classes, activation="softmax", name="symbol_probs")(x)
    return keras.Model(inputs, outputs, name="crnn_ctc")


def replace_output_layer(model: keras.Model, old_spec: LabelSpec, spec: LabelSpec) -> keras.Model:
    """Same features and sequence layers, a softmax sized for `spec` (fine-tuning).

    Symbols the two charsets share, and the blank, keep their trained output weights, so a
    model fine-tuned on digits starts out already reading digits.
    """
    features = model.get_layer("sequence_dropout").output
    head = layers.Dense(spec.num_classes, activation="softmax", name="symbol_probs")
    new_model = keras.Model(model.input, head(features), name="crnn_ctc")
    old_kernel, old_bias = model.get_layer("symbol_probs").get_weights()
    kernel, bias = head.get_weights()
    rows = [(0, 0)] + [(spec.charset.index(c) + 1, old_spec.charset.index(c) + 1)
                       for c in spec.charset if c in old_spec.charset]
    for new_i, old_i in rows:
        kernel[:, new_i], bias[new_i] = old_kernel[:, old_i], old_bias[old_i]
    head.set_weights([kernel, bias])
    return new_model


def average_weights(model: keras.Model, spec: LabelSpec, others: list[str | Path]) -> keras.Model:
    """`model` with each weight, BatchNorm statistics included, replaced by its mean over
    `model` and the models at `others`, which must share its layout and charset.

    Runs fine-tuned from one start on different images stay close enough that the mean of
    their weights works as one model, and it reads like an ensemble of them at one model's
    cost (measured in saved_model/README.md). Models trained from different starts would not
    average: their units do not correspond.
    """
    weights = [model.get_weights()]
    for path in others:
        other, other_spec = load_reader(path)
        shapes = [w.shape for w in other.get_weights()]
        if other_spec.charset != spec.charset or shapes != [w.shape for w in weights[0]]:
            raise ModelLoadError(f"{path}: cannot be averaged with the first model (another "
                                 "charset or layout)")
        weights.append(other.get_weights())
    model.set_weights([np.mean(layer, axis=0) for layer in zip(*weights)])
    return model


def with_dropout(model: keras.Model, rate: float) -> keras.Model:
    """The same model with every dropout layer at `rate`; all weights carry over (dropout has
    none). New layers rather than a changed rate: a layer made with rate 0 has no random
    generator and cannot start dropping later."""
    def clone(layer):
        if isinstance(layer, layers.Dropout):
            return layers.Dropout(rate, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    new_model = keras.models.clone_model(model, clone_function=clone)
    new_model.set_weights(model.get_weights())
    return new_model


@keras.saving.register_keras_serializable(package="captcha_crnn")
def ctc_loss(y_true, y_pred):
    """CTC loss for padded labels: y_true holds 1-based symbols, 0 marks padding.

    The label length is counted per sample, so labels of different lengths mix in a batch.
    Probabilities are passed as log-probabilities, which the CTC op treats as logits.
    """
    y_true = ops.cast(y_true, "int32")
    label_length = ops.sum(ops.cast(ops.greater(y_true, 0), "int32"), axis=-1)
    batch = ops.shape(y_pred)[0]
    logit_length = ops.full((batch,), ops.shape(y_pred)[1], dtype="int32")
    log_probs = ops.log(ops.clip(y_pred, 1e-8, 1.0))
    return ops.ctc_loss(y_true, log_probs, label_length, logit_length, mask_index=0)


def best_path_in_length_range(log_probs: np.ndarray, min_length: int,
                              max_length: int) -> tuple[list[int], float]:
    """The most likely CTC path whose label has min_length..max_length symbols.

    log_probs: (steps, classes), class 0 the blank. Returns (label as class indices, path
    log-probability). A Viterbi search over (symbols emitted so far, current class): the
    greedy path is the unconstrained best path, so this is what greedy decoding becomes when
    the label length is known. It recovers doubled letters whose separating blank lost
    narrowly ("MM" read as "M") and symbols lost in overlaps.
    """
    steps, classes = log_probs.shape
    counts = np.arange(max_length + 1)
    class_ids = np.arange(classes)
    score = np.full((max_length + 1, classes), -np.inf)
    score[0, 0] = log_probs[0, 0]
    score[1, 1:] = log_probs[0, 1:]
    from_count = np.zeros((steps, max_length + 1, classes), dtype=np.int64)
    from_class = np.zeros_like(from_count)
    for t in range(1, steps):
        new = np.empty_like(score)
        # A blank keeps the count and may follow anything.
        best_before = score.argmax(axis=1)
        new[:, 0] = score[counts, best_before]
        from_count[t, :, 0], from_class[t, :, 0] = counts, best_before
        # Symbol c after k - 1 symbols: emitted anew after any other class (blank included),
        # or c repeated with k symbols already (CTC merges it).
        before = score[:-1]
        top_two = np.argsort(before, axis=1)[:, :-3:-1]
        emit_from = np.where(class_ids == top_two[:, :1], top_two[:, 1:], top_two[:, :1])
        emit = np.take_along_axis(before, emit_from, axis=1)
        repeat = score[1:] >= emit
        new[1:, 1:] = np.maximum(score[1:], emit)[:, 1:]
        new[0, 1:] = -np.inf
        from_count[t, 1:, 1:] = np.where(repeat, counts[1:, None], counts[:-1, None])[:, 1:]
        from_class[t, 1:, 1:] = np.where(repeat, class_ids, emit_from)[:, 1:]
        score = new + log_probs[t]
    ends = score[min_length:]
    count, cls = np.unravel_index(ends.argmax(), ends.shape)
    count += min_length
    path_log_prob = float(score[count, cls])
    label = []
    for t in range(steps - 1, 0, -1):
        prev_count, prev_class = from_count[t, count, cls], from_class[t, count, cls]
        if prev_count < count:
            label.append(int(cls))
        count, cls = prev_count, prev_class
    if cls > 0:
        label.append(int(cls))
    return label[::-1], path_log_prob


def log_of_probs(probs: np.ndarray) -> np.ndarray:
    """Log of softmax outputs, floored at 1e-8 so that a zero gives a finite log (as in the loss)."""
    return np.log(np.clip(probs, 1e-8, 1.0))


def decode_predictions(probs, spec: LabelSpec, beam_width: int = 1) -> tuple[list[str], list[float]]:
    """Per-step probabilities -> (texts, best-path probabilities).

    beam_width 1 is greedy decoding: the most likely symbol per step, repeats merged, blanks
    dropped; done in NumPy, since TensorFlow's decoder costs more per call than a whole
    one-image prediction needs. Larger widths use CTC beam search. An answer whose length
    the spec does not allow is replaced by the best path of an allowed length.
    """
    probs = np.asarray(probs)
    log_probs = log_of_probs(probs)
    if beam_width > 1:
        batch, steps = probs.shape[0], probs.shape[1]
        lengths = ops.full((batch,), steps, dtype="int32")
        decoded, scores = ops.ctc_decode(ops.convert_to_tensor(log_probs), lengths,
                                         strategy="beam_search", beam_width=beam_width, top_paths=1)
        rows = list(ops.convert_to_numpy(decoded)[0])
        path_probs = np.exp(ops.convert_to_numpy(scores)[:, 0])
    else:
        best = probs.argmax(axis=-1)
        first_of_run = np.ones_like(best, dtype=bool)
        first_of_run[:, 1:] = best[:, 1:] != best[:, :-1]
        rows = list(np.where(first_of_run, best, 0))  # 0 is the blank, which decode drops
        path_probs = np.exp(log_probs.max(axis=-1).sum(axis=-1))
    texts = [spec.decode(row) for row in rows]
    for i, text in enumerate(texts):
        if not spec.min_length <= len(text) <= spec.max_length:
            label, path_log_prob = best_path_in_length_range(log_probs[i], spec.min_length,
                                                             spec.max_length)
            texts[i], path_probs[i] = spec.decode(label), np.exp(path_log_prob)
    return texts, [float(np.clip(p, 0.0, 1.0)) for p in path_probs]


class ModelLoadError(ValueError):
    """A model file is missing, unreadable, or not a CAPTCHA reader."""


def save_reader(model: keras.Model, spec: LabelSpec, path: str | Path) -> None:
    """Save model and spec atomically: each goes to a temp file, then is renamed.

    Only the inference model is saved, never optimizer state, which would triple the file.
    The copy is rebuilt from the layer config: `clone_model` also copies the compile state
    (optimizer included) in recent Keras releases.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if getattr(model, "optimizer", None) is not None:
        trained = model
        model = keras.Model.from_config(trained.get_config())
        model.set_weights(trained.get_weights())
    spec.save(spec_path_for(path))
    tmp = path.with_name(f".{path.stem}.partial.keras")
    model.save(tmp)
    os.replace(tmp, path)


def load_reader(path: str | Path, compile: bool = False) -> tuple[keras.Model, LabelSpec]:
    """Load a model in safe mode together with the spec saved beside it."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model not found: {path}")
    spec_file = spec_path_for(path)
    if not spec_file.is_file():
        raise ModelLoadError(f"model spec not found: {spec_file} (it is saved beside the model)")
    try:
        spec = LabelSpec.load(spec_file)
    except (ValueError, TypeError, KeyError) as err:
        raise ModelLoadError(f"invalid model spec {spec_file}: {err}") from None
    try:
        model = keras.saving.load_model(path, compile=compile)
    except Exception as err:  # keras raises many types for a file that is not a model
        raise ModelLoadError(f"not a loadable Keras model: {path} ({type(err).__name__})") from None
    expected = (None, time_steps(spec), spec.num_classes)
    if tuple(model.output_shape) != expected:
        raise ModelLoadError(f"model output {model.output_shape} does not match its spec "
                             f"{expected}: {path}")
    return model, spec


def calibrated(path_probs, spec: LabelSpec) -> np.ndarray:
    """Best-path probabilities -> probabilities that the whole answer is right.

    Uses the logistic map fitted on validation data at the end of training; models
    without one report the best-path probability itself.
    """
    path_probs = np.asarray(path_probs, dtype=np.float64)
    if spec.calibration is None:
        return path_probs
    slope, intercept = spec.calibration
    return 1.0 / (1.0 + np.exp(-(slope * np.log(np.clip(path_probs, 1e-12, 1.0)) + intercept)))


def fit_calibration(path_probs, correct) -> tuple[float, float] | None:
    """Logistic regression of correctness on log best-path probability (None if one class)."""
    from sklearn.linear_model import LogisticRegression

    correct = np.asarray(correct, dtype=int)
    if correct.min() == correct.max():
        return None
    features = np.log(np.clip(np.asarray(path_probs, dtype=np.float64), 1e-12, 1.0))[:, None]
    fit = LogisticRegression(C=1.0).fit(features, correct)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def view_offsets(views: int) -> list[int]:
    """Sideways shifts, in pixels, of the views `predict_texts` averages: 0, +3, -3, +6, -6, ...

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


_inference_graphs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def run_model(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The model's output for a batch of images, in inference mode.

    Through one graph traced for any batch size, kept per model: `predict_on_batch` traces
    again for the second batch shape it meets, which costs as much as the first trace (1 to
    2 s on two cores), and a folder's last batch, the views of one image and the answers
    re-read with `reread_below` all come in new shapes.
    """
    graph = _inference_graphs.get(model)
    if graph is None:
        signature = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        held = weakref.ref(model)  # the graph must not keep its model alive
        graph = tf.function(lambda x: held()(x, training=False), input_signature=[signature])
        _inference_graphs[model] = graph
    return graph(np.asarray(images, np.float32)).numpy()


def predict_probs(model: keras.Model, images: np.ndarray, views: int = 1,
                  unshifted: np.ndarray | None = None) -> np.ndarray:
    """Per-step probabilities, averaged over `views` sideways-shifted copies of the images
    (test-time augmentation: more accurate, `views` times the model time), all read in one
    model call. `unshifted`: the first view's probabilities when they are already known, so
    only the others are computed.

    The average is the geometric mean, renormalized: an arithmetic mean flattens every step
    and leaves the confidence too low (ECE 0.056 against 0.041 on 2,000 default-style images).
    """
    offsets = view_offsets(views)
    known = [] if unshifted is None else [unshifted]
    to_read = offsets[len(known):]
    if to_read:
        known.append(run_model(model, np.concatenate([shift_sideways(images, dx) for dx in to_read])))
    probs = np.concatenate(known)
    if views == 1:
        return probs
    log_probs = log_of_probs(probs).reshape(views, len(images), *probs.shape[1:])
    mean = np.exp(log_probs.mean(axis=0))
    return mean / mean.sum(axis=-1, keepdims=True)


def predict_texts(model: keras.Model, images: np.ndarray, spec: LabelSpec, batch_size: int = 64,
                  beam_width: int = 1, views: int | None = None,
                  reread_below: float = 0.0) -> tuple[list[str], list[float]]:
    """Preprocessed images (N, 50, 200, 1) -> texts and confidences in [0, 1].

    The confidence is the calibrated probability that the text is right (see `calibrated`).
    `views`: readings averaged per image (`predict_probs`); None reads as the model's spec says.
    With `reread_below`, every image is read once and only the answers less confident than
    that are read again with all `views`: the errors gather in the least confident answers,
    so this buys most of the views' gain for a fraction of their time.
    """
    views = spec.views if views is None else views
    texts, confidences = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        probs = predict_probs(model, batch, 1 if reread_below else views)
        batch_texts, path_probs = decode_predictions(probs, spec, beam_width)
        batch_confidences = calibrated(path_probs, spec)
        unsure = np.flatnonzero(batch_confidences < reread_below)
        if views > 1 and len(unsure):
            probs = predict_probs(model, batch[unsure], views, probs[unsure])
            reread_texts, reread_path_probs = decode_predictions(probs, spec, beam_width)
            batch_confidences[unsure] = calibrated(reread_path_probs, spec)
            for i, text in zip(unsure, reread_texts):
                batch_texts[i] = text
        texts += batch_texts
        confidences += batch_confidences.tolist()
    return texts, confidences


def read_batches(model: keras.Model, spec: LabelSpec, paths: list[Path], batch_size: int = 64,
                 beam_width: int = 1, invert: bool | None = None, strong: bool = False,
                 views: int | None = None, reread_below: float = 0.0):
    """Read image files batch by batch: load and preprocess on all cores, predict, decode.

    Yields (paths read, texts, confidences, ImageReadError for each unreadable file) per
    batch, so callers choose whether a bad file stops them and can show progress.
    """
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = load_and_preprocess_many(chunk, spec.auto_crop, spec.color_distance, invert, strong)
        errors = [image for image in images if isinstance(image, ImageReadError)]
        read = [(path, image) for path, image in zip(chunk, images)
                if not isinstance(image, ImageReadError)]
        texts, confidences = [], []
        if read:
            texts, confidences = predict_texts(model, np.stack([image for _, image in read]), spec,
                                               batch_size, beam_width, views, reread_below)
        yield [path for path, _ in read], texts, confidences, errors


def read_files(model: keras.Model, spec: LabelSpec, paths: list[Path], batch_size: int = 64,
               beam_width: int = 1, views: int | None = None,
               reread_below: float = 0.0) -> tuple[list[str], list[float]]:
    """Texts and confidences for image files, in order.

    Raises ImageReadError on an unreadable file; test.py skips those one by one instead.
    """
    texts: list[str] = []
    confidences: list[float] = []
    for _, batch_texts, batch_confidences, errors in read_batches(
            model, spec, paths, batch_size, beam_width, views=views, reread_below=reread_below):
        if errors:
            raise errors[0]
        texts += batch_texts
        confidences += batch_confidences
    return texts, confidences
