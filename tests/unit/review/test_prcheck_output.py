"""Output hygiene of `harness pr-check`: strings from a pull request (the entry's name, a YAML field
name, a hosted checkpoint's address, file names, error texts) reach the terminal and
`$GITHUB_STEP_SUMMARY` only as inert text: no terminal escape sequence, no bidi override, no line or
paragraph separator, no C1 control, and no line of their own (a `::error` workflow command)."""
from __future__ import annotations

import re

import pytest
import yaml
from helpers.hosting import FileServer
from helpers.prcheck_repo import commit, make_repo, new_entry, pr_check

STRANGE = "\x1b[31mred\x1b[0m \u202eevil\u202c \u2028sep\u2029 \x9b2J \x85nel\n::error file=x::pwned"
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    return make_repo(tmp_path, monkeypatch)


def assert_inert(*texts: str, actions: bool = False) -> None:
    for text in texts:
        assert not RAW.search(text), repr(RAW.search(text))
        for line in text.splitlines():
            if actions and line.startswith("::error title=pr-check::"):
                assert "::error" not in line[len("::error title=pr-check::"):].split("::", 1)[0]
                continue
            assert not line.lstrip().startswith("::"), line


@pytest.mark.parametrize("actions", [False, True])
def test_a_name_with_escapes_bidi_separators_and_c1_is_shown_inert(repo, tmp_path, capsys, monkeypatch, actions):
    """The entry's name is shown in the report. A schema that refuses such names (control
    characters are refused there) makes it a problem line instead: inert either way."""
    name = "Nice \u202eledom\u202c \u2028 model \x9b2J\x85 end"
    new_entry(repo, "strange", name=name)
    commit(repo)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    if actions:
        monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, problems, err = pr_check(repo, capsys)
    assert_inert(out, err, summary.read_text(), actions=actions)
    if code == 0:  # the name is accepted: it is in the report, escaped
        assert "Entry name: Nice \\u202eledom\\u202c model \\x9b2J end." in out
    else:
        assert len(problems) == 1 and "name" in problems[0]


@pytest.mark.parametrize("actions", [False, True])
def test_a_field_name_with_every_stranger_character_is_one_inert_line(repo, tmp_path, capsys, monkeypatch, actions):
    """An unknown YAML field named with ESC sequences, U+202E, U+2028, C1 controls and a
    `\\n::error ...` line: its problem is one line, everywhere."""
    folder = new_entry(repo, "strange")
    spec = yaml.safe_load((folder / "submission.yaml").read_text())
    spec[STRANGE] = 1
    (folder / "submission.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))  # escaped in double quotes
    commit(repo)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    if actions:
        monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, problems, err = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1
    # the schema refuses control and format characters in every string, field names included
    assert "must not contain control or format characters" in problems[0]
    assert "\\x1b[31mred" in problems[0] and "::error file=x::pwned" in problems[0]  # shown, escaped, on one line
    assert_inert(out, err, summary.read_text(), actions=actions)
    listed = out.split("### Problems\n\n", 1)[1].splitlines()[0]
    assert listed.startswith("- submissions/strange/submission.yaml: ") and "pwned" in listed


def test_a_hosted_address_with_stranger_characters_is_inert_in_messages(repo, tmp_path, capsys, monkeypatch):
    """The address is echoed in the step messages and in the fetch error: both inert."""
    with FileServer(tmp_path) as srv:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(srv.ca_file))
        url = f"{srv.base}/ckpt/\x1b]0;title\x07\u202e\x9bmodel.safetensors"
        new_entry(repo, "strange-url", url=url, sha="0" * 64)
        commit(repo)
        summary = tmp_path / "summary.md"
        monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
        from harness.cli import main

        code = main(["pr-check", "--base", "main", "--root", str(repo)])  # with the step messages
        out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err
    assert_inert(out, err, summary.read_text())
    # the schema refuses the address for its control characters, naming the field
    assert "model.checkpoint.url: must not contain control or format characters" in out + err
