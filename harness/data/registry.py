"""The dataset registry: one :class:`DatasetSpec` per dataset, the only place that knows a dataset.

The submission and record schemas (the dataset names), data loading (:mod:`harness.data.loaders`), the
FLOPs estimate (training-set size), the diagnostics (the MNIST separation table), the audit and the
leaderboard (titles, order, test-set size, class names) all read it. Adding a dataset is one
:func:`register` call (or one entry below): its name, title, classes, image shape, the size and the
order of its standard evaluation subset, and the loader that reads it.

This module imports neither torch nor numpy (the leaderboard and ``harness schema`` import it); a
loader is named as ``"module:function"`` and imported only when data is loaded.

A loader is called as ``loader(spec, request)`` with a :class:`LoadRequest` and returns a
:class:`harness.data.loaders.Loaded` (an image source, the labels, and a provenance string); see
:mod:`harness.data.loaders` for the built-in ones.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from harness.core import plugins
from harness.core.errors import HarnessError

# --------------------------------------------------------------------------------------------
# Image preprocessing (resize, crop), applied once while loading, to uint8 images: the attacks and
# the bounds then work in [0, 1] pixel space at the resulting resolution. The vocabulary and the
# definitions are RobustBench's (robustbench/data.py, PREPROCESSINGS, where ``None`` is our "none");
# harness.data.loaders builds them from torchvision's transforms, and a test compares the two.
PREPROCESSINGS: dict[str, str] = {
    "none": "the image as stored (every image must have the same size)",
    "Res256Crop224": "resize the shorter side to 256 (bilinear), center-crop 224x224",
    "Crop288": "center-crop 288x288",
    "Res224": "resize to 224x224 (bilinear)",
    "BicubicRes256Crop224": "resize the shorter side to 256 (bicubic), center-crop 224x224",
}
#: the (height, width) each preprocessing produces; None: the stored size
PREPROCESSING_SIZE: dict[str, tuple[int, int] | None] = {
    "none": None, "Res256Crop224": (224, 224), "Crop288": (288, 288), "Res224": (224, 224),
    "BicubicRes256Crop224": (224, 224),
}


@dataclass(frozen=True)
class Bundled:
    """A copy shipped in ``harness/data``: the file, its SHA-256, and how many test points it holds."""

    file: str
    sha256: str
    n: int


@dataclass(frozen=True)
class LoadRequest:
    """What a loader is asked for: the first ``n`` points of the standard subset (None: all)."""

    n: int | None
    data_dir: Path | None = None
    custom_path: Path | None = None
    preprocessing: str = "none"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    #: number of classes; None: read from the labels (custom data sets)
    num_classes: int | None
    #: (C, H, W) of the stored images; None: decided by the data (custom) or by the preprocessing
    input_shape: tuple[int, int, int] | None
    #: number of points of the standard evaluation subset (the "full" test set of the leaderboard)
    n_test: int | None
    #: ``"module:function"`` or a callable ``(spec, LoadRequest) -> harness.data.loaders.Loaded``; None:
    #: a leaderboard-only dataset (reported rows), which cannot be evaluated here
    loader: str | Callable[..., Any] | None
    #: the standard evaluation subset, in words (the record's provenance names it)
    subset: str = "the first N test points in the official order"
    #: the standard subset as an ordered list of file ids, read on use; None: indices 0..n_test-1
    subset_ids: Callable[[], list[str]] | None = field(default=None, compare=False)
    #: class names (or a function returning them, read on use); None: unnamed (shown as numbers)
    class_names: tuple[str, ...] | Callable[[], list[str]] | None = field(default=None, compare=False)
    bundled: Bundled | None = None
    #: training-set size (one epoch) for the training-FLOPs estimate; None: unknown
    train_size: int | None = None
    #: the torchvision.datasets class that reads a ``--data-dir`` copy (and its training split)
    torchvision: str | None = None
    #: the preprocessings a submission may declare, and the one it gets when it declares none
    preprocessings: tuple[str, ...] = ("none",)
    default_preprocessing: str = "none"
    #: the threat model a submission gets when it declares none, e.g. ("Linf", 4 / 255)
    default_threat_model: tuple[str, float] | None = None
    #: diagnostics: a precomputed exact train/test separation table exists (harness.diagnostics.separation)
    separation_table: bool = False
    #: the test points come from the submission folder (``dataset_path``)
    custom: bool = False
    #: leaderboard ordering of the boards
    order: int = 50

    def names(self) -> list[str] | None:
        n = self.class_names
        return list(n()) if callable(n) else (list(n) if n is not None else None)

    def ids(self) -> list[str] | None:
        return None if self.subset_ids is None else list(self.subset_ids())

    def load(self, request: LoadRequest):
        """The loaded test points (a :class:`harness.data.loaders.Loaded`)."""
        if self.loader is None:
            raise HarnessError(f"dataset {self.name} is listed for the leaderboard only; it cannot be evaluated here")
        fn = self.loader
        if isinstance(fn, str):
            import importlib

            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        return fn(self, request)

    def shape_for(self, preprocessing: str) -> tuple[int, int, int] | None:
        """(C, H, W) of the evaluated images under ``preprocessing``; None: known only from the data."""
        size = PREPROCESSING_SIZE.get(preprocessing)
        if size is None:
            return self.input_shape
        c = self.input_shape[0] if self.input_shape is not None else 3
        return (c, *size)


REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec, *, replace: bool = False) -> DatasetSpec:
    """Add a dataset; everything that reads the registry knows it from then on."""
    if not spec.name.replace("_", "").replace("-", "").isalnum() or spec.name != spec.name.lower():
        raise ValueError(f"dataset names are lower-case letters, digits, '-' and '_', got {spec.name!r}")
    if spec.name in REGISTRY and not replace:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    bad = [p for p in (*spec.preprocessings, spec.default_preprocessing) if p not in PREPROCESSINGS]
    if bad or spec.default_preprocessing not in spec.preprocessings:
        raise ValueError(f"{spec.name}: unknown or undeclared preprocessing {bad or spec.default_preprocessing}")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def _entries() -> dict[str, DatasetSpec]:
    """The registry, after the installed plug-ins (entry-point group ``robust_frontier.datasets``,
    :mod:`harness.core.plugins`) have registered theirs: once per process, on the first lookup."""
    plugins.load("datasets")
    return REGISTRY


def names(*, evaluable: bool = True) -> list[str]:
    """The registered names (in leaderboard order); ``evaluable``: only those the harness can load."""
    return [d.name for d in sorted(_entries().values(), key=lambda d: (d.order, d.name))
            if d.loader is not None or not evaluable]


def get(name: str) -> DatasetSpec:
    try:
        return _entries()[name]
    except KeyError:
        raise HarnessError(f"unknown dataset {str(name)[:60]!r}; known: {', '.join(names())}", field="dataset")


def find(name: str) -> DatasetSpec | None:
    return _entries().get(name)


def title(name: str) -> str:
    d = _entries().get(name)
    return d.title if d is not None else name


def order(name: str) -> int:
    d = _entries().get(name)
    return d.order if d is not None else 99


# --------------------------------------------------------------------------------------------
# Files that installed packages ship, found from their distribution metadata without importing them
# (importing robustbench pulls in torch, timm and pyautoattack).
def package_file(dist_name: str, relpath: str, sha256: str | None = None) -> Path:
    """A file of an installed distribution; with ``sha256``, refused unless its hash matches (the
    standard subset must be the one the leaderboard compares against)."""
    from importlib import metadata

    try:
        path = Path(str(metadata.distribution(dist_name).locate_file(relpath)))
    except metadata.PackageNotFoundError:
        raise HarnessError(f"package {dist_name!r} is not installed (it ships {relpath})")
    if not path.is_file():
        raise HarnessError(f"package {dist_name!r} has no file {relpath}")
    if sha256 is not None:
        from harness.core.files import sha256_file

        if sha256_file(path) != sha256:
            raise HarnessError(f"{path}: SHA-256 mismatch; the installed {dist_name} is not the pinned version's")
    return path


#: RobustBench's standard ImageNet evaluation subset: 5,000 validation images, as ``<wnid>/<file>``
#: in a fixed order (robustbench.loaders reads the same file), and its class index map (the 1,000
#: wnids sorted, as torchvision's ImageFolder numbers the full validation folder)
#: (robustbench==1.1.1, pinned in pyproject.toml; the files are read in place and their hashes checked)
ROBUSTBENCH_IMAGENET_IDS = "robustbench/helper_files/imagenet_test_image_ids.txt"
ROBUSTBENCH_IMAGENET_IDS_SHA256 = "d4121626d07722a0126c35b1563042e46a546f1a05ce705f2cdc635896d58574"
ROBUSTBENCH_IMAGENET_CLASSES = "robustbench/helper_files/imagenet_class_to_id_map.json"
ROBUSTBENCH_IMAGENET_CLASSES_SHA256 = "b1c9c3a901b0910ac844cabe252e7fe4b29b2660a4fbc448cb82f4e7e122b2d5"


@lru_cache(maxsize=1)
def imagenet_ids() -> tuple[str, ...]:
    text = package_file("robustbench", ROBUSTBENCH_IMAGENET_IDS, ROBUSTBENCH_IMAGENET_IDS_SHA256).read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet class wnids in class-index order (RobustBench's map)."""
    mapping = json.loads(package_file("robustbench", ROBUSTBENCH_IMAGENET_CLASSES,
                                        ROBUSTBENCH_IMAGENET_CLASSES_SHA256).read_text())
    wnids = sorted(mapping, key=lambda w: mapping[w])
    if [mapping[w] for w in wnids] != list(range(1000)):
        raise HarnessError(f"{ROBUSTBENCH_IMAGENET_CLASSES}: not a map of 1000 classes to 0..999")
    return tuple(wnids)


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """Readable ImageNet class names: torchvision's list (read as a literal from its source file,
    without importing torch); the wnids when torchvision is not installed."""
    try:
        src = package_file("torchvision", "torchvision/models/_meta.py").read_text()
        for node in ast.parse(src).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_IMAGENET_CATEGORIES"
                                                    for t in node.targets):
                names = ast.literal_eval(node.value)
                if isinstance(names, list) and len(names) == 1000:
                    return tuple(str(n) for n in names)
    except (HarnessError, OSError, SyntaxError, ValueError):
        pass
    return imagenet_wnids()


def tinyimagenet_ids() -> list[str]:
    """TinyImageNet's 10,000 validation images, in file-id order."""
    return [f"val_{i}.JPEG" for i in range(10_000)]


# --------------------------------------------------------------------------------------------
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

register(DatasetSpec(
    name="mnist", title="MNIST", num_classes=10, input_shape=(1, 28, 28), n_test=10_000,
    loader="harness.data.loaders:load_array_dataset", class_names=tuple(str(i) for i in range(10)),
    bundled=Bundled("mnist_test.npz", "3ba302235efdc3e7e4e84db9ce6a6d6cbc9dd1162d4e79dd0b6a606afc745423", 10_000),
    train_size=60_000, torchvision="MNIST", separation_table=True, order=0,
))
register(DatasetSpec(
    name="cifar10", title="CIFAR-10", num_classes=10, input_shape=(3, 32, 32), n_test=10_000,
    loader="harness.data.loaders:load_array_dataset", class_names=CIFAR10_CLASSES,
    bundled=Bundled("cifar10_test_first100.npz", "5af1fab9906bd8f1cf6dc8b900edac6d5ec1ddeada0b214046cef87405ee2eb0",
                    100),
    train_size=50_000, torchvision="CIFAR10", order=1,
))
register(DatasetSpec(
    name="cifar100", title="CIFAR-100", num_classes=100, input_shape=(3, 32, 32), n_test=10_000,
    loader="harness.data.loaders:load_array_dataset", train_size=50_000, torchvision="CIFAR100", order=2,
))
register(DatasetSpec(
    name="tinyimagenet", title="TinyImageNet", num_classes=200, input_shape=(3, 64, 64), n_test=10_000,
    loader="harness.data.loaders:load_tinyimagenet_folder",
    subset="tinyimagenet val images in file-id order (val_0 .. val_9999)", subset_ids=tinyimagenet_ids,
    train_size=100_000, order=3,
))
register(DatasetSpec(
    name="imagenet", title="ImageNet", num_classes=1000, input_shape=None, n_test=5_000,
    loader="harness.data.loaders:load_imagenet_folder",
    subset="robustbench imagenet 5000 ids", subset_ids=imagenet_ids, class_names=imagenet_class_names,
    train_size=1_281_167, preprocessings=tuple(PREPROCESSINGS), default_preprocessing="Res256Crop224",
    default_threat_model=("Linf", 4 / 255), order=4,
))
register(DatasetSpec(
    name="custom", title="Custom", num_classes=None, input_shape=None, n_test=None,
    loader="harness.data.loaders:load_custom_npz", subset="the first N points of the submission's dataset_path",
    custom=True, order=90,
))
