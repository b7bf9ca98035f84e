"""One settings object (harness.core.settings.Settings) holds the runner's limits and paths from the
environment; no other module reads a ROBUST_FRONTIER_* variable (the signing key's, read only by the
signing step, and the worker's own environment set-up excepted)."""
from __future__ import annotations

import re

import pytest
from helpers.spec import REPO

from harness.core import settings as st
from harness.core.errors import HarnessError

# modules allowed to name ROBUST_FRONTIER_* variables, and why
OWNERS = {
    "harness/core/settings.py": "the settings object",
    "harness/record/signing.py": "the signing key: a secret, read only by the signing step",
    "harness/sandbox/supervisor.py": "sets ROBUST_FRONTIER_CACHE in the worker's scrubbed environment",
    "harness/submission/hosted.py": "names the cache variable in its messages",
    "harness/cli.py": "--cache-dir sets ROBUST_FRONTIER_CACHE for the process and the workers it starts",
}


def test_settings_read_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUST_FRONTIER_MAX_MEMORY", "2G")
    monkeypatch.setenv("ROBUST_FRONTIER_CACHE", str(tmp_path))
    monkeypatch.setenv("ROBUST_FRONTIER_PLUGINS", "0")
    s = st.settings()
    assert (s.max_memory, s.cache, s.plugins) == ("2G", str(tmp_path), "0")
    assert st.maintainer_caps()["memory"] == 2 * 2**30
    from harness.submission.hosted import cache_dir

    assert cache_dir() == tmp_path


def test_a_bad_value_is_one_line_naming_its_variable(monkeypatch):
    monkeypatch.setenv("ROBUST_FRONTIER_MAX_STAGE_TIMEOUT_S", "nan")
    with pytest.raises(HarnessError) as e:
        st.maintainer_caps()
    assert "\n" not in str(e.value) and "ROBUST_FRONTIER_MAX_STAGE_TIMEOUT_S" in str(e.value)


def test_no_other_module_reads_the_variables():
    pattern = re.compile(r"ROBUST_FRONTIER_[A-Z_]+")
    readers = set()
    for p in sorted([*(REPO / "harness").rglob("*.py"), *(REPO / "leaderboard").rglob("*.py")]):
        rel = p.relative_to(REPO).as_posix()
        code = "\n".join(line for line in p.read_text().splitlines() if not line.lstrip().startswith("#"))
        if "environ" in code and pattern.search(code):
            readers.add(rel)
    assert readers <= set(OWNERS), sorted(readers - set(OWNERS))
