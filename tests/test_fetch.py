"""Hosted checkpoints: `harness fetch` against a real local HTTPS server, the cache, and `harness eval`
refusing to download.

Every failure must leave nothing in the cache that could pass for the file, and print one line.
"""
from __future__ import annotations

import hashlib

import pytest
import yaml
from conftest import REPO, base_spec
from hosting import FileServer

from harness.cli import main
from harness.errors import HarnessError
from harness.hosted import CACHE_ENV, cache_path, fetch, parse_url
from harness.submission import Submission, parse_submission

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
