"""Blocks: the unit of work of an evaluation, and the files of the shared state folder.

The N examples are cut into fixed blocks of ``batch_size`` consecutive indices, block b being
``[b * batch_size, min((b + 1) * batch_size, N))``. The cut depends only on N and the batch size
(both part of the run key), never on how many processes run, so a block's result is the same
whichever rank computes it:

- every random draw inside block b comes from :func:`block_seed` ``(seed, b)``, and
  ``block_seed(seed, 0) == seed``: with N <= batch_size the one block is exactly a plain run with
  the submission's seed (AutoAttack's ``run_standard_evaluation`` with ``seed=seed``);
- draws made per example (randomized smoothing's noise) come from
  :func:`harness.certifiers.base.example_seed` ``(seed, index)``.

State folder layout (shared by all ranks; on several nodes it must be on a shared filesystem)::

    <state>/generations/<g>.json            one per run attempt (rank 0 creates it, O_EXCL)
    <state>/<stage>/blocks/<b>.npz, <b>.json  a finished block: arrays, then the JSON (its presence
                                            means done); both written atomically
    <state>/<stage>/blocks/<b>.progress.*   progress inside a block (AutoAttack: finished attacks)
    <state>/<stage>/claims/<g>/<b>          claim of block b in attempt g (O_CREAT|O_EXCL): the
                                            dynamic queue; claims of older attempts are ignored
    <state>/<stage>/shared/<name>.json      a decision made once for the whole job (first writer wins)
    <state>/stages/<stage>.json, .npz       the reduced stage (rank 0's supervisor)
    <state>/errors/<g>/rank<r>.txt          a rank's one-line error in attempt g

Everything here is plain files (no torch), so the supervisor, the workers and the tests share it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import HarnessError
from harness.core.files import atomic_savez, atomic_write_text


def n_blocks(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size) if n > 0 else 0


def unit_count(n: int, batch_size: int, per_example: bool) -> int:
    """How many units of work a stage has (the per-example rule, written only here): a per-example
    stage has one block per ``batch_size`` consecutive examples; any other stage (FLOPs) is one unit
    of work, "block" 0 of 1 spanning every example. Whether a stage is per example is its entry in
    :mod:`harness.stages.registry`."""
    return n_blocks(n, batch_size) if per_example else 1


def block_seed(seed: int, b: int) -> int:
    """The seed of block ``b``: ``seed`` itself for block 0, else 63 bits of SHA-256("seed/b")."""
    if b == 0:
        return int(seed)
    return int.from_bytes(hashlib.sha256(f"{int(seed)}/{int(b)}".encode()).digest()[:8], "big") >> 1


@dataclass
class Block:
    """Block ``index`` of ``count``: examples ``start``..``stop - 1``; ``inputs`` holds the
    per-example arrays of the stages this stage reads, restricted to the block."""

    index: int
    start: int
    stop: int
    count: int
    seed: int
    inputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def last(self) -> bool:
        return self.index == self.count - 1

    def input(self, stage: str, key: str) -> np.ndarray | None:
        """A per-example array of an earlier stage for this block, or None if that stage is not part
        of the run."""
        return self.inputs.get(stage, {}).get(key)


def make_block(n: int, batch_size: int, b: int, seed: int, *, per_example: bool = True) -> Block:
    count = unit_count(n, batch_size, per_example)
    if not 0 <= b < count:
        raise IndexError(f"block {b} of {count}")
    if not per_example:
        return Block(0, 0, n, 1, int(seed))
    return Block(b, b * batch_size, min((b + 1) * batch_size, n), count, block_seed(seed, b))


# ------------------------------------------------------------------------------ the state folder
def _exclusive_create(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists (atomic on POSIX, NFSv3+ included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return True


class StageStore:
    """The files of one stage in the state folder: finished blocks, claims, shared decisions."""

    def __init__(self, state_dir: Path, stage: str):
        self.state_dir = Path(state_dir)
        self.stage = stage
        self.dir = self.state_dir / stage
        self.blocks_dir = self.dir / "blocks"

    # finished blocks ---------------------------------------------------------------------------
    def block_path(self, b: int, suffix: str) -> Path:
        return self.blocks_dir / f"{b}{suffix}"

    def is_done(self, b: int) -> bool:
        return self.block_path(b, ".json").exists()

    def done(self) -> set[int]:
        """Indices of the finished blocks."""
        try:
            names = os.listdir(self.blocks_dir)
        except FileNotFoundError:
            return set()
        out = set()
        for name in names:
            stem = name[:-5] if name.endswith(".json") else None
            if stem is not None and stem.isdigit():
                out.add(int(stem))
        return out

    def save(self, b: int, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Save a finished block: the arrays first, then the JSON whose presence marks it done."""
        atomic_savez(self.block_path(b, ".npz"), arrays)
        atomic_write_text(self.block_path(b, ".json"), json.dumps(meta))

    def load(self, b: int, length: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """A finished block, read as untrusted data (it was written by the worker that ran the
        model): plain JSON, arrays without pickles, per-example arrays of the block's length."""
        try:
            meta = json.loads(self.block_path(b, ".json").read_text())
            if not isinstance(meta, dict):
                raise ValueError("not an object")
            with np.load(self.block_path(b, ".npz"), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 - any unreadable file is one error line
            raise HarnessError(f"block {b} of stage {self.stage} in {self.state_dir} is unreadable "
                               f"({type(e).__name__}); run again with --restart")
        for key, arr in arrays.items():
            if not key.startswith("gallery_") and (arr.ndim < 1 or arr.shape[0] != length):
                raise HarnessError(f"block {b} of stage {self.stage} in {self.state_dir} has {key} of shape "
                                   f"{arr.shape} for {length} examples; run again with --restart")
        return arrays, meta

    # claims: the dynamic queue -------------------------------------------------------------------
    def claim_path(self, generation: int, b: int) -> Path:
        return self.dir / "claims" / str(generation) / str(b)

    def claim(self, generation: int, b: int, rank: int) -> bool:
        """Claim block ``b`` for this attempt; False if another rank of the same attempt has it."""
        return _exclusive_create(self.claim_path(generation, b), f"{rank} {socket.gethostname()} {time.time():.3f}\n")

    def is_claimed(self, generation: int, b: int) -> bool:
        return self.claim_path(generation, b).exists()

    # decisions made once for the whole job -------------------------------------------------------
    def shared_path(self, name: str) -> Path:
        return self.dir / "shared" / f"{name}.json"

    def shared(self, name: str) -> Any:
        """The shared decision ``name``, or None if nobody made it yet."""
        try:
            return json.loads(self.shared_path(name).read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # a writer is between create and write: it will be there in a moment
            time.sleep(0.05)
            return json.loads(self.shared_path(name).read_text())

    def share(self, name: str, value: Any) -> Any:
        """Record ``value`` as the decision ``name`` unless one exists; returns the decision that
        holds (the first writer's). Written to a temporary file and linked into place, so readers
        never see half of it."""
        path = self.shared_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        tmp.write_text(json.dumps(value), encoding="utf-8")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return self.shared(name)


# ---------------------------------------------------------------------- attempts and their errors
def new_generation(state_dir: Path, info: dict[str, Any]) -> int:
    """A fresh attempt number (1, 2, ...): claims made by earlier attempts, whose ranks may have
    died holding them, do not count in this one."""
    d = Path(state_dir) / "generations"
    d.mkdir(parents=True, exist_ok=True)
    while True:
        existing = [int(p.stem) for p in d.glob("*.json") if p.stem.isdigit()]
        g = max(existing, default=0) + 1
        if _exclusive_create(d / f"{g}.json", json.dumps(info)):
            return g


def error_path(state_dir: Path, generation: int, rank: int) -> Path:
    return Path(state_dir) / "errors" / str(generation) / f"rank{rank}.txt"


def write_error(state_dir: Path, generation: int, rank: int, message: str) -> None:
    atomic_write_text(error_path(state_dir, generation, rank), message)


def first_error(state_dir: Path, generation: int, exclude: int | None = None) -> tuple[int, str, float] | None:
    """(rank, message, time) of the first error reported in attempt ``generation`` by a rank other
    than ``exclude``, or None."""
    found = []
    for r, msg in read_errors(state_dir, generation).items():
        if r != exclude:
            try:
                found.append((error_path(state_dir, generation, r).stat().st_mtime, r, msg))
            except OSError:
                pass
    if not found:
        return None
    t, r, msg = min(found)
    return r, msg, t


def read_errors(state_dir: Path, generation: int) -> dict[int, str]:
    """The one-line errors ranks reported in attempt ``generation``, by rank."""
    d = Path(state_dir) / "errors" / str(generation)
    out: dict[int, str] = {}
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith("rank") and name.endswith(".txt") and name[4:-4].isdigit():
            try:
                out[int(name[4:-4])] = (d / name).read_text(encoding="utf-8", errors="replace")[:1000]
            except OSError:
                pass
    return out
