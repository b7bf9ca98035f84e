"""Writing a record: ``<id>.json`` and its ``<id>.examples.npz`` beside it, atomically."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.core.files import atomic_savez, atomic_write_text
from harness.record.schema import ResultRecord

if TYPE_CHECKING:
    pass


def record_paths(out: Path) -> tuple[Path, Path]:
    """``<id>.json`` and its ``<id>.examples.npz`` beside it."""
    return out, out.with_name(out.name.removesuffix(".json") + ".examples.npz")


def write_record(record: ResultRecord, arrays: dict[str, np.ndarray], out: Path) -> tuple[Path, Path]:
    json_path, npz_path = record_paths(out)
    record.examples_file = npz_path.name
    atomic_savez(npz_path, arrays)
    atomic_write_text(json_path, record.model_dump_json(indent=2) + "\n")
    return json_path, npz_path


