"""Where a submission's checkpoint is: its folder, an allowed package's files, or the local cache of a
hosted file (:mod:`harness.submission.hosted`). Read by loading and by the manifest check."""
from __future__ import annotations

from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.files import confine
from harness.submission.schema import ALLOWED_PACKAGES, Submission


def package_root(package: str) -> Path:
    """The folder of an allowed package's installed files, found from its distribution metadata.

    Nothing is imported (``importlib.util.find_spec`` imports the parents of a dotted name: ``this.x``
    would run ``this``); only the names in :data:`ALLOWED_PACKAGES` are looked up."""
    from importlib import metadata

    if package not in ALLOWED_PACKAGES:
        raise HarnessError(f"only these packages may ship a checkpoint: {', '.join(sorted(ALLOWED_PACKAGES))}",
                           field="model.checkpoint.package")
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise HarnessError(f"package {package!r} is not installed", field="model.checkpoint.package")
    root = Path(str(dist.locate_file(ALLOWED_PACKAGES[package])))
    if not root.is_dir():
        raise HarnessError(f"package {package!r} has no folder {ALLOWED_PACKAGES[package]!r}",
                           field="model.checkpoint.package")
    return root


def resolve_checkpoint(spec: Submission, folder: Path) -> Path:
    ck = spec.model.checkpoint
    if ck.url is not None:  # hosted: only ever read from the local cache; `harness fetch` downloads
        from harness.submission.hosted import cached_checkpoint

        return cached_checkpoint(ck.url, ck.sha256, fetch_hint=f"harness fetch {folder / 'submission.yaml'}")
    assert ck.path is not None
    if ck.package is None:
        return confine(folder, ck.path, field="model.checkpoint.path")
    return confine(package_root(ck.package), ck.path, field="model.checkpoint.path")
