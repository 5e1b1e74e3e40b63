"""Writing files so that a crash or a kill never leaves half of one behind.

Every file the project writes (models, specs, checkpoints, metrics, generated images, the
preprocessing cache, results) goes to a temporary name beside its target and is renamed over
it only when complete: a reader sees the old file or the new one, never a truncated one.

A folder that one process writes into is held with `exclusive_lock`, so that a second
process refuses rather than both writing; the operating system drops the lock when its
holder dies, even by kill -9, so a crashed run never leaves a stale one.
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


class FolderInUseError(RuntimeError):
    """Another live process holds the lock of a folder this one was asked to write into."""


@contextmanager
def exclusive_lock(lock_path: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` for the block, or raise FolderInUseError at once
    naming `what` and the holder's process id; with `wait`, block until the holder is done
    instead. The lock file is left in place: removing it would let a third process lock a
    new file while the second still holds the old one."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            if os.name == "nt":
                import msvcrt

                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderInUseError(f"{what} is in use by another run ({holder}): wait for it to "
                                   "finish or choose another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
