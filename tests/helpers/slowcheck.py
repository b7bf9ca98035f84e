"""A pytest plugin that fails a test not marked ``slow`` when it takes longer than a threshold.

``python -m pytest -m "not slow"`` is the inner loop; it stays fast only if every slow test is
marked. So a test that is not marked ``slow`` and whose setup plus call take longer than
``slow_threshold`` seconds fails with one line naming it, its time, and the mark to add.

- The threshold is the ini option ``slow_threshold`` (seconds; pyproject.toml sets it), or the
  environment variable ``ROBUST_FRONTIER_SLOW_THRESHOLD_S``, which wins. The issue asks for "about
  5 s"; the default sits a bit above it, at 8 s on CI's 2-core box, so noise there does not fail CI.
- ``ROBUST_FRONTIER_SLOW_CHECK=0`` switches the check off, for a machine known to be slow.
- The setup phase counts as well as the call: a fixture that takes 30 s makes the inner loop slow
  however cheap the test body is. A module- or session-scoped fixture is charged to the first test
  that sets it up; once that test is marked ``slow``, the next unmarked user of the fixture is
  charged under ``-m "not slow"``, which is the run the check protects. Teardown does not count.
- Only a test that passed is turned into a failure; a test that failed or was skipped is left so.

conftest.py loads this module; a pytester test loads it with ``-p slowcheck``.
"""
from __future__ import annotations

import os

import pytest

THRESHOLD_ENV = "ROBUST_FRONTIER_SLOW_THRESHOLD_S"
SWITCH_ENV = "ROBUST_FRONTIER_SLOW_CHECK"
DEFAULT_THRESHOLD_S = 8.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("slow_threshold", f"seconds (setup + call) past which a test must be marked slow "
                  f"(env {THRESHOLD_ENV} wins; {SWITCH_ENV}=0 switches the check off)",
                  default=str(DEFAULT_THRESHOLD_S))


def threshold_s(config: pytest.Config) -> float | None:
    """The threshold in seconds, or None when the check is off."""
    if os.environ.get(SWITCH_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    raw = os.environ.get(THRESHOLD_ENV) or config.getini("slow_threshold") or DEFAULT_THRESHOLD_S
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(f"slow_threshold / {THRESHOLD_ENV} must be a number of seconds, not {raw!r}")
    return value if value > 0 else None


_SETUP = pytest.StashKey[float]()
_LIMIT = pytest.StashKey["float | None"]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_LIMIT] = threshold_s(config)  # a bad value stops the run here, before any test


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when == "setup":
        item.stash[_SETUP] = report.duration
        return
    if report.when != "call" or not report.passed or item.get_closest_marker("slow") is not None:
        return
    limit = item.config.stash.get(_LIMIT, None)
    if limit is None:
        return
    setup = item.stash.get(_SETUP, 0.0)
    took = setup + report.duration
    if took > limit:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} took {took:.1f} s (setup {setup:.1f} s + call {report.duration:.1f} s), "
                           f"over the {limit:g} s limit for a test not marked slow: mark it @pytest.mark.slow")
