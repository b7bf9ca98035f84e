"""Issue 12, the input half: a stranger's submission.yaml, files and result record are refused, each
with one line that names the file and the field, and never with a traceback.

Covers the YAML loader (harness.submission.yamlsafe), the bounded schema (harness.submission), the file manifest
and folder digest (harness.submission.manifest), the custom-data and examples readers (harness.data.npzsafe), and
the record checks of the leaderboard build (harness.record)."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.fuzzing import forged_header_npz
from helpers.spec import base_spec

from harness.cli import main
from harness.core.errors import HarnessError
from harness.core.files import sha256_file
from harness.record.read import read_record
from harness.submission.load import load_submission, parse_submission, verify_files
from leaderboard.build import build_leaderboard
from leaderboard.synthetic import resign, write_synthetic_repo

REPO = Path(__file__).resolve().parents[2]


def one_line(text: str) -> None:
    assert "Traceback" not in text, text
    assert text.count("\n") <= 1 and text.strip(), repr(text)


def validate_lines(capsys, path) -> list[str]:
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return out.out.strip().splitlines()


def eval_error(capsys, path, *extra) -> str:
    assert main(["eval", str(path), "--only", "clean", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    one_line(err)
    assert err.startswith("error: ")
    return err


def write_spec(folder: Path, spec: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "submission.yaml"
    p.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return p


# ---------------------------------------------------------------------------------------------
# YAML
def test_duplicate_key_is_refused_with_file_and_line(make_submission, capsys):
    path = make_submission("dup")
    text = path.read_text().replace("threat_model:\n  norm: Linf\n  eps: 0.3\n",
                                    "threat_model: {norm: Linf, eps: 0.3, eps: 0.01}\n")
    assert "eps: 0.01" in text
    path.write_text(text)
    lines = validate_lines(capsys, path)
    assert len(lines) == 1 and "duplicate key 'eps'" in lines[0] and str(path) in lines[0]
    line_no = next(i for i, t in enumerate(text.splitlines(), 1) if "eps: 0.01" in t)
    assert f"at line {line_no}," in lines[0]
    err = eval_error(capsys, path)
    assert "duplicate key 'eps'" in err


def test_deep_nesting_and_big_documents_are_one_line(tmp_path, capsys):
    deep = write_spec(tmp_path / "deep", "id: " + "[" * 5000 + "]" * 5000 + "\n")
    lines = validate_lines(capsys, deep)
    assert len(lines) == 1 and "nested deeper than 32 levels" in lines[0] and "at line 1" in lines[0]
    deep_map = write_spec(tmp_path / "deepmap", "a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n")
    assert "nested deeper" in validate_lines(capsys, deep_map)[0]
    big = write_spec(tmp_path / "big", "notes: '" + "x" * (2 << 20) + "'\n")
    lines = validate_lines(capsys, big)
    assert len(lines) == 1 and "larger than the limit" in lines[0]


def test_python_tags_aliases_and_merge_keys_are_refused(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    tagged = write_spec(tmp_path / "tag", f"id: !!python/object/apply:os.system ['touch {marker}']\n")
    lines = validate_lines(capsys, tagged)
    assert len(lines) == 1 and "python/object/apply" in lines[0]
    assert not marker.exists()
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi",
                                                                                              strict=False))
    lines = validate_lines(capsys, write_spec(tmp_path / "bomb", bomb))
    assert len(lines) == 1 and "aliases" in lines[0] and "at line 2" in lines[0]
    lines = validate_lines(capsys, write_spec(tmp_path / "merge", "a: {x: 1}\nb:\n  <<: {x: 2}\n  y: 3\n"))
    assert "merge keys" in lines[0]


def test_symlinked_submission_yaml_outside_the_folder_is_not_read(tmp_path, capsys):
    secret = tmp_path / "secret.yaml"
    secret.write_text("aws_secret_key_id: AKIA-SECRET\nprivate_token: hunter2\n")
    folder = tmp_path / "submissions" / "linked"
    folder.mkdir(parents=True)
    (folder / "submission.yaml").symlink_to(secret)
    lines = validate_lines(capsys, folder)
    assert len(lines) == 1 and "outside its folder" in lines[0]
    assert "aws_secret" not in lines[0] and "private_token" not in lines[0] and "hunter2" not in lines[0]
    err = eval_error(capsys, folder / "submission.yaml")
    assert "aws_secret" not in err and "outside its folder" in err
    # a symlink to a file inside the same folder is fine
    inside = tmp_path / "submissions" / "inside"
    inside.mkdir()
    (inside / "real.yaml").write_text("id: x\n")
    (inside / "submission.yaml").symlink_to("real.yaml")
    sub, problems = parse_submission(inside / "submission.yaml")
    assert sub is None and problems  # read (then refused by the schema), not refused as a link


def test_bad_paths_on_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink("loop-b", "loop-a")
    os.symlink("loop-a", "loop-b")
    for arg, why in (("loop-a", "Symlink loop"), ("a" * 300, "File name too long"), ("a\x00b", "null byte"),
                     ("missing/submission.yaml", "no such file")):
        lines = validate_lines(capsys, arg)
        assert len(lines) == 1 and why in lines[0], lines
        eval_error(capsys, arg)


def test_special_files_do_not_hang(tmp_path, capsys):
    folder = tmp_path / "submissions" / "fifo"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "submission.yaml")
    lines = validate_lines(capsys, folder)
    assert len(lines) == 1 and "not a regular file" in lines[0]


# ---------------------------------------------------------------------------------------------
# the schema: finite, bounded numbers; http(s) URLs; plain paths; allowed packages
def problems(tmp_path, spec: dict | str, name: str = "x") -> list[str]:
    p = write_spec(tmp_path / "submissions" / name, spec)
    try:
        sub, probs = parse_submission(p)
    except HarnessError as e:
        return [str(e)]
    return [str(x) for x in probs]


def assert_field(found: list[str], field: str) -> None:
    assert found, "accepted"
    assert any(p.split(": ", 1)[0] == field for p in found), found
    for p in found:
        one_line(p)


def _set(spec: dict, path: str, value) -> dict:
    *head, last = path.split(".")
    d = spec
    for k in head:
        d = d.setdefault(k, {})
    d[last] = value
    return spec


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400", "9" * 400, "0.3e999", "'1/0'", "'9999/0.0'",
                                   "2", "-0.1"])
def test_eps_must_be_finite_and_in_range(tmp_path, value):
    text = yaml.safe_dump(base_spec("x", "0" * 64)).replace("eps: 0.3", f"eps: {value}")
    assert f"eps: {value}" in text
    assert_field(problems(tmp_path, text), "threat_model.eps")


INT_FIELDS = ["evaluation.n_examples", "evaluation.batch_size", "evaluation.seed", "training.seed",
              "training.attack_steps", "training.examples_per_epoch", "training.extra_data",
              "model.forward_passes", "paper.year", "smoothing.n0", "smoothing.n"]


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("value", [10**29, 2**64, -(10**30), -1])
def test_every_integer_field_is_bounded(tmp_path, field, value):
    spec = base_spec("x", "0" * 64)
    if field.startswith("paper."):
        spec["paper"] = {"title": "t"}
    if field.startswith("smoothing."):
        spec["smoothing"] = {"sigma": 0.25}
    assert_field(problems(tmp_path, _set(spec, field, value)), field)


@pytest.mark.parametrize("field", ["training.epochs", "training.declared_flops", "evaluation.eps_max",
                                   "evaluation.radius_tol", "smoothing.sigma", "smoothing.alpha"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300])
def test_every_float_field_is_finite_and_bounded(tmp_path, field, value):
    spec = base_spec("x", "0" * 64)
    if field.startswith("smoothing."):
        spec["smoothing"] = {"sigma": 0.25}
    assert_field(problems(tmp_path, _set(spec, field, value)), field)


@pytest.mark.parametrize("kwargs", [{"hidden": -5}, {"hidden": 10**7}, {"hidden": 10**40}, {"hidden": float("inf")},
                                    {"hidden": [1, 2]}, {"bad name": 1}])
def test_architecture_kwargs_are_bounded_in_the_schema(tmp_path, kwargs):
    spec = base_spec("x", "0" * 64)
    spec["model"]["architecture"] = "mnist_mlp"
    spec["model"]["architecture_kwargs"] = kwargs
    assert_field(problems(tmp_path, spec), "model.architecture_kwargs")


@pytest.mark.parametrize("url", ["javascript:alert(1)", "JaVaScRiPt:alert(document.cookie)", "data:text/html,<b>x</b>",
                                 "vbscript:x", "//evil.example/x", "https:", "https://x.org/\" onmouseover=\"alert(1)",
                                 " https://x.org", "https://x.org/<script>", "file:///etc/passwd", "java\tscript:x"])
def test_paper_url_must_be_http_or_https(tmp_path, url):
    spec = base_spec("x", "0" * 64)
    spec["paper"] = {"title": "t", "url": url}
    assert_field(problems(tmp_path, spec), "paper.url")


def test_good_urls_pass(tmp_path):
    spec = base_spec("x", "0" * 64)
    for url in ("https://arxiv.org/abs/2003.01690", "http://example.org/a?b=c&d=e#f"):
        spec["paper"] = {"title": "t", "url": url}
        assert problems(tmp_path, spec) == []


@pytest.mark.parametrize("path, what", [("a\x00b.pt", "NUL"), ("a" * 300 + ".pt", "303 bytes (at most 255)"),
                                        ("d/" + "é" * 200, "400 bytes"), ("x" * 2000, "longer"),
                                        ("./model.pt", "plain"), ("a//b", "plain"), ("/etc/passwd", "relative"),
                                        ("..", ".."), ("a\\..\\b", "'/' separators")],
                         ids=["nul", "long-name", "long-utf8", "long-path", "dot", "empty-part", "absolute", "dotdot",
                              "backslash"])
def test_paths_are_plain_relative_paths(tmp_path, path, what):
    spec = base_spec("x", "0" * 64)
    spec["model"]["checkpoint"]["path"] = path
    found = problems(tmp_path, spec)
    assert_field(found, "model.checkpoint.path")
    assert any(what in p for p in found), found
    spec = base_spec("x", "0" * 64, dataset="custom", dataset_path=path)
    assert_field(problems(tmp_path, spec), "dataset_path")


def test_symlink_loops_and_missing_files_are_one_line_problems(make_submission, capsys):
    path = make_submission("loopy")
    folder = path.parent
    (folder / "model.pt").unlink()
    os.symlink("loop-b", folder / "model.pt")
    os.symlink("model.pt", folder / "loop-b")
    lines = validate_lines(capsys, path)
    assert lines and all(line.startswith(f"{path}: ") for line in lines)
    assert any("model.checkpoint.path" in line and "loop" in line.lower() for line in lines), lines
    eval_error(capsys, path)


@pytest.mark.parametrize("package", ["this.x", "this", "os", "antigravity", "pyautoattack.examples", "harness"])
def test_checkpoint_package_is_allow_listed_and_never_imported(tmp_path, package):
    spec = base_spec("x", "0" * 64)
    spec["model"]["checkpoint"]["package"] = package
    found = problems(tmp_path, spec)
    assert_field(found, "model.checkpoint.package")
    assert "pyautoattack" in " ".join(found)


def test_package_checkpoint_resolves_without_importing(repo, tmp_path):
    """validate `package: this.x` and the pyautoattack checkpoint in a fresh interpreter: nothing is imported."""
    spec = base_spec("x", "0" * 64)
    spec["model"]["checkpoint"]["package"] = "this.x"
    bad = write_spec(tmp_path / "x", spec)
    code = (
        "import sys\n"
        "from harness.submission.load import parse_submission, load_submission\n"
        f"print(parse_submission({str(bad)!r})[1])\n"
        f"sub = load_submission({str(repo / 'submissions/cifar10-autoattack-resnet18/submission.yaml')!r})\n"
        "print('ck', sub.checkpoint_path().name)\n"
        "print('imported', sorted(m for m in ('this', 'pyautoattack', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert "Beautiful is better than ugly" not in out.stdout  # `import this` prints the Zen
    assert "ck model_test.pt" in out.stdout
    assert "imported []" in out.stdout


# ---------------------------------------------------------------------------------------------
# eval: one line, before any model is built
@pytest.mark.parametrize("edit, field", [
    (lambda s: s["threat_model"].update(eps=float("inf")), "threat_model.eps"),
    (lambda s: s["evaluation"].update(seed=10**29), "evaluation.seed"),
    (lambda s: s["evaluation"].update(n_examples=2**70), "evaluation.n_examples"),
    (lambda s: s["evaluation"].update(batch_size=2**70), "evaluation.batch_size"),
    (lambda s: s["model"].update(architecture="mnist_mlp", architecture_kwargs={"hidden": -5}),
     "model.architecture_kwargs"),
    (lambda s: s["model"].update(architecture="mnist_mlp", architecture_kwargs={"hidden": 100_000}),
     "model.architecture_kwargs"),
    (lambda s: s["model"].update(architecture="robustbench.WideResNet", architecture_kwargs={"depth": 70_000}),
     "model.architecture_kwargs.depth"),
    (lambda s: s["model"].update(architecture="mnist_small_cnn", architecture_kwargs={"hidden": 3}),
     "model.architecture_kwargs"),
])
def test_eval_refuses_in_one_line(make_submission, capsys, edit, field):
    path = make_submission("ev")
    spec = yaml.safe_load(path.read_text())
    edit(spec)
    path.write_text(yaml.safe_dump(spec))
    err = eval_error(capsys, path)
    assert f" {field}: " in err or f": {field}: " in err, err


@pytest.mark.parametrize("flag", ["--n-examples", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-3", str(10**30)])
def test_eval_command_line_counts_are_bounded(make_submission, capsys, flag, value):
    path = make_submission("cli")
    with pytest.raises(SystemExit) as e:
        main(["eval", str(path), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and flag in err


# ---------------------------------------------------------------------------------------------
# every file covered by a hash
def _export_onnx_with_external_data(folder: Path) -> None:
    import onnx

    from harness.models.architectures import mnist_mlp

    torch.manual_seed(0)
    net = mnist_mlp().eval()
    tmp = folder / "tmp.onnx"
    torch.onnx.export(net, torch.rand(1, 1, 28, 28), str(tmp), dynamo=False, opset_version=17)
    proto = onnx.load(str(tmp))
    tmp.unlink()
    onnx.save_model(proto, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.bin", size_threshold=0)


def _onnx_submission(root: Path, sub_id: str = "onnx-ext", files: bool = True) -> Path:
    folder = root / "submissions" / sub_id
    folder.mkdir(parents=True)
    _export_onnx_with_external_data(folder)
    spec = base_spec(sub_id, sha256_file(folder / "model.onnx"))
    spec["model"] = {"format": "onnx", "checkpoint": {"path": "model.onnx",
                                                      "sha256": sha256_file(folder / "model.onnx")}}
    if files:
        spec["files"] = {"w.bin": sha256_file(folder / "w.bin")}
    return write_spec(folder, spec)


def _load(path):
    from harness.models.load import load_model

    sub = load_submission(path)
    return load_model(sub, input_shape=(1, 28, 28), num_classes=10, device=torch.device("cpu"))


def test_onnx_external_data_is_covered_by_the_manifest(tmp_path, capsys):
    path = _onnx_submission(tmp_path)
    folder = path.parent
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    model = _load(path)
    x = torch.rand(3, 1, 28, 28)
    before = model(x)
    # the attack of the issue: change w.bin, keep every hash in submission.yaml
    w = bytearray((folder / "w.bin").read_bytes())
    w[100:104] = np.float32(50.0).tobytes()
    (folder / "w.bin").write_bytes(bytes(w))
    lines = validate_lines(capsys, path)
    assert lines == [f"{path}: files.w.bin: hash mismatch: file has {sha256_file(folder / 'w.bin')}, "
                     f"submission says {yaml.safe_load(path.read_text())['files']['w.bin']}"]
    with pytest.raises(HarnessError, match="files.w.bin: hash mismatch"):
        _load(path)
    err = eval_error(capsys, path)
    assert "files.w.bin: hash mismatch" in err
    # declaring the new hash makes it a new submission (new submission.yaml hash), and it loads
    spec = yaml.safe_load(path.read_text())
    spec["files"]["w.bin"] = sha256_file(folder / "w.bin")
    path.write_text(yaml.safe_dump(spec))
    assert not torch.allclose(_load(path)(x), before)


def test_an_uncovered_file_is_refused_before_loading(tmp_path, make_submission, capsys):
    path = _onnx_submission(tmp_path, files=False)
    lines = validate_lines(capsys, path)
    digest = sha256_file(path.parent / "w.bin")
    assert lines == [f"{path}: files: w.bin is not covered by any hash; add `w.bin: {digest}` under `files:`"]
    with pytest.raises(HarnessError, match="w.bin is not covered"):
        _load(path)
    # a stray file next to a state_dict, in a sub-folder
    p2 = make_submission("stray")
    (p2.parent / "notes").mkdir()
    (p2.parent / "notes" / "readme.txt").write_text("hello")
    assert "notes/readme.txt is not covered" in validate_lines(capsys, p2)[0]
    spec = yaml.safe_load(p2.read_text())
    spec["files"] = {"notes/readme.txt": sha256_file(p2.parent / "notes" / "readme.txt")}
    p2.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(p2)]) == 0
    spec["files"] = {"gone.txt": "0" * 64}
    p2.write_text(yaml.safe_dump(spec))
    lines = validate_lines(capsys, p2)
    assert f"{p2}: files.gone.txt: file not found" in lines


def test_onnx_external_data_outside_the_folder_is_still_refused(tmp_path, capsys):
    """What held must keep holding: the external data of an ONNX model may not leave the folder,
    neither through its location nor through a symlink."""
    import onnx

    path = _onnx_submission(tmp_path, "onnx-out")
    folder = path.parent
    outside = tmp_path / "outside.bin"
    shutil.move(folder / "w.bin", outside)
    (folder / "w.bin").symlink_to(outside)
    lines = validate_lines(capsys, path)
    assert any("escapes" in line for line in lines), lines
    with pytest.raises(HarnessError):
        _load(path)
    # the location itself points outside: the manifest is complete, onnx refuses the path
    (folder / "w.bin").unlink()
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../../outside.bin"
    onnx.save_model(proto, str(folder / "model.onnx"))
    spec = yaml.safe_load(path.read_text())
    spec["model"]["checkpoint"]["sha256"] = sha256_file(folder / "model.onnx")
    spec.pop("files")
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    with pytest.raises(HarnessError) as e:
        _load(path)
    one_line(str(e.value))


def test_folder_digest_is_sha256sum_of_the_folder(tmp_path):
    path = _onnx_submission(tmp_path, "digest")
    folder = path.parent
    sub = load_submission(path)
    digest = verify_files(sub)
    # independent computation: the sha256sum recipe of harness/manifest.py's docstring (submission.yaml's
    # line holds the hash of its result-relevant fields, so that a metadata edit keeps the digest)
    r = sub.results_sha256
    if shutil.which("sha256sum") and shutil.which("find"):
        out = subprocess.run(f"find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs sha256sum "
                             f"| sed 's/^[0-9a-f]*  submission.yaml$/{r}  submission.yaml/' | sha256sum",
                             shell=True, cwd=folder, capture_output=True, text=True, check=True)
        assert out.stdout.split()[0] == digest
    lines = sorted(f"{r if p.name == 'submission.yaml' else sha256_file(p)}  {p.relative_to(folder).as_posix()}\n"
                   for p in folder.rglob("*") if p.is_file())
    import hashlib
    assert hashlib.sha256("".join(sorted(lines, key=lambda s: s.split("  ", 1)[1])).encode()).hexdigest() == digest
    # a change of any file changes it, even one with the same size right after hashing (no stale cache)
    w = bytearray((folder / "w.bin").read_bytes())
    w[0] ^= 1
    (folder / "w.bin").write_bytes(bytes(w))
    with pytest.raises(HarnessError, match="files.w.bin: hash mismatch"):
        verify_files(sub)


def test_fifo_in_the_folder_is_refused_without_hanging(make_submission, capsys):
    path = make_submission("fifo-in")
    os.mkfifo(path.parent / "pipe")
    lines = validate_lines(capsys, path)
    assert any("pipe: not a regular file" in line for line in lines), lines


def test_custom_data_set_must_be_hashed_and_plain(make_submission, capsys):
    path = make_submission("custom-data")
    folder = path.parent
    g = np.random.default_rng(0)
    np.savez(folder / "data.npz", x=g.integers(0, 256, (8, 28, 28), dtype=np.uint8), y=np.arange(8) % 10)
    spec = yaml.safe_load(path.read_text())
    spec.update(dataset="custom", dataset_path="data.npz")
    path.write_text(yaml.safe_dump(spec))
    assert "data.npz is not covered" in validate_lines(capsys, path)[0]
    spec["files"] = {"data.npz": sha256_file(folder / "data.npz")}
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    from harness.data.loaders import load_test_data

    assert load_test_data("custom", 8, custom_path=folder / "data.npz").x.shape == (8, 1, 28, 28)
    # a 2 KB file whose header declares 10^12 images, and object arrays: refused from the header
    for arrays, match in (({"x": np.zeros((1, 28, 28), np.uint8), "y": np.array([-1])}, "labels must lie"),
                          ({"x": np.array([{"a": 1}], dtype=object), "y": np.zeros(1, np.int64)}, "object")):
        np.savez(folder / "bad.npz", **arrays, allow_pickle=True)
        with pytest.raises(HarnessError, match=match):
            load_test_data("custom", None, custom_path=folder / "bad.npz")
    (folder / "bomb.npz").write_bytes(forged_header_npz({"x": ((10**6, 4096, 4096), "|u1"), "y": ((10**6,), "<i8")}))
    with pytest.raises(HarnessError, match="declare more than"):
        load_test_data("custom", None, custom_path=folder / "bomb.npz")


def _zip_of_zeros(path: Path, members: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """A real, valid .npz whose arrays are all zeros, written as raw deflate without ever holding
    the zeros: 16 MiB of zeros compress to 16 KB, and after a full flush the compressor repeats
    itself, so the stream is that block repeated (the zip bomb of the issue)."""
    import struct
    import zlib

    chunk = bytes(16 << 20)
    out, central = bytearray(), bytearray()
    for name, (shape, dtype) in members.items():
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
        head = header.getvalue()
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        full, rest = divmod(nbytes, len(chunk))
        co = zlib.compressobj(9, zlib.DEFLATED, -15)
        stream = [co.compress(head) + co.flush(zlib.Z_FULL_FLUSH)]
        block = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH) if full else b""
        stream += [block] * full
        stream.append(co.compress(bytes(rest)) + co.flush(zlib.Z_FINISH))
        crc = zlib.crc32(head)
        for _ in range(full):
            crc = zlib.crc32(chunk, crc)
        crc = zlib.crc32(bytes(rest), crc)
        data = b"".join(stream)
        fname = f"{name}.npy".encode()
        size = len(head) + nbytes
        assert size < 2**32 and len(data) < 2**32  # no zip64 needed
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(fname), 0)
        out += fname + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size,
                               len(fname), 0, 0, 0, 0, 0, offset) + fname
    cd_offset = len(out)
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                                 cd_offset, 0)
    path.write_bytes(bytes(out))


MEMORY_PROBE = """
import json, resource, sys
from pathlib import Path
from harness.data.loaders import load_test_data
from harness.core.errors import HarnessError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_test_data("custom", None, custom_path=Path(sys.argv[1]))
    msg = "read"
except HarnessError as e:
    msg = str(e)
print(json.dumps({"grew_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, "message": msg}))
"""


def _read_in_a_fresh_process(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_npz_zip_bomb_is_refused_before_the_memory_grows(tmp_path):
    """A 2 MB .npz that really expands to 2 GiB of images (a valid file: np.load would read it) is
    refused from its sizes, in one line, and the reader's memory does not grow."""
    n = (2 << 30) // (32 * 32 * 3)
    bomb = tmp_path / "bomb.npz"
    _zip_of_zeros(bomb, {"x": ((n, 32, 32, 3), "|u1"), "y": ((n,), "|u1")})
    assert bomb.stat().st_size < 3 << 20
    with np.load(bomb, allow_pickle=False) as z:  # guard: a well-formed archive whose arrays numpy accepts
        assert z["y"].shape == (n,)
    got = _read_in_a_fresh_process(bomb)
    assert "zip bomb" in got["message"] and "\n" not in got["message"], got
    assert got["grew_kb"] < 100 * 1024, got  # the supervisor did not allocate the 2 GiB


def test_npz_header_claiming_more_data_than_its_member_holds_is_not_allocated(tmp_path):
    """A 1 KB file whose header declares 1.5 GB of images (under the size bound): refused from the
    zip's own declared size, before the 1.5 GB are allocated and zero-filled."""
    forged = tmp_path / "forged.npz"
    forged.write_bytes(forged_header_npz({"x": ((500_000, 32, 32, 3), "|u1"), "y": ((500_000,), "|u1")}))
    got = _read_in_a_fresh_process(forged)
    assert "declares 1536000000 bytes of data" in got["message"] and "holds 0" in got["message"], got
    assert got["grew_kb"] < 100 * 1024, got


def test_npz_arrays_are_bounded_by_the_available_memory(tmp_path, monkeypatch):
    from harness.data import npzsafe

    g = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=g.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8), y=np.zeros(2000, np.int64))
    got = npzsafe.read_npz(tmp_path / "data.npz", max_file_bytes=1 << 30, max_total_bytes=1 << 30)
    assert got["x"].shape[0] == 2000 and got["x"].flags.writeable
    monkeypatch.setattr(npzsafe, "available_memory", lambda: 8 << 20)  # 8 MiB free: 6 MiB of images is too much
    with pytest.raises(HarnessError, match=r"declare more than 4194304 bytes \(50% of the memory available now\)"):
        npzsafe.read_npz(tmp_path / "data.npz", max_file_bytes=1 << 30, max_total_bytes=1 << 30)


# ---------------------------------------------------------------------------------------------
# forged records: the build refuses each, with one line naming the record and the field
# the kinds of record the forgeries below start from; every synthetic board they use must hold each
KINDS = {
    "robust": lambda d: d["robust_accuracy"] is not None and d["clean_accuracy"] is not None,
    "certified": lambda d: bool(d["certified"]) and d["robust_accuracy"] is not None
    and d["certified"]["ibp"]["certified_accuracy"] > 0,
    "mnist": lambda d: d["dataset"] == "mnist",
}


def synthetic_board(root: Path, **kw) -> list[str]:
    """A synthetic board that holds a record of every kind in KINDS (fails the test otherwise)."""
    ids = write_synthetic_repo(root, 8, seed=3, **kw)
    records = [json.loads(_rec_path(root, sid).read_text()) for sid in ids]
    missing = [kind for kind, pred in KINDS.items() if not any(pred(d) for d in records)]
    assert not missing, f"the synthetic board lacks a record of kind {missing}: change its seed or size"
    return ids


@pytest.fixture
def board_repo(tmp_path):
    root = tmp_path / "repo"
    return root, synthetic_board(root, gallery=2)


def _rec_path(root, sid):
    return root / "leaderboard" / "results" / f"{sid}.json"


def _edit(root, sid, fn, *, sign=False):
    """Edit a record; ``sign``: sign it again with the repository's trusted key, so that the checks
    after the signature's (submission, folder digest) are the ones that must refuse it."""
    p = _rec_path(root, sid)
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d, indent=1))
    if sign:
        resign(root, p)


def refused(root, sid, match) -> str:
    out = root / "site"
    with pytest.raises(HarnessError) as e:
        build_leaderboard(root, out)
    msg = str(e.value)
    one_line(msg)
    assert str(_rec_path(root, sid)) in msg, msg
    assert match in msg, msg
    assert not out.exists()
    return msg


def _ci(k, n):
    from harness.core.stats import clopper_pearson

    return list(clopper_pearson(k, n))


def _first(root, ids, kind: str):
    """The first record of ``kind`` (a key of KINDS); synthetic_board guarantees there is one."""
    for sid in ids:
        d = json.loads(_rec_path(root, sid).read_text())
        if KINDS[kind](d):
            return sid, d
    pytest.fail(f"no synthetic record of kind {kind!r}")


def test_the_synthetic_board_builds(board_repo):
    root, _ = board_repo
    assert (build_leaderboard(root, root / "site") / "index.html").is_file()


def test_rank_one_robust_accuracy_contradicted_by_the_examples(board_repo):
    root, ids = board_repo
    sid, d = _first(root, ids, "robust")
    n = d["n_examples"]

    def forge(d):
        k = round(0.999 * n)
        d["robust_accuracy"], d["robust_accuracy_ci95"] = k / n, _ci(k, n)
        d["clean_accuracy"], d["clean_accuracy_ci95"] = 1.0, _ci(n, n)
        d["autoattack"]["accuracy_after"] = {a: (1.0 if a == "clean" else k / n)
                                             for a in d["autoattack"]["accuracy_after"]}
        d["autoattack"].update(n_attacked=n, n_skipped_misclassified=0, n_skipped_certified=0)
        d["certified"] = None
    _edit(root, sid, forge)
    refused(root, sid, "clean_accuracy: 1.0 but clean_correct has")


@pytest.mark.parametrize("value", [-0.5, 1.5, 1e300])
@pytest.mark.parametrize("field", ["clean_accuracy", "robust_accuracy"])
def test_accuracies_outside_0_1(board_repo, field, value):
    root, ids = board_repo
    _edit(root, ids[1], lambda d: d.__setitem__(field, value))
    refused(root, ids[1], field)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("field", ["clean_accuracy", "eps"])
def test_nan_and_infinite_numbers(board_repo, literal, field):
    root, ids = board_repo
    p = _rec_path(root, ids[1])
    d = json.loads(p.read_text())
    key = f'"{field}": '
    old = f'{key}{json.dumps(d["clean_accuracy"] if field == "clean_accuracy" else d["threat_model"]["eps"])}'
    text = p.read_text()
    assert old in text
    p.write_text(text.replace(old, f"{key}{literal}", 1))
    refused(root, ids[1], "not a number a record may hold" if literal != "1e400" else "out of range")


def test_robust_above_clean_and_certified_above_robust(board_repo):
    root, ids = board_repo
    sid, d = _first(root, ids, "robust")
    n = d["n_examples"]
    k = round(d["clean_accuracy"] * n) + 1
    _edit(root, sid, lambda d: d.update(robust_accuracy=k / n, robust_accuracy_ci95=_ci(k, n)))
    refused(root, sid, "robust_accuracy")
    root2 = root.parent / "r2"
    ids2 = synthetic_board(root2)
    sid, d = _first(root2, ids2, "certified")
    n = d["n_examples"]  # this record's own count, not the first board's
    k = round(d["robust_accuracy"] * n) + 1

    def forge(d):
        d["certified"]["ibp"].update(certified_accuracy=k / n, certified_accuracy_ci95=_ci(k, n))
    _edit(root2, sid, forge)
    refused(root2, sid, "certified.ibp.certified_accuracy")


def test_inverted_or_narrowed_ci(board_repo):
    root, ids = board_repo
    _edit(root, ids[1], lambda d: d.__setitem__("robust_accuracy_ci95", d["robust_accuracy_ci95"][::-1]))
    refused(root, ids[1], "robust_accuracy_ci95: inverted interval")
    acc = json.loads(_rec_path(root, ids[2]).read_text())["robust_accuracy"]
    _edit(root, ids[2], lambda d: d.__setitem__("robust_accuracy_ci95", [acc - 1e-3, acc + 1e-3]))
    with pytest.raises(HarnessError, match="not the 95% Clopper-Pearson interval"):
        read_record(_rec_path(root, ids[2]))


@pytest.mark.parametrize("n", [0, -5, 10**20])
def test_n_examples_must_be_positive(board_repo, n):
    root, ids = board_repo
    _edit(root, ids[1], lambda d: d.__setitem__("n_examples", n))
    refused(root, ids[1], "n_examples")


def test_n_examples_must_match_the_arrays(board_repo):
    root, ids = board_repo
    d = json.loads(_rec_path(root, ids[1]).read_text())
    n = d["n_examples"] // 2

    def forge(d):
        d["n_examples"] = n
        for key in ("clean_accuracy", "robust_accuracy"):
            k = round(d[key] * n)
            d[key], d[key + "_ci95"] = k / n, _ci(k, n)
        d["autoattack"] = None
        d["robust_accuracy"] = d["robust_accuracy_ci95"] = None
        d["certified"] = None
    _edit(root, ids[1], forge)
    refused(root, ids[1], f"per-example arrays have shape (n_examples,) = ({n},)")


@pytest.mark.parametrize("field, value", [("inference_flops", -1.0), ("params", -10), ("inference_flops", 1e300),
                                          ("forward_passes", 0)])
def test_compute_figures_are_non_negative_and_finite(board_repo, field, value):
    root, ids = board_repo
    _edit(root, ids[1], lambda d: d.__setitem__(field, value))
    refused(root, ids[1], field)
    _edit(root, ids[2], lambda d: d["training_flops"].__setitem__("value", -1e20))
    with pytest.raises(HarnessError, match="training_flops.value"):
        read_record(_rec_path(root, ids[2]))


def test_duplicate_json_keys(board_repo):
    root, ids = board_repo
    p = _rec_path(root, ids[1])
    text = p.read_text()
    p.write_text(text.replace('"robust_accuracy": ', '"robust_accuracy": 0.999, "robust_accuracy": ', 1))
    refused(root, ids[1], "duplicate key 'robust_accuracy'")


def test_mnist_record_claiming_the_cifar_board(board_repo):
    root, ids = board_repo
    sid, d = _first(root, ids, "mnist")

    def forge(d):
        d["dataset"] = "cifar10"
        d["threat_model"] = {"norm": "Linf", "eps": 8 / 255}
        d["diagnostics"] = None
        for c in (d["certified"] or {}).values():
            c["eps"] = 8 / 255
    _edit(root, sid, forge, sign=True)
    refused(root, sid, "dataset: 'cifar10' differs from the submission's 'mnist'")
    _edit(root, sid, lambda d: d.update(dataset="mnist"), sign=True)
    refused(root, sid, "threat_model.eps")


@pytest.mark.parametrize("name", ["../x.examples.npz", "sub/x.examples.npz", "/etc/passwd", "..", "x.npz\x00"])
def test_examples_file_is_a_plain_name(board_repo, name):
    root, ids = board_repo
    _edit(root, ids[1], lambda d: d.__setitem__("examples_file", name))
    refused(root, ids[1], "examples_file")


def test_examples_file_of_another_record_or_missing(board_repo):
    root, ids = board_repo
    _edit(root, ids[1], lambda d: d.__setitem__("examples_file", f"{ids[2]}.examples.npz"))
    with pytest.raises(HarnessError):
        build_leaderboard(root, root / "site")
    _edit(root, ids[1], lambda d: d.__setitem__("examples_file", None))
    refused(root, ids[1], "examples_file: missing")


def _rewrite_npz(root, sid, fn):
    p = root / "leaderboard" / "results" / f"{sid}.examples.npz"
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    fn(arrays)
    np.savez_compressed(p, **arrays)
    return p


def test_gallery_image_of_the_wrong_shape_is_refused_from_the_header(board_repo):
    """15 KB of zeros holding one 2500x2500 gallery image: refused before a pixel is decompressed."""
    root, ids = board_repo
    sid = ids[0]  # has a gallery

    def forge(a):
        k = 1
        a["gallery_clean"] = np.zeros((k, 1, 2500, 2500), np.uint8)
        a["gallery_adv"] = np.zeros((k, 1, 2500, 2500), np.uint8)
        a["gallery_index"], a["gallery_adv_pred"] = np.zeros(k, np.int64), np.zeros(k, np.int64)
    p = _rewrite_npz(root, sid, forge)
    assert p.stat().st_size < 60_000
    refused(root, sid, "images of shape (1, 2500, 2500), but cifar10 images have shape (3, 32, 32)")


def test_npz_bombs_object_arrays_and_garbage(board_repo):
    root, ids = board_repo
    sid = ids[1]
    p = root / "leaderboard" / "results" / f"{sid}.examples.npz"
    n = json.loads(_rec_path(root, sid).read_text())["n_examples"]
    p.write_bytes(forged_header_npz({"index": ((10**12,), "<i8")}))
    refused(root, sid, "declare more than")
    p.write_bytes(forged_header_npz({"index": ((n,), "|O")}))
    refused(root, sid, "no object arrays")
    np.savez(p, index=np.array([object()] * n, dtype=object), allow_pickle=True)
    refused(root, sid, "no object arrays")
    p.write_bytes(b"PK\x03\x04 not really a zip")
    refused(root, sid, "not a readable .npz")
    # found by scripts/fuzz.py: a valid zip behind other first bytes, which zipfile reads but np.load
    # (and so the gallery renderer) takes for a pickle
    good = io.BytesIO()
    np.savez(good, index=np.arange(n))
    p.unlink()
    p.write_bytes(b"XX" + good.getvalue())
    refused(root, sid, "not an .npz (a zip archive)")
    p.unlink()
    p.symlink_to("/dev/zero")
    refused(root, sid, "outside its folder")


def test_per_example_sandwich_is_checked(board_repo):
    root, ids = board_repo
    sid, d = _first(root, ids, "certified")

    def forge(a):
        cert, rob = a["certified_ibp"], a["autoattack_robust"]
        i = np.nonzero(cert)[0][0]
        j = np.nonzero(a["clean_correct"] & ~rob)[0][0]
        cert[i], cert[j] = False, True  # same count, but certifies a point AutoAttack broke
    _rewrite_npz(root, sid, forge)
    refused(root, sid, "certified_ibp certifies examples")


def test_folder_digest_is_checked_by_the_build(board_repo):
    root, ids = board_repo
    ck = root / "submissions" / ids[1] / "model.safetensors"
    ck.write_bytes(ck.read_bytes() + b"changed")
    msg = refused(root, ids[1], "do not match their hashes")
    assert "checkpoint hash mismatch" in msg
    ck.write_bytes(ck.read_bytes()[: -len(b"changed")])
    extra = root / "submissions" / ids[1] / "extra.bin"
    extra.write_bytes(b"x")
    refused(root, ids[1], "extra.bin is not covered")
    extra.unlink()
    _edit(root, ids[1], lambda d: d["provenance"].__setitem__("files_sha256", None), sign=True)
    refused(root, ids[1], "provenance.files_sha256: missing")
    _edit(root, ids[1], lambda d: d["provenance"].__setitem__("files_sha256", "0" * 64), sign=True)
    refused(root, ids[1], "provenance.files_sha256")


def test_build_cli_prints_one_line(board_repo, capsys):
    from leaderboard.build import main as build_main

    root, ids = board_repo
    _edit(root, ids[1], lambda d: d.__setitem__("clean_accuracy", float("nan")))
    assert build_main(["--root", str(root), "--out", str(root / "site")]) == 2
    err = capsys.readouterr().err
    one_line(err)
    assert "clean_accuracy" in err
    assert main(["leaderboard", "build", "--root", str(root), "--out", str(root / "site")]) == 2
    one_line(capsys.readouterr().err)


def test_committed_records_pass_every_check(repo):
    from leaderboard.boards import load_entries

    inputs = load_entries(repo)
    # every committed record is on the board as re-evaluated: none is dropped or demoted
    committed = {p.stem for p in (repo / "leaderboard" / "results").glob("*.json")}
    assert committed == {"cifar10-autoattack-resnet18", "mnist-fgsm", "mnist-fgsm-co", "mnist-ibp", "mnist-pgd",
                         "mnist-standard"}
    assert sorted(e.id for e in inputs.entries if e.kind == "re-evaluated") == sorted(committed)


def test_bound_methods_are_sound_certifiers_of_the_registry():
    # the record checks read soundness from harness.certifiers (no name list of their own)
    from harness import certifiers
    from harness.bounds import METHODS

    assert set(METHODS) <= set(certifiers.sound_names())
    assert "smoothing" in certifiers.names() and "smoothing" not in certifiers.sound_names()


def test_messages_escape_terminal_control_characters(make_submission, capsys):
    """A key written as "\\e[2J" in YAML is a real escape sequence: it is printed escaped."""
    path = make_submission("esc")
    path.write_text(path.read_text() + '"\\e[2J\\e[31mowned": 1\n')
    lines = validate_lines(capsys, path)
    assert any("\\x1b[2J" in line for line in lines), lines
    assert not any("\x1b" in line for line in lines)


@pytest.mark.parametrize("doc", ["a: 1\na: 2\n", "a: " + "[" * 500 + "]" * 500 + "\n", "a: &x 1\nb: *x\n",
                                 "a: !!python/object/apply:os.system ['true']\n", "a: [1,\n", "<<: {a: 1}\n",
                                 "x: " + "9" * 1200 + "\n", "a: {b: 1, b: 2}\n", "- 1\n- {a: [x, y]}\n",
                                 "a: 0x1f\nb: 1_000\nc: .inf\nd: 1:30\ne: 2001-12-14\n"])
def test_libyaml_and_pure_python_loaders_agree(doc):
    """The strict checks sit in PyYAML's Python composer; libyaml only parses (when present)."""
    import yaml as pyyaml

    from harness.submission import yamlsafe

    outcomes = []
    for cls in {yamlsafe._StrictLoader, *yamlsafe._LOADERS}:
        loader = cls(doc)
        try:
            outcomes.append(("ok", loader.get_single_data()))
        except pyyaml.YAMLError as e:
            outcomes.append(("refused", e.problem_mark.line if getattr(e, "problem_mark", None) else None))
        finally:
            loader.dispose()
    assert all(o == outcomes[0] for o in outcomes), outcomes
