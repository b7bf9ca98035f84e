"""File helpers shared by every step: hashing, path confinement, bounded reads of untrusted files
and atomic writes."""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from harness.core.errors import HarnessError, one_line


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def confine(root: Path, relative: str, *, field: str) -> Path:
    """Resolve ``relative`` under ``root`` and refuse anything that leaves it.

    Absolute paths and ``..`` are refused by name; a symlink whose target lies outside ``root``
    is caught by resolving both sides.
    """
    if "\x00" in relative:
        raise HarnessError("path must not contain a NUL byte", field=field)
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise HarnessError(f"path {relative!r} must stay inside {root}", field=field)
    try:
        root_real = root.resolve()
        target = (root / rel).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a name too long
        why = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e, 200)
        raise HarnessError(f"path {relative[:300]!r} cannot be resolved: {why}", field=field)
    if target != root_real and root_real not in target.parents:
        raise HarnessError(f"path {relative!r} escapes {root} (through a symlink)", field=field)
    return target


def open_confined(path: Path, *, max_bytes: int, what: str = "file") -> BinaryIO:
    """Open ``path`` for reading in binary: a regular file of at most ``max_bytes``, not reached
    through a symlink that leaves its folder. One-line :class:`HarnessError` otherwise."""
    try:
        folder = path.parent.resolve()
        if path.is_symlink():
            target = path.resolve()
            if target.parent != folder and folder not in target.parents:
                raise HarnessError(f"{path}: is a symlink to a file outside its folder; refused without reading it")
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except HarnessError:
        raise
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such file")
    except (OSError, RuntimeError, ValueError) as e:  # loops, names too long, NUL bytes, permissions
        raise HarnessError(f"{str(path)[:300]}: cannot read: {_os_reason(e)}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HarnessError(f"{path}: not a regular file")
        if st.st_size > max_bytes:
            raise HarnessError(f"{path}: {what} of {st.st_size} bytes is larger than the limit of {max_bytes}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes_confined(path: Path, *, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of ``path``, under the rules of :func:`open_confined`."""
    with open_confined(path, max_bytes=max_bytes, what=what) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise HarnessError(f"{path}: cannot read: {_os_reason(e)}")
    if len(data) > max_bytes:
        raise HarnessError(f"{path}: {what} is larger than the limit of {max_bytes} bytes")
    return data


def _os_reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return one_line(e, 200) or type(e).__name__


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A reader sees either the old file or the whole new one, never half of it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # readable by all, as a file written with open() is (mkstemp makes 0600): the evaluation
        # worker, an unprivileged user when the harness runs as root, reads the stages written here
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savez(path: str | os.PathLike, arrays: dict[str, Any]) -> None:
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
