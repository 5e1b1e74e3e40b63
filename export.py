"""Export a trained model for readers that need no Keras: ONNX, TFLite or a TF SavedModel.

    python export.py --model saved_model/crnn_ctc_final.keras --format onnx
    python export.py --model saved_model/crnn_ctc_final.keras --format tflite --quantize
    python export.py --model saved_model/crnn_ctc_final.keras --format savedmodel --out exports/crnn

Every export maps a float32 batch (N, H, W, 1) to per-step probabilities, as the Keras model
does, and its spec travels with it: a `.json` of the same name beside it (for `x.onnx`,
`x.json`, the Keras model's own spec when exported in place), and inside an ONNX file as the
metadata entry `spec` as well. `Reader.load(path)` and `test.py --model path` read each
format; an ONNX file reads with onnxruntime alone (requirements-reader.txt).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

FORMATS = {"onnx": ".onnx", "tflite": ".tflite", "savedmodel": ""}
ONNX_OPSET = 17  # run by every onnxruntime release of the last three years


def default_out(model_path: Path, fmt: str, quantize: bool = False) -> Path:
    """`x.keras` -> `x.onnx`, `x.tflite` (`x.int8.tflite` quantized) or the folder `x.savedmodel`."""
    if fmt == "savedmodel":
        return model_path.with_suffix(".savedmodel")
    return model_path.with_suffix((".int8" if quantize else "") + FORMATS[fmt])


def export(model_path: str | Path, fmt: str, out: str | Path | None = None,
           quantize: bool = False) -> Path:
    """Write the model at `model_path` in format `fmt` to `out` (default: beside it) with its
    spec; returns the path written. `quantize`: TFLite with int8 weights (dynamic range)."""
    from files import atomic_path
    from model import load_reader, stderr_kept_unless_failing
    from spec import spec_path_for

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if quantize and fmt != "tflite":
        raise ValueError("--quantize applies to --format tflite only")
    model_path = Path(model_path)
    model, spec = load_reader(model_path)
    out = Path(out) if out else default_out(model_path, fmt, quantize)
    out.parent.mkdir(parents=True, exist_ok=True)
    import tensorflow as tf

    signature = [tf.TensorSpec((None, *spec.image_shape, 1), tf.float32, name="image")]
    with stderr_kept_unless_failing(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # converters warn about their own internals
        if fmt == "onnx":
            with atomic_path(out) as tmp:
                model.export(tmp, format="onnx", input_signature=signature, opset_version=ONNX_OPSET,
                             verbose=False)
                embed_spec(tmp, spec.to_json())
        elif fmt == "tflite":
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            if quantize:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            flatbuffer = converter.convert()
            with atomic_path(out) as tmp:
                tmp.write_bytes(flatbuffer)
        else:
            model.export(out, format="tf_saved_model", verbose=False)
    if spec_path_for(out) != spec_path_for(model_path):
        spec.save(spec_path_for(out))
    return out


def embed_spec(onnx_path: Path, spec_json: str) -> None:
    """Store the spec in the ONNX file's metadata, so the file alone is a complete reader."""
    import onnx

    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    proto.metadata_props.add(key="spec", value=spec_json)
    onnx.save(proto, str(onnx_path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="saved_model/crnn_ctc_final.keras", help="trained .keras model")
    parser.add_argument("--format", choices=list(FORMATS), default="onnx")
    parser.add_argument("--out", help="where to write (default: beside the model, e.g. x.onnx)")
    parser.add_argument("--quantize", action="store_true",
                        help="TFLite with int8 weights (dynamic-range quantization): a third of the size")
    args = parser.parse_args(argv)
    from spec import ModelLoadError

    try:
        out = export(args.model, args.format, args.out, args.quantize)
    except (ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
