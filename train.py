"""Train the CRNN with CTC loss, checkpoint it, and evaluate it on a held-out split.

    python train.py                                    # synthetic default data, made on first run
    python train.py --data-dir my_captchas/ --epochs 40
    python train.py --init-from saved_model/crnn_ctc_final.keras --data-dir site/   # fine-tune
    python train.py --fresh-images 40000            # new generated images every epoch
    python train.py --strategy mirrored --batch-size 256 --lr 4e-3   # every local GPU

Images are named by their label (`aB3xQ.png`, `aB3xQ_2.png`). Preprocessed images are cached
on disk as uint8 and streamed in batches by tf.data, so memory stays bounded as data grows.
Stopping a run (Ctrl-C, kill) is safe: started again with the same arguments, it resumes
from the last finished epoch. Every file is written to a temporary name, then renamed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from model import build_model, ctc_loss, load_reader, replace_output_layer, save_reader, with_dropout  # noqa: I001

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from decode import fit_calibration  # noqa: E402
from distribute import STRATEGIES, Role, Trainer, distribute_dataset, make_strategy, prepare_model, role_of  # noqa: E402
from files import FolderInUseError, atomic_path, exclusive_lock, write_text_atomic  # noqa: E402
from generate import STYLES, generate_captchas  # noqa: E402
from metrics import score  # noqa: E402
from preprocess import (CachedImages, label_fit_warning, label_from_path,  # noqa: E402
                        preprocessed_cache, scan_labelled_folder, split_dataset)
from reader import Reader  # noqa: E402
from spec import ModelLoadError, ModelSpec, infer_spec  # noqa: E402

DEFAULT_SYNTHETIC_DIR = Path("data/synthetic")
DEFAULT_SYNTHETIC_COUNT = 40000
SMALL_DATA = 2000  # fewer images than this: smaller batches, a larger validation split, more patience
MIN_STEPS_PER_EPOCH = 50  # tiny sets repeat within an epoch, so patience counts real progress
PROGRESS_LINE_EVERY_S = 300.0  # a log file's line inside an epoch


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on, from the command line; saved beside the run's metrics.
    Runs whose configs differ only in `epochs` or in how they are distributed share one
    resume state (`fingerprint`): a run stopped on one machine can go on on another."""

    data_dir: str | None = None
    synthetic_count: int = DEFAULT_SYNTHETIC_COUNT
    epochs: int = 30
    batch_size: int | None = None
    limit: int | None = None
    lr: float | None = None
    out: str = "saved_model"
    name: str = "crnn_ctc"
    seed: int = 42
    charset: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    auto_crop: bool = False
    color_distance: bool = False
    views: int | None = None
    init_from: str | None = None
    no_augment: bool = False
    val_fraction: float | None = None
    test_fraction: float = 0.1
    patience: int | None = None
    fresh_images: int | None = None
    fresh_style: str = "default"
    fresh_oversample: str = ""
    fresh_seed: int = 1000
    dropout: float | None = None
    weight_average: float | None = None
    strategy: str = "auto"
    cpu_devices: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def fingerprint(self) -> str:
        keys = {k: v for k, v in asdict(self).items() if k not in ("epochs", "strategy", "cpu_devices")}
        return hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


def parse_args(argv: list[str] | None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="folder of images named <label>.png; omitted: synthetic "
                   f"CAPTCHAs are generated into {DEFAULT_SYNTHETIC_DIR}/ (reused when present)")
    p.add_argument("--synthetic-count", type=int, default=DEFAULT_SYNTHETIC_COUNT,
                   help="how many synthetic images to make when --data-dir is omitted")
    p.add_argument("--epochs", type=int, default=30, help="maximum passes over the training split; "
                   "0 with --init-from: no training, only refit the confidence calibration on the "
                   "validation split of --data-dir and score the test split")
    p.add_argument("--batch-size", "--batch_size", type=int, help="images per training step, the "
                   "global batch split evenly over the replicas (default 64; 16 when fewer than "
                   f"{SMALL_DATA} images train, for enough steps per epoch)")
    p.add_argument("--limit", type=int, help="use only the first N labelled images (quick runs)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3, 3e-4 with --init-from); "
                   "for a global batch k times the default, scale it by k (the linear rule; the warm-up "
                   "keeps the start stable), up to about 4e-3")
    p.add_argument("--out", default="saved_model", help="folder for checkpoints and metrics")
    p.add_argument("--name", default="crnn_ctc", help="model file prefix: <name>_best.keras, "
                   "<name>_final.keras")
    p.add_argument("--seed", type=int, default=42, help="seed for the split, shuffling and weights")
    p.add_argument("--charset", help="symbols the model reads (default: A-Z a-z 0-9 for synthetic "
                   "data, the symbols found in the labels for --data-dir)")
    p.add_argument("--min-length", type=int, help="shortest label (default: from the data)")
    p.add_argument("--max-length", type=int, help="longest label (default: from the data)")
    p.add_argument("--auto-crop", action="store_true",
                   help="crop every image to its text region before resizing (wide margins); "
                   "on by itself when the --init-from model was trained with it")
    p.add_argument("--color-distance", action="store_true",
                   help="read ink as colour distance from the background colour of its column instead of "
                   "brightness (symbols in colours as bright as their background); on by itself when the "
                   "--init-from model was trained with it")
    p.add_argument("--views", type=int, help="readings per image, shifted sideways and averaged, "
                   "stored with the model: its confidence is calibrated and its test split scored "
                   "reading so, and test.py reads so by default (N times the model time; default: the "
                   "--init-from model's, else 1)")
    p.add_argument("--init-from", help="fine-tune from this model: keeps its feature and sequence "
                   "layers, new output layer if the charset differs")
    p.add_argument("--no-augment", action="store_true", help="turn off random shifts, zoom, "
                   "contrast and noise on training images")
    p.add_argument("--val-fraction", type=float, help="share of images for validation (default "
                   f"0.1; 0.2 below {SMALL_DATA} images, so that early stopping rests on enough of them)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share held out for the test")
    p.add_argument("--patience", type=int, help="epochs without validation improvement before "
                   f"stopping, the learning rate dropping after half of them (default 6; 12 below "
                   f"{SMALL_DATA} images, whose validation loss is noisier)")
    p.add_argument("--fresh-images", type=int, metavar="N", help="train every epoch on N newly "
                   "generated images (--fresh-style, label seed --fresh-seed + epoch) instead of the "
                   "data's training split, which goes unused; validation and test stay on the data")
    p.add_argument("--fresh-style", choices=STYLES, default="default",
                   help="generator of the fresh images (see generate.py)")
    p.add_argument("--fresh-oversample", default="", metavar="SYMBOLS", help="make each of these "
                   "symbols 4 times as likely as any other in the fresh images (as generate.py --oversample)")
    p.add_argument("--fresh-seed", type=int, default=1000, help="label seed of the first fresh "
                   "epoch; give chained runs different ones so that no image repeats")
    p.add_argument("--dropout", type=float, help="rate of the model's dropout layers (default: 0.2 "
                   "for a new model, the loaded model's own with --init-from); 0 suits --fresh-images, "
                   "where no image repeats")
    p.add_argument("--weight-average", type=float, metavar="M", help="keep a moving average of the "
                   "weights (momentum M, e.g. 0.9995: about the last 1/(1-M) steps); validation, the "
                   "checkpoints and the final model use the average, which reads unseen styles better "
                   "than the last step's weights (docs/experiments.md)")
    p.add_argument("--strategy", choices=STRATEGIES, default="auto", help="how to distribute "
                   "training (distribute.py): default, one device; mirrored, every local GPU or the "
                   "--cpu-devices; multiworker, the cluster in TF_CONFIG, the chief writing every file; "
                   "auto (default): multiworker with TF_CONFIG, mirrored with several GPUs, else default")
    p.add_argument("--cpu-devices", type=int, metavar="N", help="split the CPU into N logical devices, "
                   "for --strategy mirrored on a machine without GPUs")
    args = p.parse_args(argv)
    if args.cpu_devices is not None and args.cpu_devices < 1:
        p.error("--cpu-devices must be positive")
    if args.epochs < 0 or (args.batch_size or 1) < 1 or (args.limit is not None and args.limit < 3):
        p.error("--epochs must not be negative, --batch-size must be positive, --limit at least 3")
    if args.epochs == 0 and not args.init_from:
        p.error("--epochs 0 (calibrate only) needs a model to calibrate: --init-from")
    if args.fresh_images is not None and args.fresh_images < 1:
        p.error("--fresh-images must be positive")
    if args.fresh_oversample and not args.fresh_images:
        p.error("--fresh-oversample needs --fresh-images")
    if args.views is not None and args.views < 1:
        p.error("--views must be positive")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        p.error("--dropout must be in [0, 1)")
    if args.weight_average is not None and not 0 < args.weight_average < 1:
        p.error("--weight-average must be in (0, 1)")
    return TrainConfig.from_args(args)


def resolve_data(config: TrainConfig) -> Path:
    """The data folder: --data-dir, or the synthetic default set (made on first use)."""
    if config.data_dir:
        data_dir = Path(config.data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"data folder not found: {data_dir}")
        return data_dir
    generate_captchas(DEFAULT_SYNTHETIC_DIR, config.synthetic_count, seed=0)
    return DEFAULT_SYNTHETIC_DIR


def cache_dir_for(data_dir: Path) -> Path:
    """`DATA_DIR/.cache`, or a folder in the temp dir when the data folder is read-only.

    Read-only includes a folder whose mode bits grant no write: root may write there
    anyway, but a shared data set marked so should stay as its owner left it.
    """
    if os.access(data_dir, os.W_OK) and data_dir.stat().st_mode & 0o222:
        return data_dir / ".cache"
    return Path(tempfile.gettempdir()) / "captcha-crnn-cache"


def choose_spec(labels: list[str], config: TrainConfig,
                init_spec: ModelSpec | None) -> tuple[ModelSpec, str]:
    """Flags first; then the default spec for synthetic data, else the charset and lengths
    found in the labels, even when fine-tuning a model that reads more, so that the reader
    never answers a symbol or a length the site does not show (on 500 images of 4 of A-Z 2-9
    from the base it reads as well as keeping the base's 62 symbols and 3..8: 0.821 against
    0.827, within the spread of runs). A pretrained model's input size and preprocessing options
    stay: its features were learned on images read that way; so does its number of views
    unless --views says otherwise. With --epochs 0 (evaluate, recalibrate) a model whose spec
    fits every label keeps it: its weights must not change. Returns the spec and where its
    charset came from, for the log."""
    if not config.data_dir:
        base, source = ModelSpec(), "the default"
    elif config.epochs == 0 and init_spec is not None and all(init_spec.label_problem(s) is None
                                                              for s in labels):
        base, source = init_spec, "--init-from"
    else:
        base, source = infer_spec(labels), "the labels; --charset sets it"
    if config.charset:
        source = "--charset"
    reading = init_spec or ModelSpec()
    return ModelSpec(config.charset or base.charset, config.min_length or base.min_length,
                     config.max_length or base.max_length, reading.img_height, reading.img_width,
                     auto_crop=config.auto_crop or reading.auto_crop,
                     color_distance=config.color_distance or reading.color_distance,
                     views=config.views or reading.views), source


def augment(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random shift, zoom, contrast and noise, so the model learns the text, not the pixels."""
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    # Shift up to 4% of width / 8% of height and zoom +-8% with one affine warp per image.
    zoom = tf.random.stateless_uniform([batch, 1], seeds[0], 0.92, 1.08)
    shift = tf.random.stateless_uniform([batch, 2], seeds[1], -1.0, 1.0) * [[8.0, 4.0]]
    h, w = float(images.shape[1]), float(images.shape[2])
    cx, cy = w / 2, h / 2
    zeros = tf.zeros([batch, 1])
    transforms = tf.concat([1 / zoom, zeros, cx - cx / zoom + shift[:, :1],
                            zeros, 1 / zoom, cy - cy / zoom + shift[:, 1:],
                            zeros, zeros], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=1.0, interpolation="BILINEAR", fill_mode="NEAREST")
    contrast = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[2], 0.7, 1.3)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * contrast + mean
    noise = tf.random.stateless_normal(tf.shape(images), seeds[3], stddev=0.04)
    return tf.clip_by_value(images + noise, 0.0, 1.0)


class BatchSource:
    """Preprocessed uint8 images (N, H, W), usually a CachedImages on disk, and their encoded labels.

    Batches are gathered from whatever the source holds when they are drawn, so fresh-image
    epochs swap in new images without rebuilding the input pipeline. Images and labels are
    replaced in one assignment: a batch never pairs new images with old labels.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.arrays = (images, labels)

    def swap(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.arrays = (images, labels)


def make_dataset(source: BatchSource, indices: np.ndarray, batch_size: int, training: bool,
                 augment_images: bool, seed: int, parts: int = 1,
                 owned: range = range(1)) -> tf.data.Dataset:
    """Batches of (image float32 (B, H, W, 1), padded labels) streamed from the cache.

    Each batch is read from the uint8 cache on disk on demand, and each pass over the data
    is a seeded permutation of the indices alone (8 MB at 1M images, where tf.data's shuffle
    buffer holds 230 MB), so memory barely grows with the data set. Training draws an
    endless stream of global batches of `batch_size`, one permutation per pass, each cut into
    `parts` equal slices (one per replica) of which this input pipeline yields the `owned`
    ones: every strategy trains on the same global batches, and a worker gathers only the
    images of its own replicas.
    """
    if training:
        table = tf.constant(indices, tf.int64)
        seed_base = tf.constant(seed, tf.int64)
        ds = tf.data.Dataset.counter().flat_map(lambda lap: tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(table, seed=tf.stack([seed_base, lap]))))
        ds = ds.batch(batch_size, drop_remainder=True)
        if parts > 1:
            ds = ds.flat_map(lambda idx: tf.data.Dataset.from_tensor_slices(
                tf.reshape(idx, [parts, -1])[owned.start:owned.stop]))
    else:
        ds = tf.data.Dataset.from_tensor_slices(indices).batch(batch_size)
    height, width = source.arrays[0].shape[1:]
    label_width = source.arrays[1].shape[1]

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, labels = source.arrays
        return np.asarray(images[np.sort(idx)]), labels[np.sort(idx)]

    def load(idx):
        x, y = tf.numpy_function(gather, [idx], [tf.uint8, tf.int32])
        x = tf.cast(tf.expand_dims(x, -1), tf.float32) / 255.0
        x.set_shape([None, height, width, 1])
        y.set_shape([None, label_width])
        return x, y

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment_images:
        pipeline_seed = seed + 7919 * owned.start  # other pipelines, other random draws
        counter = tf.data.Dataset.counter().map(lambda i: tf.stack([tf.cast(i, tf.int32), pipeline_seed]))
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda xy, s: (augment(xy[0], s), xy[1]), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


class Warmup(keras.callbacks.Callback):
    """Ramp the learning rate up over the first steps: CTC with a fresh LSTM diverges or
    stalls on a long plateau when it starts at full speed."""

    def __init__(self, peak_lr: float, steps: int):
        super().__init__()
        self.peak_lr, self.steps = peak_lr, max(1, steps)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step <= self.steps:
            self.model.optimizer.learning_rate.assign(self.peak_lr * min(1.0, (step + 1) / self.steps))


class ProgressLines(keras.callbacks.Callback):
    """A line every few minutes inside an epoch, for a log file (which gets no progress bar):
    on a long run the throughput and the loss show long before the epoch's own line."""

    def __init__(self, steps: int, batch_size: int, every_s: float):
        super().__init__()
        self.steps, self.batch_size, self.every_s = steps, batch_size, every_s
        self.start = self.last = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.start = self.last = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        rate = (batch + 1) * self.batch_size / max(now - self.start, 1e-9)
        print(f"  step {batch + 1}/{self.steps}: {rate:.0f} images/s, loss {float(logs['loss']):.4f}",
              flush=True)


class FreshImages(keras.callbacks.Callback):
    """Before every epoch, generate new images and swap them into the training source.

    A model that sees the same generated images epoch after epoch learns those images
    rather than the generator: on multicolorcaptcha, after 8 epochs over 300,000 images,
    validation loss was 1.99 on images it had trained on and 2.78 on new ones. Epoch e draws
    label seed `first_seed + e` (the generators seed their pixels from it too), so a resumed
    run regenerates the same images; each epoch's folder is deleted when the next one is ready.
    """

    def __init__(self, source: BatchSource, spec: ModelSpec, count: int, style: str,
                 first_seed: int, root: Path, oversample: str = ""):
        super().__init__()
        self.source, self.spec, self.count, self.style = source, spec, count, style
        self.first_seed, self.root, self.oversample = first_seed, root, oversample
        self.loaded_epoch: int | None = None

    def load(self, epoch: int) -> None:
        if epoch == self.loaded_epoch:
            return
        folder = self.root / f"epoch{epoch + 1}"
        paths = generate_captchas(folder, self.count, seed=self.first_seed + epoch,
                                  length=self.spec.max_length, charset=self.spec.charset,
                                  style=self.style, min_length=self.spec.min_length,
                                  oversample=self.oversample)
        images, ok = preprocessed_cache(paths, folder / ".cache", self.spec)
        if not ok.all():
            raise RuntimeError(f"{folder}: the generator wrote {int((~ok).sum())} unreadable images")
        self.source.swap(images, self.spec.encode_all([label_from_path(p) for p in paths]))
        if self.loaded_epoch is not None:
            shutil.rmtree(self.root / f"epoch{self.loaded_epoch + 1}", ignore_errors=True)
        self.loaded_epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.load(epoch)

    def on_train_end(self, logs=None):
        shutil.rmtree(self.root, ignore_errors=True)


class ValidationReadings(keras.callbacks.Callback):
    """Exact match and CER of the validation split read through the one reading path, added
    to the epoch's logs (the log line, TensorBoard and the CSV see them): the loss alone hides
    when a model starts to read. At most `limit` images, so that a large split costs seconds."""

    def __init__(self, data: "TrainingData", limit: int = 2000):
        super().__init__()
        self.data, self.indices = data, data.val[:limit]

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not len(self.indices):
            return
        texts, _ = read_cached(self.model, self.data.spec, self.data, self.indices)
        result = score(texts, self.data.labels(self.indices))
        logs["val_exact_match"], logs["val_cer"] = result["exact_match"], result["cer"]
        logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())


class Checkpoints(keras.callbacks.Callback):
    """Best model by validation loss, plus a resumable training state, both written atomically."""

    def __init__(self, spec: ModelSpec, best_path: Path, state_dir: Path, best: float):
        super().__init__()
        self.spec, self.best_path, self.state_dir, self.best = spec, best_path, state_dir, best

    def on_epoch_end(self, epoch, logs=None):
        val_loss = float(logs.get("val_loss", np.inf))
        if val_loss < self.best:
            self.best = val_loss
            save_reader(self.model, self.spec, self.best_path)
            print(f"\nepoch {epoch + 1}: val_loss improved to {val_loss:.4f}, saved {self.best_path}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.state_dir / "state.keras") as tmp:
            self.model.save(tmp)
        write_text_atomic(self.state_dir / "state.json",
                          json.dumps({"epoch": epoch + 1, "best_val_loss": self.best}))


@dataclass
class TrainingData:
    """The labelled images of a run, preprocessed into the cache, and how they are split."""

    data_dir: Path
    spec: ModelSpec
    images: CachedImages  # (N, H, W) uint8, read from disk batch by batch
    encoded: np.ndarray  # (N, max_length) class indices, the only copy of the labels kept
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def labels(self, indices: np.ndarray) -> list[str]:
        """The labels at `indices` as text, decoded: at 1M images a list of every label would
        hold 65 MB for the few thousand that validation and the test split score."""
        return [self.spec.decode(self.encoded[i]) for i in indices]


def load_data(config: TrainConfig, init_spec: ModelSpec | None) -> TrainingData:
    """Find the labelled images, choose the spec, preprocess into the cache and split."""
    data_dir = resolve_data(config)
    found = scan_labelled_folder(data_dir, None)
    if not found.labels:
        raise ValueError(f"{data_dir}: no labelled images ({found.summary()})")
    spec, charset_source = choose_spec(found.labels[: config.limit], config, init_spec)
    scan = found.filtered(spec)
    warning = label_fit_warning(found.labels[: config.limit], spec)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    paths, labels = scan.path_strings(config.limit), scan.labels[: config.limit]
    if len(paths) < 3:
        raise ValueError(f"{data_dir}: need at least 3 usable labelled images ({scan.summary()})")
    print(f"data: {data_dir}: {scan.summary()}; using {len(paths)}")
    print(f"charset ({len(spec.charset)}): {spec.charset}  lengths {spec.min_length}..{spec.max_length}"
          f"  (from {charset_source})")
    options = [name for name, on in (("auto-crop", spec.auto_crop), ("colour distance", spec.color_distance),
                                     (f"{spec.views} views", spec.views > 1)) if on]
    if options:
        print("reading: " + ", ".join(options))
    images, ok = preprocessed_cache(paths, cache_dir_for(data_dir), spec)
    if not ok.all():
        print(f"skipped {int((~ok).sum())} unreadable images")
    usable = np.flatnonzero(ok)
    val_fraction = config.val_fraction if config.val_fraction is not None else \
        (0.2 if len(usable) < SMALL_DATA else 0.1)
    train, val, test = (usable[i] for i in split_dataset(
        len(usable), val_fraction, config.test_fraction, config.seed))
    return TrainingData(data_dir, spec, images, spec.encode_all(labels), train, val, test)


def build_or_resume(config: TrainConfig, spec: ModelSpec, init: tuple[keras.Model, ModelSpec] | None,
                    state_dir: Path, lr: float) -> tuple[keras.Model, int, float]:
    """(compiled model, epochs already done, best validation loss so far): the saved state of
    an interrupted run with this config, else a new model or the --init-from one."""
    if (state_dir / "state.json").exists():
        state = json.loads((state_dir / "state.json").read_text())
        print(f"resuming after epoch {state['epoch']} from {state_dir}")
        model = keras.saving.load_model(state_dir / "state.keras")
        if config.weight_average:
            # The state was saved at an epoch's end, the average swapped into the model:
            # swap it back, so that training goes on from the last step's weights.
            swap = keras.callbacks.SwapEMAWeights()
            swap.set_model(model)
            swap.on_test_begin()
        return model, state["epoch"], state["best_val_loss"]
    if init is None:
        model = build_model(spec)
    else:
        init_model, init_spec = init
        same = init_spec.charset == spec.charset
        model = init_model if same else replace_output_layer(init_model, init_spec, spec)
    if config.dropout is not None:
        model = with_dropout(model, config.dropout)
    average = {"use_ema": True, "ema_momentum": config.weight_average} if config.weight_average else {}
    model.compile(optimizer=keras.optimizers.Adam(lr, clipnorm=5.0, **average), loss=ctc_loss)
    model.optimizer.build(model.trainable_variables)  # here, not inside a distributed step
    return model, 0, np.inf


def fit(config: TrainConfig, data: TrainingData, model: keras.Model, initial_epoch: int,
        best: float, lr: float, state_dir: Path, best_path: Path,
        strategy: tf.distribute.Strategy, role: Role) -> int:
    """Train until --epochs or early stopping; returns the number of epochs done in all.
    Every worker trains; the chief alone reads the validation split aloud and writes files."""
    source = BatchSource(data.images, data.encoded)
    train_source, train_i, fresh = source, data.train, None
    if config.fresh_images:
        train_source = BatchSource(data.images, data.encoded)  # replaced by fresh.load before training
        folder = Path(config.out) / ".fresh" / f"{config.fingerprint()}-{role.name}"
        fresh = FreshImages(train_source, data.spec, config.fresh_images, config.fresh_style,
                            config.fresh_seed, folder, config.fresh_oversample)
        train_i = np.arange(config.fresh_images)
    small = len(train_i) < SMALL_DATA
    batch_size = config.batch_size or (16 if small else 64)
    patience = config.patience or (12 if small else 6)
    replicas = strategy.num_replicas_in_sync
    if role.chief:
        print(f"split: {len(train_i)} train{' (new every epoch)' if fresh else ''}, {len(data.val)} "
              f"validation, {len(data.test)} test; batch size {batch_size}, patience {patience}"
              + (f"; {replicas} replicas on {role.count} worker(s)" if replicas > 1 else ""))
    if initial_epoch >= config.epochs:
        return initial_epoch
    if fresh:
        fresh.load(initial_epoch)  # before the pipeline starts drawing batches
    train_ds = distribute_dataset(strategy, batch_size, lambda owned, parts: make_dataset(
        train_source, train_i, batch_size, True, not config.no_augment, config.seed, parts, owned))
    val_ds = make_dataset(source, data.val[role.index::role.count], batch_size, False, False, config.seed)
    steps_per_epoch = max(MIN_STEPS_PER_EPOCH, int(np.ceil(len(train_i) / batch_size)))
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(factor=0.3, patience=max(1, patience // 2),
                                          min_lr=lr / 100, verbose=int(role.chief)),
        keras.callbacks.EarlyStopping(patience=patience),
    ]
    if role.chief:
        logs = log_dir(config)
        callbacks = [
            ValidationReadings(data),  # first: the callbacks after it see its figures
            *callbacks,
            keras.callbacks.CSVLogger(str(logs / "epochs.csv"), append=True),  # a resumed run goes on
            keras.callbacks.TensorBoard(str(logs), write_graph=False),
            Checkpoints(data.spec, best_path, state_dir, best),
        ]
    if fresh:
        callbacks.append(fresh)
    if config.weight_average:
        # First, on every worker: the validation loss, the readings and the checkpoints after
        # it see the averaged weights, and training goes on from the last step's.
        callbacks.insert(0, keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if initial_epoch == 0:
        callbacks.insert(0, Warmup(lr, min(steps_per_epoch, 500)))
    trainer = Trainer(strategy, model, batch_size, role)
    verbose = (1 if sys.stdout.isatty() else 2) if role.chief else 0  # a log file gets one line per epoch
    if verbose == 2:
        callbacks.append(ProgressLines(steps_per_epoch, batch_size, PROGRESS_LINE_EVERY_S))
    epochs = trainer.fit(train_ds, val_ds, config.epochs, initial_epoch, steps_per_epoch, callbacks, verbose)
    return initial_epoch + len(epochs)


def log_dir(config: TrainConfig) -> Path:
    """OUT/logs/NAME: TensorBoard event files and epochs.csv, one row per finished epoch."""
    folder = Path(config.out) / "logs" / config.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def plot_curves(csv_path: Path, png_path: Path) -> None:
    """Loss, validation loss, learning rate and validation exact match per epoch, as a PNG.
    An epoch logged twice (killed after its row, before its checkpoint) counts once: its last."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f)}
    epochs = sorted(rows)
    if not epochs:
        return

    def column(name: str) -> list[float]:
        return [float(rows[e].get(name) or "nan") for e in epochs]

    shown = [e + 1 for e in epochs]
    fig, (losses, reading, rate) = plt.subplots(1, 3, figsize=(13, 3.6))
    losses.plot(shown, column("loss"), label="train")
    losses.plot(shown, column("val_loss"), label="validation")
    losses.set(title="CTC loss", xlabel="epoch", yscale="log")
    losses.legend()
    reading.plot(shown, column("val_exact_match"), label="exact match")
    reading.plot(shown, column("val_cer"), label="CER")
    reading.set(title="validation reading", xlabel="epoch", ylim=(0, 1))
    reading.legend()
    rate.plot(shown, column("learning_rate"))
    rate.set(title="learning rate", xlabel="epoch", yscale="log")
    for ax in (losses, reading, rate):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def read_cached(model: keras.Model, spec: ModelSpec, data: TrainingData,
                indices: np.ndarray) -> tuple[list[str], list[float]]:
    """Read the cached images at `indices` through the one reading path, in chunks so memory
    stays bounded."""
    reader = Reader.from_keras(model, spec)
    readings = []
    for start in range(0, len(indices), 1024):
        chunk = indices[start:start + 1024]
        readings += reader.read_prepared(np.asarray(data.images[chunk], np.float32)[..., None] / 255.0)
    return [r.text for r in readings], [r.confidence for r in readings]


def calibrate(model: keras.Model, data: TrainingData) -> ModelSpec:
    """The spec with a confidence calibration fitted on the validation split's readings."""
    texts, confidences = read_cached(model, data.spec, data, data.val)
    right = [text == label for text, label in zip(texts, data.labels(data.val))]
    return replace(data.spec, calibration=fit_calibration(confidences, right))


def evaluate(model: keras.Model, spec: ModelSpec, data: TrainingData) -> dict:
    """Exact match, case-insensitive exact match and CER on the held-out test split."""
    texts, _ = read_cached(model, spec, data, data.test)
    return score(texts, data.labels(data.test))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    strategy = make_strategy(config.strategy, config.cpu_devices)  # before TensorFlow runs anything
    role = role_of(strategy)
    out_dir = Path(config.out)
    lock = out_dir / ".resume" / ("lock" if role.chief else f"{role.name}.lock")
    with exclusive_lock(lock, f"output folder {out_dir}"):
        return run(config, argv, strategy, role)


def run(config: TrainConfig, argv: list[str] | None, strategy: tf.distribute.Strategy, role: Role) -> int:
    """One training run, its output folder held by this process (main). A worker other than
    the chief trains, then leaves calibration, scoring and every file to the chief."""
    keras.utils.set_random_seed(config.seed)
    out_dir = Path(config.out)
    with strategy.scope():  # the model's and optimizer's variables live on every replica
        init = load_reader(config.init_from) if config.init_from else None
        data = load_data(config, init[1] if init else None)
        lr = config.lr or (3e-4 if init else 1e-3)
        state_dir = out_dir / ".resume" / config.fingerprint()
        best_path = out_dir / f"{config.name}_best.keras"
        final_path = out_dir / f"{config.name}_final.keras"
        model, initial_epoch, best = build_or_resume(config, data.spec, init, state_dir, lr)
        model = prepare_model(model, strategy)
    start = time.time()
    epochs_run = fit(config, data, model, initial_epoch, best, lr, state_dir, best_path, strategy, role)
    minutes = (time.time() - start) / 60
    if not role.chief:
        print(f"{role.name}: trained {epochs_run} epochs; the chief writes the model")
        return 0
    if best_path.exists():
        model, _ = load_reader(best_path)
    spec = calibrate(model, data)
    save_reader(model, spec, final_path)

    results = evaluate(model, spec, data)
    command = " ".join(["python", "train.py", *(sys.argv[1:] if argv is None else argv)])
    results.update(train_images=config.fresh_images or len(data.train), epochs_run=epochs_run,
                   train_minutes=round(minutes, 1), data_dir=str(data.data_dir), command=command)
    metrics_path = final_path.with_suffix(".metrics.json")
    write_text_atomic(metrics_path, json.dumps(results, indent=2))
    write_text_atomic(final_path.with_suffix(".config.json"), json.dumps(asdict(config), indent=2))
    if results["n"]:
        print(f"test split: exact_match={results['exact_match']:.4f} "
              f"exact_match_ci={results['exact_match_ci']:.4f} cer={results['cer']:.4f} n={results['n']}")
    print(f"saved {final_path}, {metrics_path} and {final_path.with_suffix('.config.json')}")
    curves = log_dir(config) / "epochs.csv"
    if curves.exists():
        plot_curves(curves, out_dir / f"{config.name}_curves.png")
        print(f"curves: {out_dir / f'{config.name}_curves.png'}; TensorBoard: tensorboard --logdir "
              f"{log_dir(config)}")
    shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def cli(argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, ModelLoadError, FolderInUseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
