"""Hosted checkpoints: `harness fetch` against a real local HTTPS server, the cache, and `harness eval`
refusing to download.

Every failure must leave nothing in the cache that could pass for the file, and print one line.
"""
from __future__ import annotations

import hashlib

import pytest
import yaml
from helpers.hosting import FileServer
from helpers.spec import REPO, base_spec

from harness.cli import main
from harness.core.errors import HarnessError
from harness.submission.hosted import CACHE_ENV, cache_path, fetch, parse_url
from harness.submission.load import parse_submission
from harness.submission.schema import Submission

CKPT = (REPO / "submissions" / "mnist-standard" / "model.safetensors").read_bytes()
SHA = hashlib.sha256(CKPT).hexdigest()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(d))
    return d


@pytest.fixture
def server(tmp_path, monkeypatch):
    with FileServer(tmp_path) as srv:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(srv.ca_file))  # requests, so pooch
        monkeypatch.setenv("SSL_CERT_FILE", str(srv.ca_file))  # huggingface_hub's HTTP client
        monkeypatch.setenv("HF_ENDPOINT", srv.base)
        from huggingface_hub.utils import close_session

        close_session()  # huggingface_hub keeps one HTTP client: a fresh one trusts this server's CA
        yield srv


def hosted_submission(root, sub_id: str, url: str, sha: str = SHA):
    folder = root / "submissions" / sub_id
    folder.mkdir(parents=True)
    spec = base_spec(sub_id, sha)
    spec["model"]["checkpoint"] = {"url": url, "sha256": sha}
    path = folder / "submission.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cached_files(cache) -> list:
    """Everything in the cache that is a file: only verified files may be there."""
    return sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------ schema
@pytest.mark.parametrize("url", [
    "https://example.org/models/wrn.safetensors",
    f"hf://some-org/some.repo/sub/dir/model.pt@{COMMIT}",
])
def test_good_addresses_parse(url):
    ref = parse_url(url)
    assert ref.basename in ("wrn.safetensors", "model.pt")
    if ref.kind == "hf":
        assert (ref.repo_id, ref.filename, ref.revision) == ("some-org/some.repo", "sub/dir/model.pt", COMMIT)


@pytest.mark.parametrize("url,why", [
    ("http://example.org/m.pt", "https:// or hf://"),
    ("file:///etc/passwd", "https:// or hf://"),
    ("ftp://example.org/m.pt", "https:// or hf://"),
    ("https://user:pw@example.org/m.pt", "password"),
    ("https://example.org/models/", "not a folder"),
    ("hf://org/repo/model.pt", "hf://<org>/<repo>/<file>@<revision>"),
    ("hf://org/repo/model.pt@main", "40-hex commit"),
    (f"hf://org/repo/../x/model.pt@{COMMIT}", "plain relative path"),
    ("https://example.org/m .pt", "without spaces"),
])
def test_bad_addresses_are_refused(url, why):
    with pytest.raises(ValueError) as e:
        parse_url(url)
    assert why in str(e.value)


def test_local_file_name_is_safe_and_keeps_the_suffix():
    ref = parse_url("https://example.org/a/..%2F..%2Fevil%20name.safetensors?x=1")
    assert "/" not in ref.basename and not ref.basename.startswith(".")
    assert ref.basename.endswith(".safetensors")


@pytest.mark.parametrize("ck,field", [
    ({"path": "m.pt", "url": "https://example.org/m.pt"}, "model.checkpoint.path"),
    ({}, "model.checkpoint.path"),
    ({"url": "https://example.org/m.pt", "package": "pyautoattack"}, "model.checkpoint.package"),
    ({"url": "http://example.org/m.pt"}, "model.checkpoint.url"),
])
def test_schema_wants_exactly_one_of_path_and_url(tmp_path, ck, field):
    spec = base_spec("x", SHA)
    spec["model"]["checkpoint"] = {**ck, "sha256": SHA}
    path = tmp_path / "submission.yaml"
    path.write_text(yaml.safe_dump(spec))
    sub, problems = parse_submission(path)
    assert sub is None and [p.field for p in problems] == [field], problems


def test_schema_names_the_url_and_the_zoo_syntax():
    text = str(Submission.model_json_schema())
    assert "hf://<org>/<repo>/<file>@" in text
    assert "robustbench.zoo:<dataset>/<threat_model>/<name>" in text


# ------------------------------------------------------------------------------------------- fetch
def test_good_file_is_fetched_once_and_eval_finds_it(tmp_path, server, cache, capsys):
    url = server.add("/files/model.safetensors", CKPT)
    yml = hosted_submission(tmp_path, "hosted", url)

    # eval never downloads: one line that names the fetch command
    assert main(["eval", str(yml), "--only", "clean", "--no-progress"]) == 2
    line = one_line_error(capsys)
    assert f"harness fetch {yml}" in line and "not in the local cache" in line
    assert server.hits("/files/model.safetensors") == 0

    assert main(["fetch", str(yml), "--no-progress"]) == 0
    assert "downloaded and verified" in capsys.readouterr().out
    assert cached_files(cache) == [cache_path(url, SHA).relative_to(cache)]
    assert cache_path(url, SHA).read_bytes() == CKPT
    assert str(cache_path(url, SHA).relative_to(cache)).startswith(f"sha256/{SHA[:2]}/{SHA}/")

    assert main(["fetch", str(yml), "--no-progress"]) == 0  # cached: no second download
    assert "already in the cache" in capsys.readouterr().out
    assert server.hits("/files/model.safetensors") == 1

    out = tmp_path / "rec.json"
    assert main(["eval", str(yml), "--only", "clean", "--no-progress", "--out", str(out)]) == 0
    assert '"checkpoint_sha256": "' + SHA in out.read_text()


@pytest.mark.parametrize("mode,body,expect", [
    ("ok", CKPT + b"\0", "hash mismatch"),  # wrong hash
    ("truncate", CKPT, "cut short"),  # Content-Length promised, half sent, connection closed
    ("html", CKPT, "returned an HTML page"),  # a sign-in / virus-scan page with status 200
])
def test_bad_downloads_leave_nothing_in_the_cache(tmp_path, server, cache, capsys, mode, body, expect):
    url = server.add(f"/{mode}/model.safetensors", body, mode)
    yml = hosted_submission(tmp_path, "hosted", url)
    assert main(["fetch", str(yml), "--no-progress"]) == 2
    assert expect in one_line_error(capsys)
    assert server.hits(f"/{mode}/model.safetensors") == 1
    assert cached_files(cache) == []  # no partial or wrong file, and the staging folder is gone
    assert main(["eval", str(yml), "--only", "clean", "--no-progress"]) == 2  # still not "in the cache"
    assert "harness fetch" in one_line_error(capsys)


def test_http_error_is_one_line(tmp_path, server, cache, capsys):
    yml = hosted_submission(tmp_path, "hosted", server.base + "/missing/model.pt")
    assert main(["fetch", str(yml), "--no-progress"]) == 2
    assert "HTTP 404" in one_line_error(capsys)
    assert cached_files(cache) == []


def test_a_corrupted_cache_entry_is_refused_by_eval_and_replaced_by_fetch(tmp_path, server, cache, capsys):
    url = server.add("/files/model.safetensors", CKPT)
    yml = hosted_submission(tmp_path, "hosted", url)
    assert main(["fetch", str(yml), "--no-progress"]) == 0
    cached = cache_path(url, SHA)
    cached.write_bytes(CKPT[:-1] + b"\1")
    capsys.readouterr()
    assert main(["eval", str(yml), "--only", "clean", "--no-progress"]) == 2
    assert "hash mismatch" in one_line_error(capsys)
    assert main(["fetch", str(yml), "--no-progress"]) == 0
    assert cached.read_bytes() == CKPT and server.hits("/files/model.safetensors") == 2


def test_hf_file_through_the_hub_api(tmp_path, server, cache):
    """huggingface_hub's own download (HEAD for metadata, then GET), pointed at the local server."""
    url = server.add_hf("org/repo", COMMIT, "weights/model.safetensors", CKPT)
    path, downloaded = fetch(url, SHA, progress=False)
    assert downloaded and path.read_bytes() == CKPT and path.name == "model.safetensors"
    assert cached_files(cache) == [path.relative_to(cache)]  # huggingface_hub's own metadata is not kept


def test_hf_wrong_hash_and_offline(tmp_path, server, cache, monkeypatch):
    url = server.add_hf("org/repo", COMMIT, "model.safetensors", CKPT + b"x")
    with pytest.raises(HarnessError, match="hash mismatch"):
        fetch(url, SHA, progress=False)
    assert cached_files(cache) == []
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HarnessError, match="offline mode"):
        fetch(url, SHA, progress=False)


def test_the_contributing_guide_example_is_a_valid_hosted_submission():
    """The copy-paste submission.yaml of .github/CONTRIBUTING.md parses, names a hosted file on the
    Hub pinned to a commit, and a RobustBench model-zoo architecture; the README links the guide."""
    text = (REPO / ".github" / "CONTRIBUTING.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = Submission.model_validate(yaml.safe_load(block))
    assert spec.model.architecture.startswith("robustbench.zoo:cifar10/Linf/")
    assert parse_url(spec.model.checkpoint.url).kind == "hf" and spec.model.checkpoint.path is None
    readme = (REPO / "README.md").read_text()
    assert ".github/CONTRIBUTING.md" in readme
    assert "robustbench.zoo:<dataset>/<threat_model>/<name>" in readme


# ---------------------------------------------------------------- redirects, addresses and size caps
class _InternalServer:
    """A plain-http server on 127.0.0.1, as an internal service beside the runner would be."""

    SECRET = b"internal metadata: token=s3cr3t"

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hits = self.hits = []
        secret = self.SECRET

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(secret)))
                self.end_headers()
                self.wfile.write(secret)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/latest/meta-data"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _no_trace_of(line: str, body: bytes) -> None:
    assert hashlib.sha256(body).hexdigest() not in line and str(len(body)) not in line
    assert body.decode(errors="replace")[:20] not in line


def test_redirect_from_https_to_plain_http_on_loopback_is_refused(tmp_path, server, cache, capsys):
    """The issue's SSRF: an https checkpoint address that redirects to an internal plain-http
    service. The redirect is not followed, and nothing of the internal answer is printed."""
    with _InternalServer() as internal:
        url = server.add("/r/model.safetensors", internal.url.encode(), mode="redirect")
        yml = hosted_submission(tmp_path, "ssrf", url)
        assert main(["fetch", str(yml), "--no-progress"]) == 2
        line = one_line_error(capsys)
    assert "refused" in line and "redirect" in line and "https" in line, line
    assert internal.hits == [] and server.hits("/r/model.safetensors") == 1
    _no_trace_of(line, _InternalServer.SECRET)
    assert cached_files(cache) == []


def test_redirects_go_only_to_public_or_allowed_https_origins(tmp_path, server, cache):
    good = server.add("/files/model.safetensors", CKPT)
    moved = server.add("/old/model.safetensors", good.encode(), mode="redirect")
    path, downloaded = fetch(moved, SHA, progress=False)  # within the allowed origin: followed
    assert downloaded and path.read_bytes() == CKPT
    elsewhere = f"https://localhost:{server.port}/files/model.safetensors"  # same server, another origin
    sneaky = server.add("/sneaky/model.safetensors", elsewhere.encode(), mode="redirect")
    with pytest.raises(HarnessError, match="refused: localhost resolves to a loopback address"):
        fetch(sneaky, SHA, cache=tmp_path / "other-cache", progress=False)
    loop = server.add("/loop/model.safetensors", server.base.encode() + b"/loop/model.safetensors", mode="redirect")
    with pytest.raises(HarnessError, match="more than 5 redirects"):
        fetch(loop, SHA, cache=tmp_path / "other-cache", progress=False)


def test_the_submission_url_itself_must_be_a_public_address(tmp_path, server, monkeypatch):
    url = server.add("/files/model.safetensors", CKPT)
    monkeypatch.delenv("ROBUST_FRONTIER_FETCH_ALLOW_HOSTS")  # as on a runner: no origin allowed
    with pytest.raises(HarnessError, match="refused: 127.0.0.1 resolves to a loopback address"):
        fetch(url, SHA, cache=tmp_path / "c", progress=False)
    for addr in ("10.0.0.7", "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]", "100.64.0.1", "0.0.0.0"):
        with pytest.raises(HarnessError, match="refused: .* resolves to a .*address"):
            fetch(f"https://{addr}/model.safetensors", SHA, cache=tmp_path / "c", progress=False)
    assert server.hits("/files/model.safetensors") == 0


@pytest.mark.parametrize("addr,problem", [
    ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.1", "private"), ("172.16.5.4", "private"),
    ("169.254.169.254", "link-local"), ("100.64.0.1", "non-public"), ("224.0.0.251", "multicast"),
    ("240.0.0.1", "reserved"), ("0.0.0.0", "unspecified"), ("::1", "loopback"), ("fe80::1%eth0", "link-local"),
    ("fc00::1", "private"), ("::ffff:10.0.0.1", "private"), ("ff02::1", "multicast"),
    ("8.8.8.8", None), ("2606:4700:4700::1111", None)])
def test_address_policy(addr, problem):
    from harness.submission.hosted import _address_problem

    got = _address_problem(addr)
    assert (got is None) if problem is None else (problem in got), got


def test_download_size_cap_from_the_submission_and_the_maintainer(tmp_path, server, cache, capsys, monkeypatch):
    url = server.add("/files/model.safetensors", CKPT)
    yml = hosted_submission(tmp_path, "declared", url)
    spec = yaml.safe_load(yml.read_text())
    spec["model"]["checkpoint"]["size_bytes"] = len(CKPT) - 1  # declared smaller than the file
    yml.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["fetch", str(yml), "--no-progress"]) == 2
    line = one_line_error(capsys)
    assert "larger than the cap" in line and "size_bytes" in line, line
    assert cached_files(cache) == []
    # no Content-Length: the download stops while reading, past the maintainer's cap
    unsized = server.add("/unsized/model.safetensors", CKPT * 8, mode="unsized")
    monkeypatch.setenv("ROBUST_FRONTIER_MAX_DOWNLOAD_BYTES", "1M")
    with pytest.raises(HarnessError, match=r"stopped: the file is larger than the cap of 1 MiB "
                                           r"\(ROBUST_FRONTIER_MAX_DOWNLOAD_BYTES\)"):
        fetch(unsized, SHA, progress=False)
    assert cached_files(cache) == []
    spec["model"]["checkpoint"]["size_bytes"] = len(CKPT)  # the exact size passes
    yml.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["fetch", str(yml), "--no-progress"]) == 0
    monkeypatch.setenv("ROBUST_FRONTIER_MAX_DOWNLOAD_BYTES", "lots")
    with pytest.raises(HarnessError, match="ROBUST_FRONTIER_MAX_DOWNLOAD_BYTES: must be a size"):
        fetch(url, SHA, cache=tmp_path / "c2", progress=False)


def test_hf_size_cap_from_the_hubs_metadata(tmp_path, server, cache, monkeypatch):
    url = server.add_hf("org/repo", COMMIT, "model.safetensors", CKPT)
    monkeypatch.setenv("ROBUST_FRONTIER_MAX_DOWNLOAD_BYTES", "100K")
    with pytest.raises(HarnessError, match="refused: the Hub lists the file as larger than the cap of 100 KiB"):
        fetch(url, SHA, progress=False)
    assert server.hits(f"/org/repo/resolve/{COMMIT}/model.safetensors") == 0  # not a byte of it was read
    assert cached_files(cache) == []
