"""Test data: the first N points of a dataset's standard evaluation subset, in its order, kept as
uint8 and turned into float in [0, 1] on demand.

What a dataset is (classes, shape, subset, loader) lives in the registry, :mod:`harness.data.registry`.
The loaders here:

- :func:`load_array_dataset` (MNIST, CIFAR): ``--data-dir DIR``, a local copy in torchvision's folder
  layout (``DIR/MNIST/raw/...``, ``DIR/cifar-10-batches-py``, ``DIR/cifar-100-python``) read by
  torchvision with ``download=False``; else the copy bundled in ``harness/data`` (hash-checked);
- :func:`load_custom_npz` (``dataset: custom``): an ``.npz`` inside the submission folder (``x``
  uint8 N,H,W or N,H,W,C; ``y``), read without pickles;
- :func:`load_imagenet_folder`: RobustBench's 5,000 ImageNet validation images, in its order, from
  ``DIR/val/<wnid>/<file>.JPEG`` (torchvision's ImageNet / ImageFolder layout; DIR may be the
  ``val`` folder itself);
- :func:`load_tinyimagenet_folder`: TinyImageNet's 10,000 validation images, ``DIR/val/images/val_N.JPEG``
  labelled by ``DIR/val/val_annotations.txt``, classes numbered in the sorted order of ``DIR/wnids.txt``
  (as torchvision's ImageFolder numbers the ``train`` folders).

Image files are decoded lazily (:class:`FileImages`): only the points a stage asks for, resized and
cropped once by the submission's declared preprocessing (RobustBench's vocabulary, see
:data:`harness.data.registry.PREPROCESSINGS`) and kept as uint8, with at most one block cached, so
memory does not grow with N. Nothing here ever downloads.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.core.errors import HarnessError, one_line
from harness.core.files import sha256_file
from harness.data import registry as datasets
from harness.data.registry import DatasetSpec, LoadRequest

BUNDLED_DIR = Path(__file__).parent  # the bundled files sit beside this module, in harness/data/


class ArrayImages:
    """Images held in memory: a uint8 (N, C, H, W) tensor (the small datasets)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def get(self, idx: np.ndarray | slice) -> torch.Tensor:
        return self.x[idx]

    def head(self, n: int) -> "ArrayImages":
        return ArrayImages(self.x[:n])


def _positions(idx, n: int) -> np.ndarray:
    if idx is None:
        return np.arange(n)
    if isinstance(idx, slice):
        return np.arange(n)[idx]
    if isinstance(idx, torch.Tensor):
        idx = idx.cpu().numpy()
    a = np.asarray(idx)
    if a.dtype == bool:
        return np.flatnonzero(a)
    a = a.astype(np.int64).reshape(-1)
    if a.size and (a.min() < -n or a.max() >= n):
        raise IndexError(f"index out of range for {n} points")
    return np.where(a < 0, a + n, a)


class FileImages:
    """Image files decoded on demand: ``get(idx)`` opens the requested files with PIL, converts them
    to RGB, applies the preprocessing (torchvision's PIL transforms, as RobustBench does before its
    ``ToTensor``, so the uint8 result divided by 255 is exactly RobustBench's input) and returns
    uint8 (k, 3, H, W). The last contiguous range decoded (one block, at most ``cache_images``
    images) is kept, so the stages that read the same block one after the other decode it once."""

    def __init__(self, paths: list[Path], preprocessing: str, *, shape: tuple[int, int, int] | None = None,
                 cache_images: int = 1024):
        self.paths = list(paths)
        self.preprocessing = preprocessing
        self._transform = transform_for(preprocessing)
        self._shape = shape
        self.cache_images = cache_images
        self._cache: tuple[int, int, torch.Tensor] | None = None
        self.decoded = 0  # images decoded so far (tests check the cache)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int]:
        if self._shape is None:
            if not self.paths:
                raise HarnessError("no images to read the size of")
            self._shape = tuple(self._decode(0).shape)  # type: ignore[assignment]
        return self._shape  # type: ignore[return-value]

    def head(self, n: int) -> "FileImages":
        return FileImages(self.paths[:n], self.preprocessing, shape=self._shape, cache_images=self.cache_images)

    def _decode(self, i: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path = self.paths[i]
        try:
            with Image.open(path) as im:
                img = self._transform(im.convert("RGB"))
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise HarnessError(f"{path}: cannot decode the image: {type(e).__name__}: {one_line(e, 160)}")
        arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
        self.decoded += 1
        if self._shape is not None and arr.shape != tuple(self._shape):
            raise HarnessError(f"{path}: after preprocessing {self.preprocessing} the image has shape "
                               f"{arr.shape}, expected {tuple(self._shape)} (declare a resize/crop preprocessing)")
        return arr

    def _decode_many(self, pos: np.ndarray) -> torch.Tensor:
        shape = self.shape
        out = torch.empty((len(pos), *shape), dtype=torch.uint8)
        for k, i in enumerate(pos):
            out[k] = torch.from_numpy(self._decode(int(i)))
        return out

    def get(self, idx) -> torch.Tensor:
        pos = _positions(idx, len(self.paths))
        if pos.size == 0:
            return torch.empty((0, *self.shape), dtype=torch.uint8)
        lo, hi = int(pos.min()), int(pos.max()) + 1
        if self._cache is not None and self._cache[0] <= lo and hi <= self._cache[1]:
            return self._cache[2][torch.from_numpy(pos - self._cache[0])]
        if hi - lo > self.cache_images:  # a scattered or huge request: decode just those, keep nothing
            return self._decode_many(pos)
        self._cache = None  # drop the old block before decoding the new one
        block = self._decode_many(np.arange(lo, hi))
        self._cache = (lo, hi, block)
        return block[torch.from_numpy(pos - lo)]


def transform_for(preprocessing: str):
    """The PIL -> PIL transform of a named preprocessing: RobustBench's definitions
    (robustbench/data.py PREPROCESSINGS) without the final ``ToTensor``, so the result stays uint8."""
    import torchvision.transforms as T

    if preprocessing == "none":
        return lambda im: im
    steps = {
        "Res256Crop224": [T.Resize(256), T.CenterCrop(224)],
        "Crop288": [T.CenterCrop(288)],
        "Res224": [T.Resize([224, 224])],
        "BicubicRes256Crop224": [T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)],
    }
    if preprocessing not in steps:
        raise HarnessError(f"unknown preprocessing {preprocessing!r}; known: {', '.join(datasets.PREPROCESSINGS)}")
    return T.Compose(steps[preprocessing])


@dataclass
class Loaded:
    """What a loader returns: the images (at least the first ``request.n`` of the subset), their
    labels, the number of points the source holds, and the provenance string."""

    images: ArrayImages | FileImages
    labels: np.ndarray
    source: str
    available: int


@dataclass
class EvalData:
    """N test points: ``images`` (uint8 (C, H, W) each, in memory or decoded on demand), ``y`` int64
    (N,) in memory, ``index`` positions in the dataset's standard evaluation subset."""

    images: ArrayImages | FileImages
    y: torch.Tensor
    index: np.ndarray
    source: str
    dataset: str
    preprocessing: str = "none"

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.images.shape

    @property
    def x(self) -> torch.Tensor:
        """Every image, uint8 (N, C, H, W): for small in-memory datasets and tests; stages use
        :meth:`uint8` / :meth:`floats` on a block."""
        return self.images.get(slice(None))

    def uint8(self, idx: np.ndarray | slice | None = None) -> torch.Tensor:
        return self.images.get(slice(None) if idx is None else idx)

    def floats(self, idx: np.ndarray | slice | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        return self.uint8(idx).to(device=device, dtype=torch.float32).div_(255.0)

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
    """``x`` and ``y`` of an .npz, read by :func:`harness.data.npzsafe.read_npz` (no pickles, shapes and
    sizes checked from the headers before anything is allocated)."""
    from harness.data.npzsafe import read_npz

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


def _from_torchvision(spec: DatasetSpec, root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.torchvision or "", None)
    if cls is None:
        raise HarnessError(f"--data-dir: dataset {spec.name} has no torchvision reader")
    try:
        ds = cls(root=str(root), train=train, download=False)
    except RuntimeError as e:
        raise HarnessError(f"--data-dir {root}: no {spec.name} found in torchvision's layout ({e})")
    x = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    y = np.asarray(ds.targets.numpy() if isinstance(ds.targets, torch.Tensor) else ds.targets)
    return x, y


def _check_labels(y: np.ndarray, spec: DatasetSpec, source: str) -> None:
    if spec.num_classes is not None and y.size and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
        raise HarnessError(f"{source}: labels must lie in [0, {spec.num_classes}), got [{int(y.min())}, "
                           f"{int(y.max())}]")


def _arrays(x: np.ndarray, y: np.ndarray, source: str) -> Loaded:
    if len(x) != len(y):
        raise HarnessError(f"{source}: {len(x)} images but {len(y)} labels")
    return Loaded(ArrayImages(_to_nchw(np.asarray(x), source)), np.asarray(y), source, len(y))


def load_array_dataset(spec: DatasetSpec, req: LoadRequest) -> Loaded:
    """MNIST, CIFAR-10/100: a torchvision-layout ``--data-dir``, else the bundled copy."""
    if req.data_dir is not None:
        x, y = _from_torchvision(spec, Path(req.data_dir), train=False)
        source = f"torchvision-folder:{spec.name}"
    elif spec.bundled is not None:
        path = BUNDLED_DIR / spec.bundled.file
        if sha256_file(path) != spec.bundled.sha256:
            raise HarnessError(f"bundled data {path} is corrupted (SHA-256 mismatch)")
        x, y = _from_npz(path, "bundled data")
        source = f"bundled:{spec.bundled.file}"
    else:
        raise HarnessError(f"{spec.name} is not bundled; pass --data-dir with a local copy in torchvision's layout")
    if spec.input_shape is not None and tuple(_to_nchw(x[:1], source).shape[1:]) != spec.input_shape:
        raise HarnessError(f"{source}: images of shape {x.shape[1:]}, expected {spec.input_shape} for {spec.name}")
    _check_labels(np.asarray(y), spec, source)
    return _arrays(x, y, source)


def load_custom_npz(spec: DatasetSpec, req: LoadRequest) -> Loaded:
    if req.custom_path is None:
        raise HarnessError("dataset_path is required for a custom dataset", field="dataset_path")
    x, y = _from_npz(req.custom_path, "dataset_path")
    return _arrays(x, y, f"custom:{req.custom_path.name}:sha256={sha256_file(req.custom_path)}")


def _subset_source(spec: DatasetSpec, n: int, preprocessing: str) -> str:
    return f"{spec.name}-folder:{spec.subset}, first {n}; preprocessing {preprocessing}"


_WNID = re.compile(r"n[0-9]{8}")
_FILE_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def _need_dir(req: LoadRequest, spec: DatasetSpec, layout: str) -> Path:
    if req.data_dir is None:
        raise HarnessError(f"{spec.name} is not bundled; pass --data-dir with a local copy ({layout})")
    root = Path(req.data_dir)
    if not root.is_dir():
        raise HarnessError(f"--data-dir {root}: no such folder")
    return root


def _take(ids: list[str], req: LoadRequest, spec: DatasetSpec) -> list[str]:
    if req.n is not None and req.n > len(ids):
        raise HarnessError(f"n_examples={req.n} but {spec.name}'s standard subset ({spec.subset}) "
                           f"has only {len(ids)} test points")
    return ids if req.n is None else ids[:req.n]


def _files(folder: Path, ids: list[str], spec: DatasetSpec, root: Path) -> list[Path]:
    paths = [folder / i for i in ids]
    missing = [i for i, p in zip(ids, paths, strict=False) if not p.is_file()]
    if missing:
        raise HarnessError(f"--data-dir {root}: {len(missing)} of the first {len(ids)} {spec.name} test images are "
                           f"missing, the first {missing[0]} (expected {folder / missing[0]})")
    return paths


def load_imagenet_folder(spec: DatasetSpec, req: LoadRequest) -> Loaded:
    """RobustBench's ImageNet subset (:func:`harness.data.registry.imagenet_ids`: ``<wnid>/<file>`` in
    order) from ``DIR/val`` or from DIR itself when it is the val folder (its sub-folders are wnids
    and it has no ``val`` folder). Labels: the wnid's index among the 1,000 sorted wnids
    (RobustBench's map, the same as torchvision's ImageFolder on the full val folder)."""
    layout = "DIR/val/<wnid>/<file>.JPEG, torchvision's ImageNet layout"
    root = _need_dir(req, spec, layout)
    if (root / "val").is_dir():
        val = root / "val"
    elif any(_WNID.fullmatch(p.name) and p.is_dir() for p in root.iterdir()):
        val = root
    else:
        raise HarnessError(f"--data-dir {root}: no ImageNet validation folder (expected {layout})")
    ids = spec.ids() or []
    if spec.n_test is not None and len(ids) != spec.n_test:
        raise HarnessError(f"{spec.name}: the standard subset lists {len(ids)} images, expected {spec.n_test}")
    wnid_index = {w: i for i, w in enumerate(datasets.imagenet_wnids())}
    for i in ids:
        w, _, f = i.partition("/")
        if w not in wnid_index or not _FILE_ID.fullmatch(f):
            raise HarnessError(f"{spec.name}: malformed image id {i[:80]!r} in the standard subset")
    take = _take(ids, req, spec)
    paths = _files(val, take, spec, root)
    labels = np.array([wnid_index[i.split("/", 1)[0]] for i in take], dtype=np.int64)
    images = FileImages(paths, req.preprocessing, shape=spec.shape_for(req.preprocessing))
    return Loaded(images, labels, _subset_source(spec, len(take), req.preprocessing), len(ids))


MAX_ANNOTATION_BYTES = 16 << 20


def load_tinyimagenet_folder(spec: DatasetSpec, req: LoadRequest) -> Loaded:
    """TinyImageNet's validation set in file-id order (val_0.JPEG, val_1.JPEG, ...), from the
    official layout ``DIR/wnids.txt``, ``DIR/val/val_annotations.txt`` (``file<TAB>wnid<TAB>box``)
    and ``DIR/val/images/``; DIR may also be the ``val`` folder. Class index: the wnid's position
    in the sorted ``wnids.txt`` (torchvision's ImageFolder order on ``DIR/train``)."""
    layout = "DIR/wnids.txt, DIR/val/val_annotations.txt, DIR/val/images/val_N.JPEG"
    root = _need_dir(req, spec, layout)
    if (root / "val" / "val_annotations.txt").is_file():
        top = root
    elif (root / "val_annotations.txt").is_file() and (root.parent / "wnids.txt").is_file():
        top = root.parent
    else:
        raise HarnessError(f"--data-dir {root}: no TinyImageNet validation folder (expected {layout})")

    def text(path: Path) -> list[str]:
        if not path.is_file():
            raise HarnessError(f"--data-dir {root}: {path.name} is missing (expected {layout})")
        if path.stat().st_size > MAX_ANNOTATION_BYTES:
            raise HarnessError(f"{path}: larger than {MAX_ANNOTATION_BYTES >> 20} MiB")
        return [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]

    wnids = sorted(set(text(top / "wnids.txt")))
    if spec.num_classes is not None and len(wnids) != spec.num_classes:
        raise HarnessError(f"{top / 'wnids.txt'}: {len(wnids)} classes, expected {spec.num_classes}")
    index = {w: i for i, w in enumerate(wnids)}
    label_of: dict[str, int] = {}
    for line in text(top / "val" / "val_annotations.txt"):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise HarnessError(f"{top / 'val' / 'val_annotations.txt'}: bad line {line[:80]!r} "
                               "(expected file, a wnid of wnids.txt, box)")
        label_of[parts[0]] = index[parts[1]]
    ids = spec.ids() or []
    take = _take(ids, req, spec)
    unlabelled = [i for i in take if i not in label_of]
    if unlabelled:
        raise HarnessError(f"{top / 'val' / 'val_annotations.txt'}: no label for {unlabelled[0]}")
    paths = _files(top / "val" / "images", take, spec, root)
    labels = np.array([label_of[i] for i in take], dtype=np.int64)
    images = FileImages(paths, req.preprocessing, shape=spec.shape_for(req.preprocessing))
    return Loaded(images, labels, _subset_source(spec, len(take), req.preprocessing), len(ids))


def load_test_data(
    dataset: str,
    n_examples: int | None,
    *,
    data_dir: str | Path | None = None,
    custom_path: Path | None = None,
    preprocessing: str | None = None,
) -> EvalData:
    """The first ``n_examples`` (None: all) points of ``dataset``'s standard evaluation subset, read
    by the dataset's registered loader; ``preprocessing``: the submission's declared resize/crop
    (None: the dataset's default)."""
    spec = datasets.get(dataset)
    prep = preprocessing or spec.default_preprocessing
    if prep not in spec.preprocessings:
        raise HarnessError(f"preprocessing {prep!r} is not available for {dataset}; "
                           f"choose one of {', '.join(spec.preprocessings)}", field="model.preprocessing.resize_crop")
    if dataset == "custom" and custom_path is None:
        raise HarnessError("dataset_path is required for a custom dataset", field="dataset_path")
    loaded = spec.load(LoadRequest(n_examples, Path(data_dir) if data_dir is not None else None, custom_path, prep))
    n_total = loaded.available
    n = n_total if n_examples is None else n_examples
    if n > n_total:
        b = spec.bundled
        hint = (f" (only the first {b.n} {spec.title} test images are bundled; use --data-dir)"
                if b is not None and data_dir is None and b.n < (spec.n_test or b.n + 1) else "")
        raise HarnessError(f"n_examples={n} but {loaded.source} has only {n_total} test points{hint}")
    if len(loaded.labels) < n or len(loaded.images) < n:
        raise HarnessError(f"{loaded.source}: the loader returned {len(loaded.labels)} points, {n} asked for")
    y_t = torch.from_numpy(np.asarray(loaded.labels[:n]).astype(np.int64))
    images = loaded.images if len(loaded.images) == n else loaded.images.head(n)
    return EvalData(images, y_t, np.arange(n), loaded.source, dataset, prep)


def num_classes_of(data: EvalData) -> int:
    """The dataset's number of classes (the registry's; for custom data: the largest label + 1)."""
    n = datasets.get(data.dataset).num_classes
    return n if n is not None else int(data.y.max()) + 1 if len(data) else 1


def load_train_images(dataset: str, n: int, *, data_dir: str | Path | None = None,
                      npz: str | Path | None = None) -> tuple[torch.Tensor, str] | None:
    """The first ``n`` training images (uint8 NCHW) for diagnostics that compare train and test
    (the local Lipschitz gap), from ``--train-data`` (an .npz with ``x``, ``y``) or the training
    split of ``--data-dir`` for datasets torchvision reads; None when neither is given (no training
    data is bundled)."""
    spec = datasets.find(dataset)
    if npz is not None:
        path = Path(npz)
        if not path.is_file():
            raise HarnessError(f"--train-data {path}: no such file")
        x, _ = _from_npz(path, "--train-data")
        source = f"npz:{path.name}"
    elif data_dir is not None and spec is not None and spec.torchvision is not None:
        x, _ = _from_torchvision(spec, Path(data_dir), train=True)
        source = f"torchvision-folder:{dataset}:train"
    else:
        return None
    return _to_nchw(np.asarray(x[:n]), source), source
