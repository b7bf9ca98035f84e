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

The runner fetches addresses a stranger wrote, so (:class:`GuardedDownloader`):

- size: a download stops, with one line, past the smaller of the submission's declared
  ``model.checkpoint.size_bytes`` and the maintainer's ``ROBUST_FRONTIER_MAX_DOWNLOAD_BYTES``
  (default 8 GiB; :mod:`harness.core.settings`); a larger Content-Length is refused before reading. On the
  Hub, the file's size in the Hub's own metadata is checked first;
- addresses: the URL and every redirect must be ``https`` to a host whose every DNS address is
  public (not loopback, private, link-local, shared, multicast, reserved or unspecified); the
  connection goes to the address that was checked (no second lookup). Redirects are followed by
  hand, at most :data:`MAX_REDIRECTS`. A maintainer may allow named ``host:port`` origins that are
  not public (a local mirror; the tests' HTTPS server) with ``ROBUST_FRONTIER_FETCH_ALLOW_HOSTS``:
  an environment variable of the runner, which no submission sets;
- errors: one line with the status code or the kind of refusal; nothing of a response (its body,
  size or hash) is echoed.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from harness.core.errors import HarnessError, one_line
from harness.core.files import sha256_file
from harness.core.settings import settings

CACHE_ENV = "ROBUST_FRONTIER_CACHE"
ALLOW_HOSTS_ENV = "ROBUST_FRONTIER_FETCH_ALLOW_HOSTS"  # host:port origins allowed although not public
DOWNLOAD_TIMEOUT_S = 60  # per network read, not for the whole file
MAX_REDIRECTS = 5
CHUNK = 1 << 20
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
    if cache := settings().cache:  # ROBUST_FRONTIER_CACHE
        return Path(cache).expanduser()
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


def _allowed_origins() -> set[str]:
    raw = settings().fetch_allow_hosts  # ROBUST_FRONTIER_FETCH_ALLOW_HOSTS
    return {o.strip().lower() for o in raw.split(",") if o.strip()}


def _address_problem(ip: str) -> str | None:
    """Why a download may not connect to ``ip`` (None if it is a public address)."""
    import ipaddress

    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return "an unparsable address"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(addr, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    if not addr.is_global:
        return "a non-public address"
    return None


class GuardedDownloader:
    """A pooch downloader (``downloader(url, output_file, pooch)``) that enforces the policy of the
    module docstring: https only, public addresses only (the one checked is the one connected to),
    redirects by hand, and a size cap. Raises a one-line HarnessError naming the submission's URL."""

    def __init__(self, max_bytes: int, cap_source: str, progress: bool, original: str):
        self.max_bytes, self.cap_source, self.progress, self.original = max_bytes, cap_source, progress, original

    def fail(self, why: str) -> HarnessError:
        return HarnessError(f"download of {self.original} {why}", field="model.checkpoint.url")

    def _resolve(self, host: str, port: int) -> str:
        """The address to connect to: every address of ``host`` must be public (or the origin allowed)."""
        import socket

        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise self.fail(f"failed: cannot resolve the host {one_line(host, 200)}")
        addrs = list(dict.fromkeys(info[4][0] for info in infos))
        if not addrs:
            raise self.fail(f"failed: the host {one_line(host, 200)} has no address")
        if f"{host.lower()}:{port}" not in _allowed_origins():
            for a in addrs:
                if (why := _address_problem(a)) is not None:
                    raise self.fail(f"refused: {one_line(host, 200)} resolves to {why}; downloads go to public "
                                    "https addresses only")
        return addrs[0]

    def _get(self, session, url: str):
        """One GET of ``url`` (already checked to be https), connected to the checked address."""
        import requests
        from requests.adapters import HTTPAdapter

        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 443
        ip = self._resolve(host, port)

        class Pinned(HTTPAdapter):  # SNI and certificate checked for the host name, not the address
            def init_poolmanager(self, *args, **kwargs):
                kwargs.update(server_hostname=host, assert_hostname=host)
                super().init_poolmanager(*args, **kwargs)

        netloc = f"[{ip}]" if ":" in ip else ip
        target = parts._replace(netloc=f"{netloc}:{port}").geturl()
        session.mount(f"https://{netloc}:{port}/", Pinned())
        default_port = port == 443
        headers = {"Host": host if default_port else f"{host}:{port}", "Accept-Encoding": "identity"}
        try:
            return session.get(target, headers=headers, stream=True, allow_redirects=False,
                               timeout=DOWNLOAD_TIMEOUT_S)
        except requests.exceptions.SSLError:
            raise self.fail("failed: the TLS certificate of the server could not be verified")
        except requests.exceptions.RequestException as e:
            raise self.fail(f"failed: {type(e).__name__} (connecting to {one_line(host, 200)})")

    def __call__(self, url: str, output_file, pooch=None) -> None:
        import requests

        from harness.core.units import format_size

        current = url
        with requests.Session() as session:
            for _hop in range(MAX_REDIRECTS + 1):
                parts = urlsplit(current)
                if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
                    raise self.fail("refused: a redirect to an address that is not plain https://<host>/... "
                                    "(plain http, credentials or another scheme)")
                resp = self._get(session, current)
                if resp.status_code in (301, 302, 303, 307, 308):
                    location = resp.headers.get("Location")
                    resp.close()
                    if not location:
                        raise self.fail(f"failed: the server answered HTTP {resp.status_code} without a Location")
                    from urllib.parse import urljoin

                    current = urljoin(current, location)
                    continue
                break
            else:
                raise self.fail(f"failed: more than {MAX_REDIRECTS} redirects")
            with resp:
                if resp.status_code != 200:
                    raise self.fail(f"failed: the server answered HTTP {resp.status_code}")
                cap = f"{format_size(self.max_bytes)} ({self.cap_source})"
                length = resp.headers.get("Content-Length")
                if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
                    raise self.fail(f"refused: the server announces a file larger than the cap of {cap}")
                bar = None
                if self.progress:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=int(length) if length and length.strip().isdigit() else None, unit="B",
                               unit_scale=True, desc=self.original.rsplit("/", 1)[-1][:40], leave=True)
                got = 0
                try:
                    with open(output_file, "wb") as out:
                        for chunk in resp.iter_content(CHUNK):
                            got += len(chunk)
                            if got > self.max_bytes:
                                raise self.fail(f"stopped: the file is larger than the cap of {cap}; nothing was "
                                                "cached")
                            out.write(chunk)
                            if bar is not None:
                                bar.update(len(chunk))
                except (requests.exceptions.RequestException, OSError) as e:
                    if isinstance(e, HarnessError):
                        raise
                    raise self.fail(f"was cut short ({type(e).__name__}); nothing was cached, run the fetch again")
                finally:
                    if bar is not None:
                        bar.close()
                if length is not None and length.strip().isdigit() and got < int(length) and \
                        resp.headers.get("Content-Encoding", "identity") == "identity":
                    raise self.fail("was cut short (the server sent fewer bytes than it announced); nothing was "
                                    "cached, run the fetch again")


def download_cap(size_bytes: int | None) -> tuple[int, str]:
    """The size cap of one download and where it comes from: the submission's declared size, if
    smaller than the maintainer's maximum."""
    from harness.core.settings import DOWNLOAD_ENV, max_download_bytes

    cap = max_download_bytes()
    if size_bytes is not None and size_bytes < cap:
        return size_bytes, "the submission's model.checkpoint.size_bytes"
    return cap, f"{DOWNLOAD_ENV}" if settings().max_download_bytes else f"{DOWNLOAD_ENV}'s default"


def _download_https(ref: HostedRef, staging: Path, progress: bool, max_bytes: int, cap_source: str) -> Path:
    import pooch

    pooch.get_logger().setLevel("WARNING")  # it logs the URL and the hash we check ourselves
    downloader = GuardedDownloader(max_bytes, cap_source, progress, ref.url)
    # known_hash=None: we check the hash ourselves below, so that a mismatch can be explained
    # (an HTML page instead of the file) before the bytes are thrown away.
    got = pooch.retrieve(ref.url, known_hash=None, fname=ref.basename, path=staging, downloader=downloader,
                         progressbar=False)
    return Path(got)


def _download_hf(ref: HostedRef, staging: Path, progress: bool, max_bytes: int, cap_source: str) -> Path:
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
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
    from harness.core.units import format_size

    cap = f"{format_size(max_bytes)} ({cap_source})"
    try:
        # the Hub's own record of the file's size, before a byte of it is read
        meta = get_hf_file_metadata(hf_hub_url(ref.repo_id, ref.filename, revision=ref.revision, endpoint=endpoint))
        if meta.size is not None and meta.size > max_bytes:
            raise HarnessError(f"download of {ref.url} refused: the Hub lists the file as larger than the cap of "
                               f"{cap}", field="model.checkpoint.url")
        got = hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, local_dir=staging, endpoint=endpoint)
        if Path(got).stat().st_size > max_bytes:
            raise HarnessError(f"download of {ref.url} stopped: the file is larger than the cap of {cap}; nothing "
                               "was cached", field="model.checkpoint.url")
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
    except HarnessError:
        raise
    except Exception as e:  # noqa: BLE001 - the HTTP client's own errors (a refused connection, TLS): one line
        raise HarnessError(f"download of {ref.url} failed: {type(e).__name__}", field="model.checkpoint.url")
    finally:
        if not progress and not bars_were_off:
            enable_progress_bars()
    return Path(got)


def fetch(url: str, sha256: str, *, cache: str | os.PathLike | None = None, progress: bool = True,
          size_bytes: int | None = None) -> tuple[Path, bool]:
    """Download ``url`` into the cache unless a verified copy is there; returns (path, downloaded).
    ``size_bytes``: the submission's declared size (``model.checkpoint.size_bytes``), a cap below the
    maintainer's (:func:`download_cap`).

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
    max_bytes, cap_source = download_cap(size_bytes)
    root = cache_dir(cache)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="fetch-", dir=root / "tmp"))
    try:
        got = (_download_hf if ref.kind == "hf" else _download_https)(ref, staging, progress, max_bytes, cap_source)
        actual = sha256_file(got)
        if actual != sha256:
            if _looks_like_html(got):
                raise HarnessError(
                    f"{url} returned an HTML page, not the checkpoint (a login, consent or download-warning page?); "
                    "host the file where a plain GET returns its bytes", field="model.checkpoint.url")
            # the download's own hash and size are not echoed: they describe whatever the server sent
            raise HarnessError(f"hash mismatch for {url}: the download's SHA-256 is not the submission's "
                               f"{sha256}; nothing was cached", field="model.checkpoint.sha256")
        final.parent.mkdir(parents=True, exist_ok=True)
        # readable by all, as a checked-out file is: the evaluation worker runs as an unprivileged user
        os.chmod(got, 0o644)
        for d in (final.parent, final.parent.parent, final.parent.parent.parent):
            os.chmod(d, 0o755)
        os.replace(got, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final, True
