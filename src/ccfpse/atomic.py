"""Files that a reader (or a run killed half-way) never sees half-written: written to a temp file
beside the target, then renamed onto it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_file", "atomic_write_text", "remove_leftovers", "TEMP_PATTERN"]

TEMP_PATTERN = ".*.tmp"  # what atomic_file names its temporary files


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", durable: bool = False, public: bool = True) -> Iterator[IO]:
    """Open ``.NAME.XXXX.tmp`` beside ``path``; when the block ends without an error, rename it
    onto ``path`` (else delete it). ``durable``: fsync the file and the folder, so that the new
    content survives a power cut too. ``public``: mode 0644 (mkstemp makes files private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if public:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        if durable:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def remove_leftovers(folder: str | Path, recursive: bool = False) -> None:
    """Delete the temporary files that ``atomic_file`` writers killed half-way (kill -9, a power
    cut) left in ``folder`` (and below it, if ``recursive``). Call it only while no other process
    writes there."""
    folder = Path(folder)
    for tmp in folder.rglob(TEMP_PATTERN) if recursive else folder.glob(TEMP_PATTERN):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
