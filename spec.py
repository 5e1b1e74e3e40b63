"""The model's spec: what a model reads and how, saved as JSON beside every model file.

It is the one place for the charset, the label lengths, the input image size and the
reading options, so preprocessing, training, the cache and every reader take them from the
model instead of from flags or constants: `x.keras` travels with `x.json`.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from files import write_text_atomic

DEFAULT_CHARSET = string.ascii_uppercase + string.ascii_lowercase + string.digits
DEFAULT_LABEL_LENGTH = 5


class ModelLoadError(ValueError):
    """A model file or its spec is missing, unreadable, or not a CAPTCHA reader."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model reads: its alphabet, label lengths, input size and reading options.

    Index 0 of the model output is the CTC blank; symbol `charset[i]` is class i + 1.
    """

    charset: str = DEFAULT_CHARSET
    min_length: int = DEFAULT_LABEL_LENGTH
    max_length: int = DEFAULT_LABEL_LENGTH
    img_height: int = 50
    img_width: int = 200
    # Crop each image to its text region before resizing (wide empty margins).
    auto_crop: bool = False
    # Ink as colour distance from the local background instead of brightness
    # (preprocess.color_ink_map): symbols in colours as bright as their background.
    color_distance: bool = False
    # Readings per image, shifted sideways and averaged, unless the caller asks otherwise; the
    # calibration below was fitted on readings made so.
    views: int = 1
    # Logistic map from the log best-path probability to P(answer right), fitted on
    # validation data after training: (slope, intercept). None: the raw probability.
    calibration: tuple[float, float] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.charset:
            raise ValueError("charset is empty")
        if not isinstance(self.charset, str):
            raise ValueError(f"charset must be a string, not {type(self.charset).__name__}")
        if len(set(self.charset)) != len(self.charset):
            raise ValueError(f"charset has repeated symbols: {self.charset!r}")
        if any(not c.isprintable() or c.isspace() or c in "/\\" for c in self.charset):
            raise ValueError(f"charset has a space, control character or path separator, which no "
                             f"file-name label can hold: {self.charset!r}")
        if self.calibration is not None:
            object.__setattr__(self, "calibration", tuple(float(v) for v in self.calibration))
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"invalid label lengths {self.min_length}..{self.max_length}")
        if self.img_height < 8 or self.img_width < 8:
            raise ValueError(f"image size {self.img_height}x{self.img_width} is too small")
        if self.views < 1:
            raise ValueError(f"views must be positive, not {self.views}")

    @property
    def num_classes(self) -> int:
        """Symbols plus the CTC blank."""
        return len(self.charset) + 1

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of the preprocessed image the model reads."""
        return self.img_height, self.img_width

    def label_problem(self, label: str) -> str | None:
        """Why `label` cannot be used with this spec, or None if it can."""
        if not self.min_length <= len(label) <= self.max_length:
            return "wrong length"
        if any(c not in self.charset for c in label):
            return "unknown characters"
        return None

    def encode(self, label: str) -> np.ndarray:
        """Text -> class indices (1-based, 0 is the blank), padded with 0 to max_length."""
        return self.encode_all([label])[0]

    def encode_all(self, labels: list[str]) -> np.ndarray:
        """(N, max_length) training targets, one encoded label per row, written in place:
        a million labels cost their 32 MB, not a million small arrays on the way."""
        out = np.zeros((len(labels), self.max_length), dtype=np.int32)
        for row, label in zip(out, labels):
            row[: len(label)] = [self.charset.index(c) + 1 for c in label]
        return out

    def decode(self, indices) -> str:
        """Class indices -> text; blanks, padding (0) and -1 are dropped."""
        return "".join(self.charset[i - 1] for i in indices if 0 < i <= len(self.charset))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, self.to_json())

    @classmethod
    def from_json(cls, text: str, source: str) -> "ModelSpec":
        """Parse a spec; raises ModelLoadError naming `source` when it is invalid. Keys it does
        not know are ignored and missing ones take their defaults, so older specs still load."""
        try:
            data = json.loads(text)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (ValueError, TypeError, KeyError) as err:
            raise ModelLoadError(f"invalid model spec {source}: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        """Read a spec file; raises ModelLoadError when it is missing or invalid."""
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model spec not found: {path} (it is saved beside the model)")
        return cls.from_json(path.read_text(), str(path))


def spec_path_for(model_path: str | Path) -> Path:
    """The spec JSON that travels beside a model: `x.keras` -> `x.json`."""
    return Path(model_path).with_suffix(".json")


def infer_spec(labels: list[str]) -> ModelSpec:
    """Charset and length range that cover every label, in a stable order."""
    if not labels:
        raise ValueError("no labels to infer a charset from")
    symbols = set("".join(labels))
    ordered = [c for c in DEFAULT_CHARSET if c in symbols] + sorted(symbols - set(DEFAULT_CHARSET))
    lengths = [len(s) for s in labels]
    return ModelSpec("".join(ordered), min(lengths), max(lengths))
