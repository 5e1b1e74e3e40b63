"""Writing files so that a crash or a kill never leaves half of one behind.

Every file the project writes (models, specs, checkpoints, metrics, generated images, the
preprocessing cache, results) goes to a temporary name beside its target and is renamed over
it only when complete: a reader sees the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` when the block succeeds
    and is removed when it fails. The suffix is kept, so writers that choose the format from
    the name (Keras, Pillow) still do; the leading dot keeps it out of folder listings."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """`Path.write_text`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
