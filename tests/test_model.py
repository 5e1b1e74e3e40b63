"""The model, its CTC loss and decoding, and a real train -> save -> reload -> predict run."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

import train
from conftest import SHIPPED
from decode import calibrated, decode
from model import (_inference_graphs, build_model, ctc_loss, load_reader, replace_output_layer, save_reader,
                   time_steps, with_dropout)
from preprocess import label_from_path, prepare
from reader import Reader
from spec import DEFAULT_CHARSET, ModelLoadError, ModelSpec


def test_build_checks_time_steps_against_label_length():
    model = build_model(ModelSpec())
    assert model.output_shape == (None, time_steps(ModelSpec()), 63)
    with pytest.raises(ValueError, match="time steps"):
        build_model(ModelSpec("0123456789", 1, 14))


def test_ctc_loss_prefers_the_right_alignment():
    spec = ModelSpec("ab", 1, 2)
    steps = 25
    good = np.full((1, steps, 3), 0.01, dtype=np.float32)
    good[0, :, 0] = 0.98            # blank everywhere ...
    good[0, 5] = [0.01, 0.98, 0.01]  # ... then "a"
    good[0, 10] = [0.01, 0.01, 0.98]  # ... then "b"
    label = spec.encode("ab")[None]
    wrong = spec.encode("ba")[None]
    loss_good = float(ctc_loss(label, good)[0])
    assert loss_good < 1.0
    assert float(ctc_loss(wrong, good)[0]) > loss_good + 5
    short = ModelSpec("ab", 1, 3).encode("a")[None]  # padding is not counted as symbols
    assert np.isfinite(float(ctc_loss(short, good)[0]))


def test_greedy_decoding_matches_the_keras_ctc_decoder():
    spec = ModelSpec("abcdef", 1, 12)  # every length 12 steps can produce: nothing to constrain
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(32, 12, spec.num_classes)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    decoded, scores = keras.ops.ctc_decode(np.log(probs), np.full(32, 12), strategy="greedy")
    expected = [spec.decode(row) for row in keras.ops.convert_to_numpy(decoded)[0]]
    texts, conf = decode(probs, spec)
    assert texts == expected and len(set(texts)) > 20
    assert np.allclose(conf, np.exp(-keras.ops.convert_to_numpy(scores)[:, 0]), rtol=1e-4)


def label_log_likelihood(log_probs: np.ndarray, label: str, spec: ModelSpec) -> float:
    """log P(label) summed over all its CTC paths, by Keras's CTC loss (an independent oracle)."""
    y = np.array([[spec.charset.index(c) + 1 for c in label]])
    loss = keras.ops.ctc_loss(y, log_probs[None], np.array([len(label)]), np.array([len(log_probs)]),
                              mask_index=0)
    return -float(keras.ops.convert_to_numpy(loss)[0])


def test_beam_search_agrees_with_the_keras_ctc_decoder():
    # Both are pruned prefix beam searches, so at width 8 they may part on a rare input; where
    # they do, ours must find a label about as likely (exactness is tested by brute force in
    # test_decode.py).
    spec = ModelSpec("abcdef", 1, 12)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(64, 12, spec.num_classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    decoded, _ = keras.ops.ctc_decode(np.log(probs), np.full(64, 12), strategy="beam_search",
                                      beam_width=8, top_paths=1)
    expected = [spec.decode(row) for row in keras.ops.convert_to_numpy(decoded)[0]]
    texts, _ = decode(probs, spec, beam_width=8)
    assert sum(t == e for t, e in zip(texts, expected)) >= 60
    assert texts != decode(probs, spec)[0]  # the beam changes some answers
    for row, text, other in zip(np.log(probs), texts, expected):
        if text != other:
            assert label_log_likelihood(row, text, spec) >= label_log_likelihood(row, other, spec) - 0.2


@pytest.mark.slow
def test_trained_model_reloads_in_safe_mode_and_predicts(tiny_model, captcha_dir):
    # Plain keras loading, safe mode on: no Lambda layer, no custom code needed.
    plain = keras.saving.load_model(tiny_model, safe_mode=True, compile=False)
    with zipfile.ZipFile(tiny_model) as archive:
        assert "Lambda" not in archive.read("config.json").decode()
    # The inference model only, in the final model and in the checkpoint saved during training:
    # no optimizer state, which would triple the file.
    for path in (tiny_model, tiny_model.parent / "crnn_ctc_best.keras"):
        with zipfile.ZipFile(path) as archive, \
                h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
            assert "layers" in weights and "optimizer" not in weights
    model, spec = load_reader(tiny_model)
    assert spec == ModelSpec()
    images = np.stack([prepare(p, spec) for p in sorted(captcha_dir.glob("*.png"))[:8]])
    np.testing.assert_allclose(plain.predict_on_batch(images), model.predict_on_batch(images),
                               atol=1e-6)
    reader = Reader.from_keras(model, spec, batch_size=3)
    readings = reader.read_prepared(images)
    texts, path_probs = decode(plain.predict_on_batch(images), spec)
    assert [r.text for r in readings] == texts
    np.testing.assert_allclose([r.confidence for r in readings], calibrated(path_probs, spec), rtol=1e-4)
    # Batches of 3, 3 and 2: one graph, traced once.
    assert _inference_graphs[model].experimental_get_tracing_count() == 1
    metrics = json.loads(tiny_model.with_suffix(".metrics.json").read_text())
    assert metrics["n"] >= 6 and 0.0 <= metrics["cer"] and metrics["train_images"] > 40
    config = json.loads(tiny_model.with_suffix(".config.json").read_text())
    assert config["epochs"] == 2 and config["batch_size"] == 16 and config["data_dir"] == str(captcha_dir)
    assert (tiny_model.parent / "crnn_ctc_best.keras").exists()
    assert not list(tiny_model.parent.glob(".*partial*"))


def test_a_spec_that_does_not_match_its_model_is_refused(tmp_path):
    model, spec = load_reader(SHIPPED)
    save_reader(model, spec, tmp_path / "m.keras")
    ModelSpec("0123456789", 4, 4).save(tmp_path / "m.json")
    with pytest.raises(ModelLoadError, match="does not match its spec"):
        load_reader(tmp_path / "m.keras")
    ModelSpec(img_height=64).save(tmp_path / "m.json")
    with pytest.raises(ModelLoadError, match="does not match its spec"):
        load_reader(tmp_path / "m.keras")


@pytest.mark.slow
def test_new_head_keeps_the_weights_of_the_symbols_both_charsets_share(tiny_model):
    model, spec = load_reader(tiny_model)
    digits = ModelSpec("0123456789", 4, 4)
    head = replace_output_layer(model, spec, digits).get_layer("symbol_probs").get_weights()[0]
    old = model.get_layer("symbol_probs").get_weights()[0]
    assert head.shape[-1] == 11
    np.testing.assert_array_equal(head[:, [0, 1, 10]], old[:, [0, spec.charset.index("0") + 1,
                                                                 spec.charset.index("9") + 1]])


def test_a_given_charset_keeps_the_lengths_of_the_labels(tmp_path):
    """--charset sets the symbols only; lengths still come from the labels unless given."""
    config = train.parse_args(["--data-dir", str(tmp_path), "--charset", "abcdefg"])
    spec, source = train.choose_spec(["abc", "abcdefg"], config, None)
    assert (spec.charset, spec.min_length, spec.max_length, source) == ("abcdefg", 3, 7, "--charset")


@pytest.mark.slow
def test_fine_tuning_to_a_new_charset(tiny_model, tmp_path, capsys, monkeypatch):
    """Charset and lengths come from the labels even where the model's own spec (A-Z a-z 0-9,
    5 symbols) would fit them: the fine-tuned reader answers only what the site shows."""
    from generate import generate_captchas

    monkeypatch.setattr(train, "PROGRESS_LINE_EVERY_S", 0.0)  # a line every step

    data = tmp_path / "digits"
    generate_captchas(data, 24, seed=7, length=5, charset="0123456789", progress=False)
    assert train.main(["--init-from", str(tiny_model), "--data-dir", str(data), "--epochs", "1",
                       "--batch-size", "8", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "charset (10): 0123456789  lengths 5..5  (from the labels; --charset sets it)" in out
    # A few images: a fifth for validation, so that early stopping rests on enough, and patience 12.
    assert "split: 17 train, 5 validation, 2 test; batch size 8, patience 12" in out
    # Output to a pipe gets no progress bar, so lines inside the epoch give throughput and loss.
    assert re.search(r"step 50/50: \d+ images/s, loss \d+\.\d{4}", out)
    model, spec = load_reader(tmp_path / "out" / "crnn_ctc_final.keras")
    assert (spec.charset, spec.min_length, spec.max_length) == ("0123456789", 5, 5)
    assert model.output_shape[-1] == 11
    keras.saving.load_model(tmp_path / "out" / "crnn_ctc_final.keras", safe_mode=True, compile=False)


@pytest.mark.slow
def test_zero_epochs_recalibrates_a_model_without_changing_its_weights(tmp_path, capsys):
    from generate import generate_captchas

    shipped = Path(__file__).resolve().parent.parent / "saved_model" / "crnn_ctc_final.keras"
    data = tmp_path / "fresh"
    generate_captchas(data, 80, seed=5150, progress=False)
    assert train.main(["--init-from", str(shipped), "--data-dir", str(data), "--epochs", "0",
                       "--val-fraction", "0.5", "--test-fraction", "0.4", "--out", str(tmp_path / "out"),
                       "--name", "recal"]) == 0
    assert "(from --init-from)" in capsys.readouterr().out
    model, spec = load_reader(tmp_path / "out" / "recal_final.keras")
    original, original_spec = load_reader(shipped)
    for new_weights, old_weights in zip(model.get_weights(), original.get_weights()):
        np.testing.assert_array_equal(new_weights, old_weights)
    assert spec.charset == original_spec.charset and spec.calibration is not None
    assert spec.calibration != original_spec.calibration
    metrics = json.loads((tmp_path / "out" / "recal_final.metrics.json").read_text())
    assert metrics["epochs_run"] == 0 and metrics["n"] == 32 and metrics["exact_match"] > 0.75


def test_zero_epochs_needs_a_model(tmp_path):
    with pytest.raises(SystemExit):
        train.parse_args(["--epochs", "0", "--out", str(tmp_path)])


@pytest.mark.slow
def test_training_lowers_the_loss(captcha_dir):
    """A few steps on a tiny set must fit it better than the untrained model."""
    spec = ModelSpec()
    paths = sorted(captcha_dir.glob("*.png"))[:16]
    x = np.stack([prepare(p, spec) for p in paths])
    y = spec.encode_all([label_from_path(p) for p in paths])
    keras.utils.set_random_seed(0)
    model = build_model(spec)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ctc_loss)
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0) < 0.7 * before


@pytest.mark.slow
def test_interrupted_training_resumes(captcha_dir, tmp_path, capsys):
    args = ["--data-dir", str(captcha_dir), "--batch-size", "16", "--out", str(tmp_path),
            "--charset", DEFAULT_CHARSET, "--patience", "50"]
    state_root = tmp_path / ".resume"

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt  # as Ctrl-C right after the first epoch is saved

    original = train.Checkpoints.on_epoch_end

    def save_then_stop(self, epoch, logs=None):
        original(self, epoch, logs)
        Stop().on_epoch_end(epoch)

    train.Checkpoints.on_epoch_end = save_then_stop
    try:
        assert train.cli(args + ["--epochs", "3"]) == 130
    finally:
        train.Checkpoints.on_epoch_end = original
    assert list(state_root.glob("*/state.keras"))
    assert not (tmp_path / "crnn_ctc_final.keras").exists()
    capsys.readouterr()
    assert train.main(args + ["--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 1" in out
    assert (tmp_path / "crnn_ctc_final.keras").exists()
    assert not list(state_root.glob("*/state.keras"))
    # The resumed part continues the same record: one row per epoch, the curves drawn from it.
    logs = tmp_path / "logs" / "crnn_ctc"
    with open(logs / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for row in rows:
        assert 0 <= float(row["val_exact_match"]) <= 1 and 0 <= float(row["val_cer"])
        assert float(row["learning_rate"]) > 0 and float(row["val_loss"]) > 0
    assert len(list(logs.glob("validation/events.out.tfevents.*"))) == 2  # one file per part
    assert Image.open(tmp_path / "crnn_ctc_curves.png").size[0] > 600
    assert f"curves: {tmp_path / 'crnn_ctc_curves.png'}" in out and "tensorboard --logdir" in out


@pytest.mark.slow
def test_weight_average_is_what_is_saved_and_a_resumed_run_goes_on_from_the_last_step(
        tiny_model, captcha_dir, tmp_path):
    """--weight-average M: the checkpoints hold the moving average of the weights, and a run
    resumed from its saved state trains on from the last step's weights. With M this close to
    1 the average stays at the first step's weights, near the start and far from the last step."""
    args = ["--init-from", str(tiny_model), "--data-dir", str(captcha_dir), "--batch-size", "8",
            "--charset", DEFAULT_CHARSET, "--patience", "50", "--lr", "3e-3", "--out", str(tmp_path),
            "--weight-average", "0.999999"]
    start, spec = load_reader(tiny_model)

    def moved(model: keras.Model) -> float:
        return max(float(np.abs(w.numpy() - s.numpy()).max())
                   for w, s in zip(model.trainable_weights, start.trainable_weights))

    original = train.Checkpoints.on_epoch_end

    def save_then_stop(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt

    train.Checkpoints.on_epoch_end = save_then_stop
    try:
        assert train.cli(args + ["--epochs", "2"]) == 130
    finally:
        train.Checkpoints.on_epoch_end = original
    best, _ = load_reader(tmp_path / "crnn_ctc_best.keras")
    config = train.parse_args(args + ["--epochs", "2"])
    resumed, done, _ = train.build_or_resume(config, spec, None, tmp_path / ".resume" / config.fingerprint(),
                                             3e-3)
    assert done == 1
    assert moved(resumed) > 0.05 and moved(best) < moved(resumed) / 20, (moved(best), moved(resumed))


@pytest.mark.slow
def test_dropout_can_be_turned_off_and_on_again_keeping_the_weights():
    spec = ModelSpec()
    model = build_model(spec)
    images = np.random.default_rng(0).uniform(size=(2, spec.img_height, spec.img_width, 1))
    for rate in (0.0, 0.3):
        model = with_dropout(model, rate)
        assert {layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)} == {rate}
        before = model.predict_on_batch(images)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ctc_loss)
        model.fit(images, spec.encode_all(["aB3xQ"] * 2), epochs=1, verbose=0)  # trains
        assert not np.allclose(model.predict_on_batch(images), before)
    clone = with_dropout(model, 0.1)
    np.testing.assert_allclose(clone.predict_on_batch(images), model.predict_on_batch(images), rtol=1e-5)


@pytest.mark.slow
def test_fresh_images_are_new_every_epoch(captcha_dir, tmp_path, monkeypatch):
    """--fresh-images: every epoch trains on images generated for it (label seed + epoch),
    the source the batches come from holds them, and the generated folders are removed;
    --fresh-oversample makes its symbols more common; --dropout sets the rate of the model's
    dropout layers."""
    generated, trained_on = [], []
    generate = train.generate_captchas

    def record_generation(folder, count, seed, **kwargs):
        paths = generate(folder, count, seed=seed, **kwargs)
        generated.append((seed, [label_from_path(p) for p in paths]))
        return paths

    load = train.FreshImages.load

    def record_source(self, epoch):
        load(self, epoch)
        trained_on.append([self.spec.decode(row) for row in self.source.arrays[1]])

    monkeypatch.setattr(train, "generate_captchas", record_generation)
    monkeypatch.setattr(train.FreshImages, "load", record_source)
    args = ["--data-dir", str(captcha_dir), "--fresh-images", "40", "--fresh-seed", "7", "--dropout", "0",
            "--fresh-oversample", "0Oo",
            "--epochs", "2", "--batch-size", "16", "--charset", DEFAULT_CHARSET, "--out", str(tmp_path)]
    assert train.main(args) == 0
    assert [seed for seed, _ in generated] == [7, 8]
    assert [labels for _, labels in generated] == [trained_on[0], trained_on[-1]]
    assert generated[0][1] != generated[1][1] and len(generated[0][1]) == 40
    assert not set(generated[0][1]) & {label_from_path(p) for p in captcha_dir.glob("*.png")}
    symbols = "".join(generated[0][1] + generated[1][1])
    assert sum(symbols.count(s) for s in "0Oo") > 2 * len(symbols) * 3 / len(DEFAULT_CHARSET)
    assert not (tmp_path / ".fresh").exists() or not any((tmp_path / ".fresh").iterdir())
    metrics = json.loads((tmp_path / "crnn_ctc_final.metrics.json").read_text())
    assert metrics["train_images"] == 40 and metrics["epochs_run"] == 2
    model, _ = load_reader(tmp_path / "crnn_ctc_final.keras")
    assert {layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)} == {0.0}


def test_training_batches_cover_every_image_once_per_pass_in_a_new_order():
    """train.make_dataset: the endless training stream is one permutation of the indices
    after another (no shuffle buffer), seeded: the same seed gives the same stream."""
    images = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((10, 2, 3), np.uint8)
    source = train.BatchSource(images, np.arange(10, dtype=np.int32)[:, None])
    indices = np.array([1, 3, 4, 6, 8, 9])

    def stream(seed: int) -> list[int]:
        batches = train.make_dataset(source, indices, 3, True, False, seed=seed).take(6)
        return [int(label) for _, labels in batches for label in labels.numpy()[:, 0]]

    order = stream(seed=5)
    passes = [order[:6], order[6:12], order[12:]]
    assert all(sorted(p) == indices.tolist() for p in passes)
    assert len({tuple(p) for p in passes}) > 1
    assert stream(seed=5) == order and stream(seed=6) != order
