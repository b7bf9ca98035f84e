"""Fuzzing the readers of untrusted input with hypothesis (a modest campaign; the large one is
``python scripts/fuzz.py --n 10000``): every YAML document, mutated submission, mutated record and
mutated examples file is either accepted, with its invariants holding, or refused with one line.
Never a traceback."""
from __future__ import annotations

import pytest
from helpers import fuzzing
from helpers.fuzzing import Tally
from hypothesis import HealthCheck, given, settings

SETTINGS = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    fuzzing.check_base_inputs(d / "base")
    return d


def _assert_clean(tally: Tally) -> None:
    assert tally.total("traceback") == 0, tally.examples
    assert tally.total("false-accept") == 0, tally.examples
    assert tally.total() > 0


def test_yaml_documents(workdir):
    tally = Tally()

    @SETTINGS
    @given(fuzzing.yaml_documents())
    def run(data):
        fuzzing.run_yaml(tally, workdir / "yaml", data)

    run()
    _assert_clean(tally)


def test_submission_schema(workdir):
    tally = Tally()

    @SETTINGS
    @given(fuzzing.specs())
    def run(spec):
        fuzzing.run_schema(tally, workdir / "schema", spec)

    run()
    _assert_clean(tally)
    assert tally.total("refused") > 0


def test_result_records(workdir):
    tally = Tally()

    @SETTINGS
    @given(fuzzing.records())
    def run(text):
        fuzzing.run_record(tally, workdir / "record", text)

    run()
    _assert_clean(tally)
    assert tally.total("refused") > 0


def test_examples_files(workdir):
    tally = Tally()

    @SETTINGS
    @given(fuzzing.examples_files())
    def run(npz):
        fuzzing.run_npz(tally, workdir / "npz", npz)

    run()
    _assert_clean(tally)
    assert tally.total("refused") > 0


def test_signed_records(workdir):
    """A signed record, mutated anywhere (bytes, fields, the signature block, its examples file), is
    refused in one line unless it is the very record that was signed (a new layout of the JSON)."""
    tally = Tally()

    @SETTINGS
    @given(fuzzing.signed_records())
    def run(pair):
        fuzzing.run_signed(tally, workdir / "signed", pair)

    run()
    _assert_clean(tally)
    assert tally.total("refused") > 0 and tally.total("accepted") > 0
