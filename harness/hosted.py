"""Hosted checkpoints: a file on an ``https://`` server or on the Hugging Face Hub, named by a
submission's ``model.checkpoint.url`` with its ``sha256``.

``harness fetch submissions/<id>/submission.yaml`` downloads it once into a local cache; ``harness
eval`` never downloads, it finds the file there or fails with one line naming the fetch command.

Cache layout (content-addressed, so two submissions with the same file share one copy)::

    $ROBUST_FRONTIER_CACHE            (default: $XDG_CACHE_HOME/robust-frontier, or ~/.cache/robust-frontier)
      sha256/<first 2 hex>/<sha256>/<file name from the URL>     verified files only
      tmp/<staging folder>/                                       downloads in progress

A download goes to a fresh staging folder; only after its SHA-256 matches is it renamed into
``sha256/...`` (an atomic rename on the same file system), and the staging folder is removed
whatever happens. So an interrupted, truncated or wrong download never sits in the cache as if it
were valid. The file name keeps the URL's suffix because the loader picks safetensors or
``torch.load(weights_only=True)`` by it.

Downloads use maintained libraries: pooch (over requests, with a tqdm progress bar) for ``https://``,
and huggingface_hub's ``hf_hub_download`` for ``hf://<org>/<repo>/<path/in/repo>@<commit>``
(the revision must be a full 40-hex commit id, so the address cannot move; ``HF_ENDPOINT`` points
it at a mirror). Nothing here is imported by ``harness eval`` except :func:`cached_checkpoint`.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import HarnessError
from .files import sha256_file

CACHE_ENV = "ROBUST_FRONTIER_CACHE"
DOWNLOAD_TIMEOUT_S = 60  # per network read, not for the whole file
_HF_RE = re.compile(r"^hf://(?P<org>[A-Za-z0-9][A-Za-z0-9._-]*)/(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*)/"
                    r"(?P<file>[^@]+)@(?P<rev>[^@/]+)$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class HostedRef:
    """A parsed ``model.checkpoint.url``."""

    url: str
    kind: str  # "https" or "hf"
    repo_id: str | None = None
    filename: str | None = None  # the path inside the Hub repository
    revision: str | None = None

    @property
    def basename(self) -> str:
        """A safe local file name that keeps the remote file's suffix."""
        raw = self.filename if self.kind == "hf" else unquote(urlsplit(self.url).path)
        name = _SAFE_NAME.sub("_", raw.rstrip("/").rsplit("/", 1)[-1]).lstrip(".")[-100:]
        return name or "checkpoint"


def parse_url(url: str) -> HostedRef:
    """Check and parse a hosted checkpoint address; raises ValueError with the reason."""
    if not isinstance(url, str) or url != url.strip() or any(c.isspace() for c in url):
        raise ValueError("must be an address without spaces")
    if url.startswith("hf://"):
        m = _HF_RE.match(url)
        if not m:
            raise ValueError("must look like hf://<org>/<repo>/<file>@<revision>")
        file, rev = m.group("file"), m.group("rev")
        parts = file.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError("the file inside the Hub repository must be a plain relative path")
        if not re.fullmatch(r"[0-9a-f]{40}", rev):
            raise ValueError(f"revision {rev!r} must be a full 40-hex commit id, so that the address cannot move "
                             "(copy it from the file's history page on the Hub)")
        return HostedRef(url, "hf", f"{m.group('org')}/{m.group('repo')}", file, rev)
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ValueError("must start with https:// or hf:// (plain http, file:// and other schemes are refused)")
    if not parts.hostname:
        raise ValueError("has no host name")
    if parts.username or parts.password:
        raise ValueError("must not carry a user name or password")
    if not parts.path or parts.path.endswith("/"):
        raise ValueError("must name a file, not a folder")
    return HostedRef(url, "https")


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robust-frontier"


def cache_path(url: str, sha256: str, cache: str | os.PathLike | None = None) -> Path:
    """Where the verified file lives in the cache (whether or not it is there)."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise HarnessError(f"not a lower-case hex SHA-256: {sha256!r}", field="model.checkpoint.sha256")
    return cache_dir(cache) / "sha256" / sha256[:2] / sha256 / parse_url(url).basename


def cached_checkpoint(url: str, sha256: str, *, fetch_hint: str, cache: str | os.PathLike | None = None) -> Path:
    """The cached file for ``url``, or a one-line error that names the command to fetch it.

    The file's hash is checked by the model loader, which hashes every checkpoint it reads."""
    path = cache_path(url, sha256, cache)
    if not path.is_file() or path.is_symlink():
        raise HarnessError(f"hosted checkpoint {url} is not in the local cache ({cache_dir(cache)}); "
                           f"run `{fetch_hint}` first (evaluation never downloads)", field="model.checkpoint.url")
    return path


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml", b"<!--"))


def _download_https(ref: HostedRef, staging: Path, progress: bool) -> Path:
    import pooch
    import requests

    pooch.get_logger().setLevel("WARNING")  # it logs the URL and the hash we check ourselves
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=DOWNLOAD_TIMEOUT_S)
    try:
        # known_hash=None: we check the hash ourselves below, so that a mismatch can be explained
        # (an HTML page instead of the file) before the bytes are thrown away.
        got = pooch.retrieve(ref.url, known_hash=None, fname=ref.basename, path=staging,
                             downloader=downloader, progressbar=progress)
    except requests.exceptions.HTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        raise HarnessError(f"download of {ref.url} failed: the server answered HTTP {code}",
                           field="model.checkpoint.url")
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as e:
        raise HarnessError(f"download of {ref.url} was cut short (the server sent fewer bytes than it announced): "
                           f"{type(e).__name__}; nothing was cached, run the fetch again", field="model.checkpoint.url")
    except requests.exceptions.RequestException as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise HarnessError(f"download of {ref.url} failed: {reason}", field="model.checkpoint.url")
    return Path(got)


def _download_hf(ref: HostedRef, staging: Path, progress: bool) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if constants.HF_HUB_OFFLINE:
        raise HarnessError(f"cannot download {ref.url}: huggingface_hub is in offline mode (HF_HUB_OFFLINE is set)",
                           field="model.checkpoint.url")
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it at import
    bars_were_off = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        got = hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, local_dir=staging, endpoint=endpoint)
    except OfflineModeIsEnabled:
        raise HarnessError(f"cannot download {ref.url}: huggingface_hub is in offline mode (HF_HUB_OFFLINE is set)",
                           field="model.checkpoint.url")
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: the Hub could not be reached
        raise HarnessError(f"cannot download {ref.url}: the Hugging Face Hub "
                           f"({endpoint or 'huggingface.co'}) could not be reached", field="model.checkpoint.url")
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        what = {RepositoryNotFoundError: "repository", RevisionNotFoundError: "revision",
                EntryNotFoundError: "file"}[next(c for c in (RepositoryNotFoundError, RevisionNotFoundError,
                                                             EntryNotFoundError) if isinstance(e, c))]
        raise HarnessError(f"cannot download {ref.url}: the Hub has no such {what} (or it is private or gated)",
                           field="model.checkpoint.url")
    except HfHubHTTPError as e:
        code = e.response.status_code if getattr(e, "response", None) is not None else "?"
        raise HarnessError(f"download of {ref.url} failed: the Hub answered HTTP {code}", field="model.checkpoint.url")
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise HarnessError(f"download of {ref.url} failed: {reason}", field="model.checkpoint.url")
    finally:
        if not progress and not bars_were_off:
            enable_progress_bars()
    return Path(got)


def fetch(url: str, sha256: str, *, cache: str | os.PathLike | None = None, progress: bool = True) -> tuple[Path, bool]:
    """Download ``url`` into the cache unless a verified copy is there; returns (path, downloaded).

    Raises a one-line HarnessError on any failure, leaving nothing in the cache but verified files."""
    try:
        ref = parse_url(url)
    except ValueError as e:
        raise HarnessError(f"{url!r} {e}", field="model.checkpoint.url")
    final = cache_path(url, sha256, cache)
    if final.is_file() and not final.is_symlink():
        if sha256_file(final) == sha256:
            return final, False
        final.unlink()  # a cached file that no longer matches (disk corruption, tampering): fetch again
    root = cache_dir(cache)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="fetch-", dir=root / "tmp"))
    try:
        got = (_download_hf if ref.kind == "hf" else _download_https)(ref, staging, progress)
        actual = sha256_file(got)
        if actual != sha256:
            if _looks_like_html(got):
                raise HarnessError(
                    f"{url} returned an HTML page, not the checkpoint (a login, consent or download-warning page?); "
                    "host the file where a plain GET returns its bytes", field="model.checkpoint.url")
            raise HarnessError(f"hash mismatch for {url}: the download has sha256 {actual}, the submission "
                               f"says {sha256}; nothing was cached", field="model.checkpoint.sha256")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final, True
