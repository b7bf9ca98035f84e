"""Data sources: bundled copies (hash-checked), torchvision-layout folders, custom .npz."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from harness.core.errors import HarnessError
from harness.data.loaders import load_test_data


def _idx(path, arr: np.ndarray):
    """Write an IDX file (the MNIST distribution format), by hand."""
    code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, code, arr.ndim) + b"".join(struct.pack(">I", s) for s in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_torchvision_folder_matches_bundled(repo, tmp_path):
    d = np.load(repo / "harness" / "data" / "mnist_test.npz")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        _idx(raw / f"{split}-images-idx3-ubyte", d["x"][:50])
        _idx(raw / f"{split}-labels-idx1-ubyte", d["y"][:50])
    folder = load_test_data("mnist", 30, data_dir=tmp_path)
    bundled = load_test_data("mnist", 30)
    assert folder.source.startswith("torchvision-folder") and bundled.source.startswith("bundled")
    assert (folder.x == bundled.x).all() and (folder.y == bundled.y).all()
    assert folder.x.shape == (30, 1, 28, 28)


def test_bundled_cifar_is_first_100_in_official_order():
    d = load_test_data("cifar10", None)
    assert d.x.shape == (100, 3, 32, 32)
    assert int(d.y[0]) == 3  # the first CIFAR-10 test image is a cat
    with pytest.raises(HarnessError, match="only 100"):
        load_test_data("cifar10", 101)


def test_custom_npz(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_test_data("custom", 5, custom_path=tmp_path / "d.npz")
    assert d.x.shape == (5, 3, 8, 8) and (d.x.numpy() == x[:5].transpose(0, 3, 1, 2)).all()
    np.savez(tmp_path / "bad.npz", x=x.astype(np.float32), y=y)
    with pytest.raises(HarnessError, match="uint8"):
        load_test_data("custom", 5, custom_path=tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([object()], dtype=object), y=y)
    with pytest.raises(HarnessError, match="plain .npz"):
        load_test_data("custom", 5, custom_path=tmp_path / "obj.npz")
