"""The conftest hook (tests/helpers/slowcheck.py) that fails a test not marked slow past the threshold."""
from __future__ import annotations

import pytest
from helpers.slowcheck import threshold_s

pytest_plugins = ["pytester"]

BODY = """
import time
import pytest

def test_unmarked():
    time.sleep(0.5)

@pytest.mark.slow
def test_marked():
    time.sleep(0.5)

def test_quick():
    pass

@pytest.fixture
def slow_fixture():
    time.sleep(0.2)

def test_slow_setup(slow_fixture):
    pass

def test_slow_and_failing():
    time.sleep(0.2)
    assert False, "its own failure"
"""


def run(pytester: pytest.Pytester, monkeypatch, *args: str, threshold: str | None = "0.1"):
    monkeypatch.delenv("ROBUST_FRONTIER_SLOW_THRESHOLD_S", raising=False)
    monkeypatch.delenv("ROBUST_FRONTIER_SLOW_CHECK", raising=False)
    pytester.makepyfile(test_body=BODY)
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n"
                     + (f"slow_threshold = {threshold}\n" if threshold is not None else ""))
    return pytester.runpytest_inprocess("-p", "helpers.slowcheck", "-p", "no:cacheprovider", *args)


def test_an_unmarked_slow_test_fails_naming_it_and_a_marked_one_passes(pytester, monkeypatch):
    result = run(pytester, monkeypatch)
    outcomes = {r.nodeid.split("::")[-1]: r.outcome for r in result.reprec.getreports("pytest_runtest_logreport")
                if r.when == "call"}
    assert outcomes == {"test_unmarked": "failed", "test_marked": "passed", "test_quick": "passed",
                        "test_slow_setup": "failed", "test_slow_and_failing": "failed"}
    result.stdout.re_match_lines([r".*test_body.py::test_unmarked took \d+\.\d s "
                                  r"\(setup \d+\.\d s \+ call \d+\.\d s\), "
                                  r"over the 0.1 s limit for a test not marked slow: mark it @pytest.mark.slow$"])
    text = result.stdout.str()
    assert "test_slow_setup took" in text      # a slow per-test fixture counts
    assert "its own failure" in text and "test_slow_and_failing took" not in text  # its own failure is kept


class Ini:
    def __init__(self, value: str):
        self.value = value

    def getini(self, name: str) -> str:
        assert name == "slow_threshold"
        return self.value


def test_the_environment_overrides_and_switches_off_the_check(monkeypatch):
    monkeypatch.delenv("ROBUST_FRONTIER_SLOW_THRESHOLD_S", raising=False)
    monkeypatch.delenv("ROBUST_FRONTIER_SLOW_CHECK", raising=False)
    assert threshold_s(Ini("8")) == 8.0
    assert threshold_s(Ini("0")) is None
    monkeypatch.setenv("ROBUST_FRONTIER_SLOW_THRESHOLD_S", "0.1")
    assert threshold_s(Ini("8")) == 0.1
    monkeypatch.setenv("ROBUST_FRONTIER_SLOW_CHECK", "0")
    assert threshold_s(Ini("8")) is None
    monkeypatch.setenv("ROBUST_FRONTIER_SLOW_CHECK", "1")
    monkeypatch.setenv("ROBUST_FRONTIER_SLOW_THRESHOLD_S", "soon")
    with pytest.raises(pytest.UsageError, match="'soon'"):
        threshold_s(Ini("8"))


def test_the_repository_sets_the_threshold(pytestconfig):
    assert float(pytestconfig.getini("slow_threshold")) == 8.0
