"""Test data: the first N test points in the official order, kept as uint8 and turned into float
in [0, 1] on demand.

Sources, in order of precedence:
- ``dataset: custom``: an ``.npz`` inside the submission folder (``x`` uint8 N,H,W or N,H,W,C; ``y``),
  read with ``allow_pickle=False``;
- ``--data-dir DIR``: a local copy in torchvision's folder layout (``DIR/MNIST/raw/...``,
  ``DIR/cifar-10-batches-py``, ``DIR/cifar-100-python``), read by torchvision with ``download=False``;
- the copies bundled in ``harness/data`` (the full MNIST test set, the first 100 CIFAR-10 test images).

Nothing here ever downloads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import HarnessError
from .files import sha256_file

BUNDLED_DIR = Path(__file__).parent / "data"
BUNDLED = {
    "mnist": ("mnist_test.npz", "3ba302235efdc3e7e4e84db9ce6a6d6cbc9dd1162d4e79dd0b6a606afc745423"),
    "cifar10": ("cifar10_test_first100.npz", "5af1fab9906bd8f1cf6dc8b900edac6d5ec1ddeada0b214046cef87405ee2eb0"),
}
NUM_CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100}
CLASS_NAMES = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "mnist": [str(i) for i in range(10)],
}


@dataclass
class EvalData:
    """N test points: ``x`` uint8 (N, C, H, W), ``y`` int64 (N,), ``index`` positions in the test set."""

    x: torch.Tensor
    y: torch.Tensor
    index: np.ndarray
    source: str
    dataset: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def floats(self, idx: np.ndarray | slice | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        x = self.x if idx is None else self.x[idx]
        return x.to(device=device, dtype=torch.float32).div_(255.0)

    def labels(self, idx: np.ndarray | slice | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        y = self.y if idx is None else self.y[idx]
        return y.to(device)


def _to_nchw(x: np.ndarray, what: str) -> torch.Tensor:
    if x.dtype != np.uint8:
        raise HarnessError(f"{what}: images must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    else:
        raise HarnessError(f"{what}: images must have shape (N,H,W) or (N,H,W,C), got {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x))


#: bounds on an image .npz (a custom data set, --train-data): file size, and bytes its arrays declare
MAX_DATA_FILE_BYTES = 4 << 30
MAX_DATA_ARRAY_BYTES = 8 << 30
MAX_LABEL = 100_000


def _data_check(name: str, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    if name == "x":
        if dtype != np.uint8 or len(shape) not in (3, 4):
            return f"images must be uint8 of shape (N,H,W) or (N,H,W,C), got {dtype} {shape[:8]}"
        if not (1 <= shape[1] <= 4096 and 1 <= shape[2] <= 4096 and (len(shape) == 3 or 1 <= shape[3] <= 4)):
            return f"images of shape {shape[1:]} are outside (1..4096, 1..4096, 1..4 channels)"
    elif dtype.kind not in "iu" or len(shape) != 1:
        return f"labels must be integers of shape (N,), got {dtype} {shape[:8]}"
    return None


def _from_npz(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` of an .npz, read by :func:`harness.npzsafe.read_npz` (no pickles, shapes and
    sizes checked from the headers before anything is allocated)."""
    from .npzsafe import read_npz

    try:
        d = read_npz(path, max_file_bytes=MAX_DATA_FILE_BYTES, max_total_bytes=MAX_DATA_ARRAY_BYTES,
                     check=_data_check, names=("x", "y"), what=what)
    except HarnessError as e:
        raise HarnessError(f"{what}: {str(e).removeprefix(f'{path}: {what}: ')}")
    if "x" not in d or "y" not in d:
        raise HarnessError(f"{what}: {path.name} must hold arrays 'x' and 'y'")
    y = d["y"]
    if y.size and (int(y.min()) < 0 or int(y.max()) >= MAX_LABEL):
        raise HarnessError(f"{what}: {path.name}: labels must lie in [0, {MAX_LABEL}), "
                           f"got [{int(y.min())}, {int(y.max())}]")
    return d["x"], y


def _from_torchvision(dataset: str, root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[dataset]
    try:
        ds = cls(root=str(root), train=train, download=False)
    except RuntimeError as e:
        raise HarnessError(f"--data-dir {root}: no {dataset} found in torchvision's layout ({e})")
    x = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    y = np.asarray(ds.targets.numpy() if isinstance(ds.targets, torch.Tensor) else ds.targets)
    return x, y


def load_test_data(
    dataset: str,
    n_examples: int | None,
    *,
    data_dir: str | Path | None = None,
    custom_path: Path | None = None,
) -> EvalData:
    if dataset == "custom":
        if custom_path is None:
            raise HarnessError("dataset_path is required for a custom dataset", field="dataset_path")
        x, y = _from_npz(custom_path, "dataset_path")
        source = f"custom:{custom_path.name}:sha256={sha256_file(custom_path)}"
    elif data_dir is not None:
        x, y = _from_torchvision(dataset, Path(data_dir), train=False)
        source = f"torchvision-folder:{dataset}"
    elif dataset in BUNDLED:
        name, digest = BUNDLED[dataset]
        path = BUNDLED_DIR / name
        if sha256_file(path) != digest:
            raise HarnessError(f"bundled data {path} is corrupted (SHA-256 mismatch)")
        x, y = _from_npz(path, "bundled data")
        source = f"bundled:{name}"
    else:
        raise HarnessError(f"{dataset} is not bundled; pass --data-dir with a local copy in torchvision's layout")

    if len(x) != len(y):
        raise HarnessError(f"{source}: {len(x)} images but {len(y)} labels")
    n_total = len(y)
    n = n_total if n_examples is None else n_examples
    if n > n_total:
        hint = " (only the first 100 CIFAR-10 test images are bundled; use --data-dir)" if dataset == "cifar10" else ""
        raise HarnessError(f"n_examples={n} but {source} has only {n_total} test points{hint}")
    y_t = torch.from_numpy(np.asarray(y[:n]).astype(np.int64))
    return EvalData(_to_nchw(np.asarray(x[:n]), source), y_t, np.arange(n), source, dataset)


def load_train_images(dataset: str, n: int, *, data_dir: str | Path | None = None,
                      npz: str | Path | None = None) -> tuple[torch.Tensor, str] | None:
    """The first ``n`` training images (uint8 NCHW) for diagnostics that compare train and test
    (the local Lipschitz gap), from ``--train-data`` (an .npz with ``x``, ``y``) or the training
    split of ``--data-dir``; None when neither is given (no training data is bundled)."""
    if npz is not None:
        path = Path(npz)
        if not path.is_file():
            raise HarnessError(f"--train-data {path}: no such file")
        x, _ = _from_npz(path, "--train-data")
        source = f"npz:{path.name}"
    elif data_dir is not None and dataset in NUM_CLASSES:
        x, _ = _from_torchvision(dataset, Path(data_dir), train=True)
        source = f"torchvision-folder:{dataset}:train"
    else:
        return None
    return _to_nchw(np.asarray(x[:n]), source), source
