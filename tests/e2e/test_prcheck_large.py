"""A WRN-70-16-sized checkpoint (robustbench.WideResNet depth 70, widen 16: 267 M parameters, a
1.07 GB safetensors file of random weights, hosted over local HTTPS) gets through pr-check on a
CPU: the sandboxed forward pass finishes within the budget scaled by its FLOPs, which the harness
enforces itself (a run past it fails). The time of each step: benchmarks/bench_prcheck_large.py."""
from __future__ import annotations

import pytest
from helpers.hosting import FileServer
from helpers.prcheck_repo import check_rows, commit, make_repo, pr_check, wrn_70_16_entry


@pytest.mark.slow
def test_a_wrn_70_16_pr_finishes_within_its_budget(tmp_path, capsys, monkeypatch):
    repo = make_repo(tmp_path, monkeypatch)
    with FileServer(tmp_path) as srv:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(srv.ca_file))
        wrn_70_16_entry(repo, srv, tmp_path)
        commit(repo)
        code, out, problems, _ = pr_check(repo, capsys)
    assert code == 0, out
    rows = check_rows(out)
    assert rows["hosted checkpoint"].startswith("downloaded and verified: 1067.")
    assert rows["architecture (meta device)"].startswith("robustbench.WideResNet: 267 M parameters")
    assert rows["FLOPs (fvcore, on the empty model)"].startswith("38.8 G per forward pass")
    fwd = rows["forward pass (sandboxed worker)"]
    assert fwd.startswith("4 random inputs 3x32x32: ") and "scaled by the FLOPs" in fwd
    budget = 60 + 6 * 38.78e9 / 1e9 + 1.067e9 / 20e6  # the stated formula, about 346 s per phase
    assert f"budget {budget:.0f} s per phase" in fwd
    assert rows["logits"] == "shape (4, 10), all finite"
