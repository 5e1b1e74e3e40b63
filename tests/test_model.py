"""The model, its CTC loss and decoding, and a real train -> save -> reload -> predict run."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import train
from model import (ModelLoadError, _inference_graphs, average_weights, best_path_in_length_range,
                   build_model, ctc_loss, decode_predictions, load_reader, predict_probs, predict_texts,
                   replace_output_layer, save_reader, shift_sideways, time_steps, view_offsets,
                   with_dropout)
from preprocess import DEFAULT_CHARSET, LabelSpec, label_from_path, load_and_preprocess


def test_build_checks_time_steps_against_label_length():
    model = build_model(LabelSpec())
    assert model.output_shape == (None, time_steps(LabelSpec()), 63)
    with pytest.raises(ValueError, match="time steps"):
        build_model(LabelSpec("0123456789", 1, 14))


def test_ctc_loss_prefers_the_right_alignment():
    spec = LabelSpec("ab", 1, 2)
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
    short = LabelSpec("ab", 1, 3).encode("a")[None]  # padding is not counted as symbols
    assert np.isfinite(float(ctc_loss(short, good)[0]))


def test_greedy_decoding_collapses_repeats_and_reports_path_probability():
    spec = LabelSpec("xy", 1, 3)
    probs = np.zeros((1, 6, 3), dtype=np.float32)
    path = [1, 1, 0, 1, 2, 0]  # "x x _ x y _" -> "xxy"
    for t, k in enumerate(path):
        probs[0, t] = 0.05
        probs[0, t, k] = 0.9
    texts, conf = decode_predictions(probs, spec)
    assert texts == ["xxy"]
    assert conf[0] == pytest.approx(0.9 ** 6, rel=1e-3)
    beam_texts, beam_conf = decode_predictions(probs, spec, beam_width=4)
    assert beam_texts == ["xxy"] and 0 < beam_conf[0] <= 1


def test_greedy_decoding_matches_the_keras_ctc_decoder():
    spec = LabelSpec("abcdef", 1, 12)  # every length 12 steps can produce: nothing to constrain
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(32, 12, spec.num_classes)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    decoded, scores = keras.ops.ctc_decode(np.log(probs), np.full(32, 12), strategy="greedy")
    expected = [spec.decode(row) for row in keras.ops.convert_to_numpy(decoded)[0]]
    texts, conf = decode_predictions(probs, spec)
    assert texts == expected and len(set(texts)) > 20
    assert np.allclose(conf, np.exp(-keras.ops.convert_to_numpy(scores)[:, 0]), rtol=1e-4)


def collapse(path: tuple[int, ...]) -> list[int]:
    """CTC's many-to-one map: merge repeats, then drop blanks (0)."""
    return [k for i, k in enumerate(path) if k and (i == 0 or path[i - 1] != k)]


def test_length_constrained_path_is_the_best_path_of_an_allowed_length():
    # Brute force over every path of 6 steps and 4 classes (4,096 paths) on random scores.
    rng = np.random.default_rng(1)
    paths = np.array(np.meshgrid(*[range(4)] * 6, indexing="ij")).reshape(6, -1).T
    for trial in range(12):
        log_probs = np.log(rng.dirichlet(np.ones(4) * 0.5, size=6))
        scores = log_probs[np.arange(6), paths].sum(axis=1)
        min_length, max_length = [(1, 1), (2, 2), (3, 3), (1, 3), (4, 5), (2, 6)][trial % 6]
        allowed = [min_length <= len(collapse(tuple(p))) <= max_length for p in paths]
        best = np.flatnonzero(allowed)[scores[allowed].argmax()]
        label, path_log_prob = best_path_in_length_range(log_probs, min_length, max_length)
        assert path_log_prob == pytest.approx(scores[best])
        assert label == collapse(tuple(paths[best]))


def test_decoding_keeps_a_doubled_letter_when_the_length_is_known():
    # "x x _? x y": the blank between the two x loses narrowly, so greedy reads "xy".
    probs = np.full((1, 6, 3), 0.02, dtype=np.float32)
    for t, (k, p) in enumerate([(1, 0.9), (1, 0.9), (1, 0.5), (1, 0.9), (2, 0.9), (0, 0.9)]):
        probs[0, t, k] = p
        probs[0, t, 0 if k else 1] = 1 - p - 0.02
    free_texts, free_conf = decode_predictions(probs, LabelSpec("xy", 1, 3))
    texts, conf = decode_predictions(probs, LabelSpec("xy", 3, 3))
    assert free_texts == ["xy"] and texts == ["xxy"]
    assert conf[0] == pytest.approx(free_conf[0] * 0.48 / 0.5, rel=1e-3)
    beam_texts, _ = decode_predictions(probs, LabelSpec("xy", 3, 3), beam_width=4)
    assert beam_texts == ["xxy"]


def test_views_are_odd_shifts_either_way_with_the_edge_column_repeated():
    assert view_offsets(1) == [0] and view_offsets(5) == [0, 3, -3, 6, -6]
    images = np.arange(2 * 2 * 6, dtype=np.float32).reshape(2, 2, 6, 1)
    right, left = shift_sideways(images, 2), shift_sideways(images, -2)
    np.testing.assert_array_equal(right[0, 0, :, 0], [0, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(left[1, 1, :, 0], [20, 21, 22, 23, 23, 23])
    assert shift_sideways(images, 0) is images


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
    assert spec == LabelSpec()
    images = np.stack([load_and_preprocess(p) for p in sorted(captcha_dir.glob("*.png"))[:8]])
    np.testing.assert_allclose(plain.predict_on_batch(images), model.predict_on_batch(images),
                               atol=1e-6)
    texts, confidences = predict_texts(model, images, spec, batch_size=3)
    assert len(texts) == 8 and all(0.0 <= c <= 1.0 for c in confidences)
    # Three views: the geometric mean of the shifted readings, one distribution per step.
    views = predict_probs(model, images, views=3)
    shifted = [plain.predict_on_batch(shift_sideways(images, dx)) for dx in view_offsets(3)]
    expected = np.exp(np.mean(np.log(np.clip(shifted, 1e-8, 1.0)), axis=0))
    np.testing.assert_allclose(views, expected / expected.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(predict_probs(model, images), plain.predict_on_batch(images), atol=1e-6)
    # A spec that says three views makes them the default reading; `views=` still overrides it.
    three = replace(spec, views=3)
    by_spec = predict_texts(model, images, three)[1]
    np.testing.assert_allclose(by_spec, predict_texts(model, images, spec, views=3)[1], rtol=1e-5)
    assert not np.allclose(by_spec, confidences, rtol=1e-5, atol=0)
    np.testing.assert_allclose(predict_texts(model, images, three, views=1)[1], confidences, rtol=1e-5)
    # Batches of 3, 2, 8 and 24 (8 images in 3 views): one graph, traced once.
    assert _inference_graphs[model].experimental_get_tracing_count() == 1
    assert all(set(t) <= set(spec.charset) and len(t) <= time_steps(spec) for t in texts)
    metrics = json.loads(tiny_model.with_suffix(".metrics.json").read_text())
    assert metrics["n"] >= 6 and 0.0 <= metrics["cer"] and metrics["train_images"] > 40
    assert (tiny_model.parent / "crnn_ctc_best.keras").exists()
    assert not list(tiny_model.parent.glob(".*partial*"))


def test_new_head_keeps_the_weights_of_the_symbols_both_charsets_share(tiny_model):
    model, spec = load_reader(tiny_model)
    digits = LabelSpec("0123456789", 4, 4)
    head = replace_output_layer(model, spec, digits).get_layer("symbol_probs").get_weights()[0]
    old = model.get_layer("symbol_probs").get_weights()[0]
    assert head.shape[-1] == 11
    np.testing.assert_array_equal(head[:, [0, 1, 10]], old[:, [0, spec.charset.index("0") + 1,
                                                                 spec.charset.index("9") + 1]])


def test_fine_tuning_to_a_new_charset(tiny_model, tmp_path, capsys):
    from generate import generate_captchas

    data = tmp_path / "digits"
    generate_captchas(data, 24, seed=7, length=4, charset="0123456789", progress=False)
    assert train.main(["--init-from", str(tiny_model), "--data-dir", str(data), "--epochs", "1",
                       "--batch-size", "8", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "charset (10): 0123456789  lengths 4..4  (from the labels)" in out
    model, spec = load_reader(tmp_path / "out" / "crnn_ctc_final.keras")
    assert (spec.charset, spec.min_length, spec.max_length) == ("0123456789", 4, 4)
    assert model.output_shape[-1] == 11
    keras.saving.load_model(tmp_path / "out" / "crnn_ctc_final.keras", safe_mode=True, compile=False)


def test_zero_epochs_recalibrates_a_model_without_changing_its_weights(tmp_path):
    from generate import generate_captchas

    shipped = Path(__file__).resolve().parent.parent / "saved_model" / "crnn_ctc_final.keras"
    data = tmp_path / "fresh"
    generate_captchas(data, 80, seed=5150, progress=False)
    assert train.main(["--init-from", str(shipped), "--data-dir", str(data), "--epochs", "0",
                       "--val-fraction", "0.5", "--test-fraction", "0.4", "--out", str(tmp_path / "out"),
                       "--name", "recal"]) == 0
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


def test_average_with_starts_from_the_mean_of_the_weights_of_one_layout(tiny_model, captcha_dir,
                                                                        tmp_path):
    model, spec = load_reader(tiny_model)
    other = keras.models.clone_model(model)
    other.set_weights([w + 1.0 for w in model.get_weights()])
    save_reader(other, spec, tmp_path / "other.keras")
    assert train.main(["--init-from", str(tiny_model), "--average-with", str(tmp_path / "other.keras"),
                       "--data-dir", str(captcha_dir), "--epochs", "0", "--out", str(tmp_path / "out"),
                       "--name", "mean"]) == 0
    mean, _ = load_reader(tmp_path / "out" / "mean_final.keras")
    for got, original in zip(mean.get_weights(), model.get_weights()):
        np.testing.assert_allclose(got, original + 0.5, rtol=1e-5, atol=1e-6)
    digits = LabelSpec("0123456789", 4, 4)
    save_reader(replace_output_layer(model, spec, digits), digits, tmp_path / "digits.keras")
    with pytest.raises(ModelLoadError, match="cannot be averaged"):
        average_weights(model, spec, [tmp_path / "digits.keras"])
    with pytest.raises(SystemExit):
        train.parse_args(["--average-with", str(tiny_model), "--out", str(tmp_path)])


def test_training_lowers_the_loss(captcha_dir):
    """A few steps on a tiny set must fit it better than the untrained model."""
    spec = LabelSpec()
    paths = sorted(captcha_dir.glob("*.png"))[:16]
    x = np.stack([load_and_preprocess(p) for p in paths])
    y = spec.encode_all([label_from_path(p) for p in paths])
    keras.utils.set_random_seed(0)
    model = build_model(spec)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ctc_loss)
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0) < 0.7 * before


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


def test_dropout_can_be_turned_off_and_on_again_keeping_the_weights():
    spec = LabelSpec()
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


def test_calibration_maps_path_probability_to_answer_accuracy():
    from metrics import calibration_report
    from model import calibrated, fit_calibration

    rng = np.random.default_rng(0)
    raw = rng.uniform(0.05, 1.0, 4000)
    correct = rng.uniform(size=raw.size) < raw ** 2  # raw probability is over-confident
    params = fit_calibration(raw, correct)
    spec = LabelSpec(calibration=params)
    fixed = calibrated(raw, spec)
    assert calibration_report(fixed, correct)["ece"] < calibration_report(raw, correct)["ece"] / 2
    assert np.all((fixed >= 0) & (fixed <= 1))
    assert fit_calibration(raw, np.ones(raw.size, bool)) is None
    np.testing.assert_allclose(calibrated(raw, LabelSpec()), raw)
