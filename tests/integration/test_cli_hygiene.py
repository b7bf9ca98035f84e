"""Issue 16: `harness validate` checks the licence, control characters and architecture names;
`harness eval` gives one line for bad input; names with mathtext build; train_mnist on a fresh clone."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.core.errors import one_line
from harness.models import architectures
from harness.submission import load as submission_load
from harness.submission import schema as submission_schema
from harness.submission.load import parse_submission
from harness.submission.schema import architecture_problem

REPO = Path(__file__).resolve().parents[2]


def _validate(capsys, path: Path) -> tuple[int, str]:
    rc = main(["validate", str(path)])
    return rc, capsys.readouterr().out


def _edit(path: Path, fn) -> Path:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------- licence
def test_validate_checks_the_licence(make_submission, capsys):
    y = make_submission("lic", license="MTI")  # a typo of MIT
    rc, out = _validate(capsys, y)
    assert rc == 1 and "license: 'MTI' is not an SPDX licence expression" in out and out.count("\n") == 1
    _edit(y, lambda d: d.update(license="LicenseRef-mine"))
    rc, out = _validate(capsys, y)
    assert rc == 1 and "custom licence reference" in out
    _edit(y, lambda d: d.update(license="Apache-2.0 OR MIT"))
    assert _validate(capsys, y)[0] == 0


def test_prcheck_still_imports_the_licence_check():
    from harness.review import prcheck

    assert prcheck.license_problems is submission_load.license_problems


# ------------------------------------------------------------------------------- control characters
FIELDS = {
    "name": lambda d, s: d.update(name=f"model {s} x"),
    "authors[0]": lambda d, s: d.update(authors=[f"A. {s}B"]),
    "paper.title": lambda d, s: d.update(paper={"title": f"On {s}it"}),
    "paper.venue": lambda d, s: d.update(paper={"title": "t", "venue": f"V{s}V"}),
    "license": lambda d, s: d.update(license=f"MIT{s}x"),
    "notes": lambda d, s: d.update(notes=f"line one\nline {s} two"),
    "training.command": lambda d, s: d["training"].update(command=f"python t.py {s} --x"),
}
CHARS = {"esc": "\x1b[31m", "c1-csi": "\x9b31m", "del": "\x7f", "rlo": "\u202e", "lri": "\u2066",
         "line-sep": "\u2028", "para-sep": "\u2029", "zwsp": "\u200b", "bom": "\ufeff"}


@pytest.mark.parametrize("char", list(CHARS.values()), ids=list(CHARS))
@pytest.mark.parametrize("field", list(FIELDS))
def test_control_characters_are_refused_naming_the_field(make_submission, capsys, field, char):
    y = _edit(make_submission("ctl"), lambda d: FIELDS[field](d, char))
    rc, out = _validate(capsys, y)
    assert rc == 1 and out.count("\n") == 1, out
    assert f"{field}: must not contain control or format characters" in out or (
        f"{field}: must be one line without control characters" in out), out
    assert out.isprintable() or out.endswith("\n") and out[:-1].isprintable()


def test_escaped_controls_in_double_quoted_yaml_are_refused(make_submission, capsys):
    """A YAML escape reaches the schema unfolded (a raw NEL or U+2028 would be read as a line break)."""
    y = make_submission("esc")
    text = y.read_text(encoding="utf-8")
    for esc in ("\\N", "\\L", "\\P", "\\e", "\\u202E", "\\x9B"):
        y.write_text(text.replace("name: test model", f'name: "test {esc} model"'), encoding="utf-8")
        rc, out = _validate(capsys, y)
        assert rc == 1 and "name: must" in out and out.count("\n") == 1, (esc, out)


def test_notes_may_span_lines_and_plain_unicode_passes(make_submission, capsys):
    y = _edit(make_submission("uni"), lambda d: d.update(name="Modèle ε-robuste, 東京", notes="one\n\ttwo\nthree"))
    assert _validate(capsys, y) == (0, f"{y}: ok\n")


def test_a_control_character_in_a_file_name_is_escaped(make_submission, capsys):
    y = make_submission("fname")
    (y.parent / "evil\x1b[2J\u202e.txt").write_text("x")
    rc, out = _validate(capsys, y)
    assert rc == 1 and "\x1b" not in out and "\u202e" not in out and "\\x1b" in out


# -------------------------------------------------------------------------------- architecture names
@pytest.mark.parametrize("name, what", [
    ("mnist_big_cnn", "unknown architecture 'mnist_big_cnn'"),
    ("robustbench.Foo", "unknown architecture 'robustbench.Foo'"),
    ("robustbench.zoo:cifar10/Linf/NoSuchEntry2099", "no entry 'NoSuchEntry2099' for cifar10/Linf"),
    ("robustbench.zoo:cifar11/Linf/Carmon2019Unlabeled", "no dataset 'cifar11'"),
    ("robustbench.zoo:cifar10/Linf", "robustbench.zoo:<dataset>/<threat_model>/<name>"),
])
def test_validate_refuses_an_unknown_architecture(make_submission, capsys, name, what):
    y = _edit(make_submission("arch"), lambda d: d["model"].update(architecture=name))
    rc, out = _validate(capsys, y)
    assert rc == 1 and out.count("\n") == 1 and "model.architecture: " in out and what in out, out


def test_known_architectures_pass():
    for name in ("mnist_small_cnn", "robustbench.WideResNet", "robustbench.zoo:cifar10/Linf/Carmon2019Unlabeled",
                 "robustbench.zoo:imagenet/Linf/Salman2020Do_R18"):
        assert architecture_problem(name) is None, name
    # the torch-free list is the builder's
    assert set(submission_schema.BUILTIN_ARCHITECTURES) == set(architectures.BUILTIN)
    assert set(submission_schema.ROBUSTBENCH_CLASSES) == set(architectures.ROBUSTBENCH_CLASSES)


def test_a_registered_architecture_is_accepted(make_submission, monkeypatch):
    monkeypatch.setitem(architectures.BUILTIN, "toy_plugin_net", architectures.mnist_small_cnn)
    y = _edit(make_submission("plug"), lambda d: d["model"].update(architecture="toy_plugin_net"))
    assert parse_submission(y)[1] == []


# ------------------------------------------------------------------------------ eval: one-line errors
@pytest.mark.parametrize("argv, what", [
    (["--device", "cuda:abc"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--device", "mps"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--device", "cpu\x1b[2J"], "--device must be"),
    (["--device", "cuda:99"], "cuda"),
    (["--skip", "clean,flops,certify,autoattack,diagnostics"], "--skip leaves no stage to run"),
    (["--only", "clean,nope"], "unknown stage"),
    (["--only", ",,,"], "--only names no stage"),
    (["--train-data", "/nonexistent/train.npz"], "--train-data /nonexistent/train.npz: no such file"),
    (["--data-dir", "/nonexistent/data"], "--data-dir /nonexistent/data: no such folder"),
    (["--out", "/dev/null"], "a device"),
    (["--out", "record.txt"], "<name>.json"),
])
def test_eval_bad_input_is_one_line(make_submission, capsys, tmp_path, argv, what):
    y = make_submission("badin")
    rc = main(["eval", str(y), "--only", "clean", *argv] if "--only" not in argv and "--skip" not in argv
              else ["eval", str(y), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and what in err, err
    assert "\x1b" not in err
    assert not (tmp_path / "leaderboard").exists()


def test_dev_null_is_left_alone():
    assert Path("/dev/null").is_char_device()


# ------------------------------------------------------------------------------- mathtext in names
def test_a_name_with_mathtext_builds(tmp_path):
    from leaderboard.build import build_leaderboard
    from leaderboard.synthetic import resign, write_synthetic_repo

    root = tmp_path / "repo"
    ids = write_synthetic_repo(root, 4)
    for sid, name in zip(ids, (r"$\foo$", r"a $x^{$ b", r"$\frac{1}{0}$"), strict=False):
        p = root / "leaderboard" / "results" / f"{sid}.json"
        d = json.loads(p.read_text(encoding="utf-8"))
        d["name"] = name
        p.write_text(json.dumps(d), encoding="utf-8")
        resign(root, p)  # as if the trusted evaluation had written the name
    out = build_leaderboard(root, tmp_path / "site")
    svgs = "".join(p.read_text(encoding="utf-8") for p in (out / "plots").glob("*.svg"))
    assert r"$\foo$" in svgs


# ------------------------------------------------------------------------------ train_mnist data
def test_train_mnist_says_which_file_to_pass(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("train_mnist", REPO / "scripts" / "train_mnist.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_mnist", mod)  # (its dataclasses look their module up)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "DEFAULT_TRAIN", tmp_path / "absent" / "mnist_train.npz")  # a fresh clone
    monkeypatch.chdir(tmp_path)
    assert mod.main(["--method", "standard", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --train-data FILE" in err and "mnist_train.npz" in err
    assert mod.main(["--method", "standard", "--train-data", "nope.npz", "--out", str(tmp_path / "o")]) == 2
    assert "--train-data nope.npz: no such file" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    assert mod.main(["--method", "standard", "--train-data", "bad.npz", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "bad.npz" in err
    assert not (tmp_path / "o").exists()
    # the test set for --check ships with the harness
    assert mod.DEFAULT_TEST.is_file()
    one_line(err)


def test_the_eval_summary_escapes_what_the_worker_wrote():
    from harness.cli import summary_table
    from harness.record.read import read_record

    rec = read_record(REPO / "leaderboard" / "results" / "mnist-pgd.json")
    evil = "\x1b[2J\x1b]0;owned\x07 \u202ethgir\u2028::error ::x"
    aa = rec.autoattack.model_copy(update={"checks": [evil], "version": f"standard{evil}"})
    rec = rec.model_copy(update={"autoattack": aa, "flops_error": evil, "certify_skipped": evil})
    text = summary_table(rec)
    assert not any(c in text for c in "\x1b\x07\u202e\u2028"), text
    assert "\\x1b" in text
