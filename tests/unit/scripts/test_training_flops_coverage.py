"""scripts/training_flops_coverage.py: the count of CIFAR-10 Linf rows with training FLOPs (issue 18: at
least 60) and one line per unknown row with the facts it lacks, checked against the build's own entries."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow  # loads the whole board twice: ~5 s on a busy 2-core machine
def test_coverage_lists_every_unknown_row_with_what_it_lacks(capsys):
    spec = importlib.util.spec_from_file_location("training_flops_coverage", REPO / "scripts" /
                                                  "training_flops_coverage.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([]) == 0
    out = capsys.readouterr().out.splitlines()
    from leaderboard.boards import load_entries

    rows = [e for e in load_entries(REPO).entries if e.reported and (e.dataset, e.norm) == ("cifar10", "Linf")]
    known = sum(e.training_flops is not None for e in rows)
    assert known >= 60
    assert out[0].startswith(f"cifar10 Linf: {known} of {len(rows)} reported rows have training FLOPs")
    listed = {m.group(1): m.group(2) for line in out[2:] if (m := re.match(r"\s+[\d.]+\s+(\S+): (.+)$", line))}
    assert set(listed) == {e.reported["robustbench_id"] for e in rows if e.training_flops is None}
    assert all(("unknown" in why) or ("no multiplier" in why) for why in listed.values())
    assert mod._drop_note("the epochs are unknown (a note (nested) here)") == "the epochs are unknown"
