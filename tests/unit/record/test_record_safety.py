"""Issue 16: a record is never lost or silently shrunk, and a metadata-only edit of a submission keeps
its record (``provenance.results_sha256``)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.core.errors import HarnessError, one_line
from harness.core.files import sha256_file
from harness.record.read import read_record
from harness.runner import evaluate as pipeline
from harness.runner.evaluate import check_out_path, evaluate, record_destination
from harness.stages import EvalOptions
from harness.submission.load import load_submission, parse_submission
from harness.submission.manifest import legacy_digest
from harness.submission.schema import results_sha256
from leaderboard.boards import load_entries

REPO = Path(__file__).resolve().parents[3]


def _copy_entry(root: Path, sid: str, *, record: bool = True) -> Path:
    """``submissions/<sid>/`` (and its committed record) of the repository, copied under ``root``."""
    shutil.copytree(REPO / "submissions" / sid, root / "submissions" / sid)
    if record:
        res = root / "leaderboard" / "results"
        res.mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".examples.npz"):
            shutil.copy(REPO / "leaderboard" / "results" / f"{sid}{suffix}", res / f"{sid}{suffix}")
        if not (root / "leaderboard" / "keys").exists():  # the committed records are signed
            shutil.copytree(REPO / "leaderboard" / "keys", root / "leaderboard" / "keys")
    return root / "submissions" / sid / "submission.yaml"


def _edit_yaml(path: Path, fn) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def _migrate():
    spec = importlib.util.spec_from_file_location("migrate_records", REPO / "scripts" / "migrate_records.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _as_legacy(record_json: Path, yaml_path: Path) -> None:
    """The record as made before results_sha256 (and its folder digest of then)."""
    d = json.loads(record_json.read_text(encoding="utf-8"))
    d["provenance"].pop("results_sha256", None)
    d.pop("signature", None)  # edited here, so no longer signed: the board reads it with --local
    d["provenance"]["submission_sha256"] = sha256_file(yaml_path)
    d["provenance"]["files_sha256"] = legacy_digest(load_submission(yaml_path))
    record_json.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------ never shrink a record
def test_a_smaller_run_never_replaces_the_committed_record(tmp_path, capsys):
    """CONTRIBUTING's `harness eval --n-examples 10 --only clean`, aimed at a committed 500-point record."""
    y = _copy_entry(tmp_path, "mnist-pgd")
    committed = tmp_path / "leaderboard" / "results" / "mnist-pgd.json"
    before = committed.read_bytes(), committed.with_name("mnist-pgd.examples.npz").read_bytes()
    assert read_record(committed).n_examples == 500
    assert main(["eval", str(y), "--n-examples", "10", "--only", "clean", "--device", "cpu", "--no-progress",
                 "--out", str(committed)]) == 0
    out = capsys.readouterr().out
    assert (committed.read_bytes(), committed.with_name("mnist-pgd.examples.npz").read_bytes()) == before
    partial = committed.parent / ".partial" / "mnist-pgd.json"
    rec = read_record(partial)
    assert rec.n_examples == 10 and rec.stages == ["clean"]
    said = [line for line in out.splitlines() if ".partial" in line and "500 examples" in line]
    assert len(said) == 1 and "does not replace" in said[0]
    assert f"record:   {partial}" in out


def test_the_default_output_is_a_scratch_path_and_no_progress_bar_goes_to_a_log(tmp_path, capsys, monkeypatch):
    """No --out: leaderboard/results/local/<id>.json (git-ignored), never the tracked record; and with
    stderr not a terminal (a CI log), no progress bar even without --no-progress."""
    y = _copy_entry(tmp_path, "mnist-standard")
    committed = tmp_path / "leaderboard" / "results" / "mnist-standard.json"
    before = committed.read_bytes()
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # (conftest sets it for every other test)
    assert not sys.stderr.isatty()
    assert main(["eval", str(y), "--n-examples", "20", "--only", "clean", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert committed.read_bytes() == before
    local = tmp_path / "leaderboard" / "results" / "local" / "mnist-standard.json"
    assert read_record(local).n_examples == 20
    assert "\r" not in err and "blocks" not in err, err
    # the README's command writes under an ignored path
    assert "leaderboard/results/local/" in (REPO / ".gitignore").read_text().splitlines()


def test_progress_bars_only_on_a_terminal(monkeypatch):
    from harness.cli import build_parser, show_progress

    args = build_parser().parse_args(["eval", "x.yaml"])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not show_progress(args)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert show_progress(args)
    assert not show_progress(build_parser().parse_args(["eval", "x.yaml", "--no-progress"]))


def test_fewer_stages_go_to_partial_and_the_same_or_more_replace(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    for suffix in (".json", ".examples.npz"):
        shutil.copy(REPO / "leaderboard" / "results" / f"mnist-pgd{suffix}", res / f"mnist-pgd{suffix}")
    out = res / "mnist-pgd.json"
    full = read_record(out)
    said: list[str] = []
    fewer = full.model_copy(update={"stages": ["clean", "flops"]})
    assert record_destination(out, fewer, said.append) == res / ".partial" / "mnist-pgd.json"
    assert len(said) == 1 and "clean,flops" in said[0]
    assert record_destination(out, full, said.append) == out
    assert record_destination(res / "new.json", fewer, said.append) == res / "new.json"
    assert len(said) == 1
    # a file that is not a readable record is not replaced either
    (res / "junk.json").write_text("not json")
    assert record_destination(res / "junk.json", full, said.append) == res / ".partial" / "junk.json"
    assert "not a readable record" in said[-1]


def test_out_must_be_a_regular_file_or_a_new_path(tmp_path, make_submission, capsys):
    check_out_path(tmp_path / "new" / "deeper" / "x.json")  # a new path: fine
    (tmp_path / "old.json").write_text("{}")
    check_out_path(tmp_path / "old.json")  # a regular file: fine
    folder = tmp_path / "folder.json"
    folder.mkdir()
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "old.json")
    for bad, what in ((folder, "a folder"), (fifo, "a FIFO"), (link, "a symlink"), (Path("/dev/null"), "")):
        with pytest.raises(HarnessError, match="regular file or a new path") as e:
            check_out_path(bad)
        assert what in str(e.value)
    for bad in (tmp_path / "x.txt", tmp_path / "a b.json", tmp_path / "old.json" / "x.json"):
        with pytest.raises(HarnessError):
            check_out_path(bad)
    # through the CLI: one line, before anything runs, and the FIFO and the folder are left as they were
    y = make_submission("outcheck")
    for bad in (folder, fifo):
        assert main(["eval", str(y), "--only", "clean", "--device", "cpu", "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out") and err.count("\n") == 1
    assert folder.is_dir() and not any(folder.iterdir()) and os.path.exists(fifo)
    import stat
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# -------------------------------------------------------------------------- metadata edits keep records
def test_results_hash_ignores_metadata_only(tmp_path):
    y = _copy_entry(tmp_path, "mnist-pgd", record=False)
    base = results_sha256(parse_submission(y)[0].spec)
    for edit in (lambda d: d.update(name="another name", license="Apache-2.0", notes="typo fixed"),
                 lambda d: d.update(authors=["someone else"], paper={"title": "A paper", "year": 2024}),
                 lambda d: d["training"].update(command="python train.py", seed=7),
                 lambda d: d["evaluation"].update(batch_size=500),  # its default, written out: same
                 lambda d: d["evaluation"].update(limits={"memory": "4G"})):
        _edit_yaml(y, edit)
        assert results_sha256(parse_submission(y)[0].spec) == base
    for edit in (lambda d: d["threat_model"].update(eps=0.2), lambda d: d["evaluation"].update(n_examples=400),
                 lambda d: d["model"]["preprocessing"].update(mean=[0.1]), lambda d: d["training"].update(epochs=9),
                 lambda d: d["model"]["checkpoint"].update(sha256="0" * 64)):
        original = y.read_text()
        _edit_yaml(y, edit)
        assert results_sha256(parse_submission(y)[0].spec) != base
        y.write_text(original)


def test_a_metadata_edit_keeps_the_record_on_the_board(tmp_path):
    y = _copy_entry(tmp_path, "mnist-pgd")
    record_json = tmp_path / "leaderboard" / "results" / "mnist-pgd.json"
    _as_legacy(record_json, y)
    migrate = _migrate()
    assert migrate.main(["--root", str(tmp_path), "--check"]) == 1
    assert migrate.main(["--root", str(tmp_path)]) == 0
    rec = read_record(record_json)
    sub = load_submission(y)
    assert rec.provenance.results_sha256 == sub.results_sha256 and rec.provenance.files_sha256 == sub.files_sha256
    assert migrate.main(["--root", str(tmp_path), "--check"]) == 0  # up to date now
    assert [e.id for e in load_entries(tmp_path, local=True).entries] == ["mnist-pgd"]
    # a licence typo fixed, a new name: the record stays valid
    _edit_yaml(y, lambda d: d.update(license="Apache-2.0", name="PGD-10 CNN (renamed)"))
    assert [e.id for e in load_entries(tmp_path, local=True).entries] == ["mnist-pgd"]
    # a result-relevant edit: refused, naming the field
    _edit_yaml(y, lambda d: d["threat_model"].update(eps=0.25))
    with pytest.raises(HarnessError, match="provenance.results_sha256: results hash mismatch"):
        load_entries(tmp_path, local=True)


def test_migration_blesses_nothing_unverified(tmp_path, capsys):
    y = _copy_entry(tmp_path, "mnist-pgd")
    record_json = tmp_path / "leaderboard" / "results" / "mnist-pgd.json"
    _as_legacy(record_json, y)
    _edit_yaml(y, lambda d: d.update(name="changed before migrating"))
    before = record_json.read_bytes()
    assert _migrate().main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not upgraded" in err and "submission_sha256" in err and err.count("\n") == 1
    assert record_json.read_bytes() == before
    # and a legacy record is still tied by the file's own hash: the edit is refused
    with pytest.raises(HarnessError, match="submission hash mismatch"):
        load_entries(tmp_path, local=True)


def test_a_metadata_edit_does_not_rerun_the_evaluation(tmp_path, monkeypatch):
    y = _copy_entry(tmp_path, "mnist-standard", record=False)
    out = tmp_path / "rec" / "mnist-standard.json"
    opts = EvalOptions(device="cpu", n_examples=20, progress=False)
    first = evaluate(y, opts, stages=["clean"], out=out, echo=lambda s: None)
    clean = first.record.clean_accuracy

    def no_run(*a, **k):
        raise AssertionError("a stage ran again")

    monkeypatch.setattr(pipeline, "_run_in_worker", no_run)
    monkeypatch.setattr(pipeline, "load_model", no_run)
    # the record is there: it is updated in place, nothing runs
    _edit_yaml(y, lambda d: d.update(name="renamed model", license="Apache-2.0"))
    said: list[str] = []
    res = evaluate(y, opts, stages=["clean"], out=out, echo=said.append)
    assert any("only metadata" in line and "without re-running" in line for line in said), said
    rec = read_record(out)
    assert rec.name == "renamed model" and rec.clean_accuracy == clean
    assert rec.provenance.submission_sha256 == sha256_file(y) == res.record.provenance.submission_sha256
    # no record, but the state folder: every stage resumes
    out.unlink()
    _edit_yaml(y, lambda d: d.update(notes="a note"))
    said.clear()
    res = evaluate(y, opts, stages=["clean"], out=out, echo=said.append)
    assert res.record.provenance.resumed_stages == ["clean"] and res.record.clean_accuracy == clean
    assert any("resumed" in line for line in said)
    # a result-relevant edit does run again
    _edit_yaml(y, lambda d: d["evaluation"].update(seed=1))
    with pytest.raises(AssertionError, match="ran again"):
        evaluate(y, opts, stages=["clean"], out=out, echo=lambda s: None)


def test_one_line_helper_is_what_messages_use():
    """The hand-rolled `' '.join(str(e).split())[:N]` is gone from the harness: harness.core.errors.one_line
    also escapes control characters."""
    for path in (REPO / "harness").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name != "errors.py":
            assert ".join(str(e).split())" not in text, path
    assert one_line("a\x1b[31mb\u202ec") == "a\\x1b[31mb\\u202ec"
