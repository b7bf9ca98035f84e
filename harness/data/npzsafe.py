"""Reading ``.npz`` files that strangers wrote, without trusting what they declare.

``np.load(..., allow_pickle=False)`` already refuses object arrays (no pickle runs), but it allocates
whatever shape an array's header declares before reading a byte of data: a 15 KB file whose header
says 2500x2500 (or 10^12) elements costs that much memory, and a 2 MB zip of zeros really expands
to 2 GB. :func:`read_npz` reads every member's header first (a few hundred bytes, decompressed on
their own), refuses object, structured and non-numeric dtypes, and checks each array's decompressed
size (shape x itemsize) before anything is allocated:

- the total against the caller's bound and against half of the memory available now
  (:func:`available_memory`: MemAvailable, and the cgroup's limit where there is one);
- against the zip's own declared uncompressed size of the member (a header that claims more data
  than the member holds is refused, not allocated and left to come up short);
- against the member's compressed size: an array above :data:`BOMB_FLOOR` bytes compressed more than
  :data:`MAX_RATIO`:1 is a zip bomb (real image data compresses a few times at most).

It lets the caller refuse a name or a shape (``check``), and only then reads exactly the declared
number of bytes into memory that grows as bytes arrive. Any malformed zip or header is one
:class:`~harness.core.errors.HarnessError` line.

Hand-written over ``numpy.lib.format``'s public header readers because numpy has no "read the
header, then decide" entry point for members of an ``.npz``.
"""
from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
from numpy.lib import format as npformat

from harness.core.errors import HarnessError, one_line
from harness.core.files import open_confined

#: (name, shape, dtype) -> None if acceptable, else the reason for refusing it
Check = Callable[[str, tuple[int, ...], np.dtype], "str | None"]

NAME = re.compile(r"[A-Za-z0-9_.+-]{1,100}")
#: an array larger than this (decompressed) may not be compressed more than MAX_RATIO:1
BOMB_FLOOR = 16 << 20
MAX_RATIO = 200
#: the share of the available memory the arrays of one file may take
MEMORY_SHARE = 0.5


def available_memory() -> int | None:
    """Bytes of memory available to this process now (Linux: MemAvailable, within the cgroup v2
    limit if one is set), or None where unknown."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        cg = Path("/sys/fs/cgroup")
        limit = (cg / "memory.max").read_text().strip()
        if limit.isdigit():
            free = int(limit) - int((cg / "memory.current").read_text().strip())
            avail = free if avail is None else min(avail, free)
    except (OSError, ValueError):
        pass
    return avail


def _header(f, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = npformat.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npformat.read_array_header_1_0(f, max_header_size=10_000)
    elif version == (2, 0):
        shape, fortran, dtype = npformat.read_array_header_2_0(f, max_header_size=10_000)
    else:
        raise ValueError(f"array {name}: unsupported .npy format version {version}")
    return tuple(int(d) for d in shape), bool(fortran), np.dtype(dtype)


def read_npz(
    path: str | Path,
    *,
    max_file_bytes: int,
    max_total_bytes: int,
    max_arrays: int = 256,
    check: Check | None = None,
    names: tuple[str, ...] | None = None,
    what: str = ".npz",
) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` (only those in ``names``, if given; others are not
    read), after checking all headers (see the module docstring)."""
    path = Path(path)
    where = f"{path}: {what}"
    avail = available_memory()
    bound, why_bound = max_total_bytes, ""
    if avail is not None and int(avail * MEMORY_SHARE) < bound:
        bound, why_bound = max(int(avail * MEMORY_SHARE), 0), f" ({MEMORY_SHARE:.0%} of the memory available now)"
    with open_confined(path, max_bytes=max_file_bytes, what=what) as fh:
        try:
            # numpy decides by these first bytes whether a file is an .npz, and treats anything else
            # as a pickle: zipfile alone would accept a zip behind other bytes that np.load reads as one
            if fh.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
                raise HarnessError(f"{where}: not an .npz (a zip archive): wrong first bytes")
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                infos = zf.infolist()
                if len(infos) > max_arrays:
                    raise HarnessError(f"{where}: holds {len(infos)} members, more than {max_arrays}")
                headers: list[tuple[zipfile.ZipInfo, str, tuple[int, ...], bool, np.dtype, int]] = []
                seen: set[str] = set()
                total = 0
                for info in infos:
                    name = info.filename.removesuffix(".npy")
                    if not info.filename.endswith(".npy") or not NAME.fullmatch(name):
                        raise HarnessError(f"{where}: member {info.filename[:120]!r} is not a plainly named .npy array")
                    if name in seen:
                        raise HarnessError(f"{where}: array {name} appears twice")
                    seen.add(name)
                    if names is not None and name not in names:
                        continue
                    with zf.open(info) as f:
                        shape, fortran, dtype = _header(f, name)
                        header_len = f.tell()
                    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None \
                            or dtype.kind not in "biuf":
                        raise HarnessError(f"{where}: array {name} has dtype {str(dtype)[:60]}; only an array of "
                                           "numbers "
                                           "and booleans (a plain .npz) is read: no object arrays, no pickles")
                    if len(shape) > 8 or any(d < 0 for d in shape):
                        raise HarnessError(f"{where}: array {name} has an invalid shape {shape}")
                    nbytes = math.prod(shape) * dtype.itemsize
                    total += nbytes
                    if total > bound:
                        raise HarnessError(f"{where}: its arrays declare more than {bound} bytes{why_bound} "
                                           f"(array {name} has shape {shape[:8]})")
                    if info.file_size != header_len + nbytes:
                        raise HarnessError(f"{where}: array {name} declares {nbytes} bytes of data (shape "
                                           f"{shape[:8]}) but its zip member holds {info.file_size - header_len}")
                    if nbytes > BOMB_FLOOR and info.compress_size * MAX_RATIO < info.file_size:
                        raise HarnessError(f"{where}: array {name} expands from {info.compress_size} to {nbytes} "
                                           f"bytes, more than {MAX_RATIO}:1 (a zip bomb?); not decompressed")
                    if check is not None and (why := check(name, shape, dtype)):
                        raise HarnessError(f"{where}: array {name}: {why}")
                    headers.append((info, name, shape, fortran, dtype, nbytes))
                arrays: dict[str, np.ndarray] = {}
                for info, name, shape, fortran, dtype, nbytes in headers:
                    # the declared size, bounded above; np.empty leaves the pages untouched, so memory
                    # grows only as data arrives (a bytearray would zero, and so commit, all of it)
                    buf = np.empty(nbytes, dtype=np.uint8)
                    view, got = memoryview(buf), 0
                    with zf.open(info) as f:
                        _header(f, name)
                        while got < nbytes and (r := f.readinto(view[got:])):
                            got += r
                    if got != nbytes:
                        raise HarnessError(f"{where}: array {name} is truncated ({got} of {nbytes} bytes)")
                    arrays[name] = buf.view(dtype).reshape(shape, order="F" if fortran else "C")
                return arrays
        except HarnessError:
            raise
        except Exception as e:  # zipfile, zlib, numpy header parsing: any malformed input is one line
            msg = one_line(e, 200)
            raise HarnessError(f"{where}: not a readable .npz: {type(e).__name__}: {msg}")
