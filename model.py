"""The CRNN: a small CNN reads the image, two BiLSTMs read the columns, CTC aligns.

Image (50, 200, 1) -> CNN (strided stem, 8x downsampling) -> height folded into features
-> 25 time steps of 8 pixels each -> 2 x BiLSTM
-> per-step softmax over the symbols + the CTC blank (index 0).

The input size and the charset come from the model's spec (spec.ModelSpec). The saved model
maps image -> per-step probabilities and contains only built-in layers, so
`keras.saving.load_model(path)` loads it in safe mode. Decoding those probabilities lives in
decode.py and reading images in reader.py; this module is the network, its loss, and how it
is saved and loaded.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import weakref
import zipfile
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

from files import atomic_path  # noqa: E402
from spec import ModelLoadError, ModelSpec, spec_path_for  # noqa: E402

CONV_FILTERS = (16, 32, 96, 128)
RNN_UNITS = 128
DOWNSAMPLE_W = 8  # image columns per time step


def time_steps(spec: ModelSpec) -> int:
    return spec.img_width // DOWNSAMPLE_W


def conv_block(x, filters: int, name: str, strides: int = 1):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_model(spec: ModelSpec, dropout: float = 0.2) -> keras.Model:
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


def replace_output_layer(model: keras.Model, old_spec: ModelSpec, spec: ModelSpec) -> keras.Model:
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


def save_reader(model: keras.Model, spec: ModelSpec, path: str | Path) -> None:
    """Save model and spec, each atomically (files.atomic_path).

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
    with atomic_path(path) as tmp:
        model.save(tmp)


OWN_PACKAGE = "captcha_crnn"  # the package our registered objects (ctc_loss) are saved under


def foreign_objects(config) -> list[str]:
    """What in a saved model's config is not a built-in Keras object or ours: Lambda layers
    (Python code) and classes from other modules or packages."""
    found = []
    if isinstance(config, dict):
        if "class_name" in config:
            module, registered = config.get("module"), config.get("registered_name")
            if config["class_name"] == "Lambda":
                found.append("a Lambda layer (Python code)")
            elif registered and ">" in str(registered) and not str(registered).startswith(OWN_PACKAGE + ">"):
                found.append(f"the custom object {registered}")
            elif module is not None and not str(module).startswith("keras"):
                found.append(f"{config['class_name']} from {module}")
        for value in config.values():
            found += foreign_objects(value)
    elif isinstance(config, list):
        for value in config:
            found += foreign_objects(value)
    return found


def check_keras_file(path: Path) -> None:
    """Refuse, with the reason, a file that is not a .keras archive or that holds more than
    built-in layers. Model files are data, never code: Keras's safe mode refuses Lambda
    layers too, and stays on as the last guard, but its errors do not say what was found."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, EOFError, ValueError, OSError):
        raise ModelLoadError(f"not a .keras model file (truncated, or not a Keras zip archive): "
                             f"{path}") from None
    foreign = foreign_objects(config)
    if foreign:
        raise ModelLoadError(f"refused to load {path}: it contains {', '.join(sorted(set(foreign)))}; "
                             "only models of built-in Keras layers load (model files are data, not code)")


def load_reader(path: str | Path, compile: bool = False) -> tuple[keras.Model, ModelSpec]:
    """Load a model in safe mode together with the spec saved beside it; raises
    ModelLoadError for a missing, damaged, mismatched or code-carrying file (check_keras_file)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model not found: {path}")
    spec = ModelSpec.load(spec_path_for(path))
    check_keras_file(path)
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as err:  # keras raises many types for a file that is not a model
        raise ModelLoadError(f"not a loadable Keras model: {path} ({type(err).__name__})") from None
    expected_in, expected_out = (None, *spec.image_shape, 1), (None, time_steps(spec), spec.num_classes)
    if tuple(model.input_shape) != expected_in or tuple(model.output_shape) != expected_out:
        raise ModelLoadError(f"model {model.input_shape} -> {model.output_shape} does not match its "
                             f"spec {expected_in} -> {expected_out}: {path}")
    return model, spec


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
