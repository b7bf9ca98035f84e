"""``harness eval`` with ``certify: [complete]`` on the bundled MNIST IBP-trained model, in the sandboxed
worker: verdict counts and the exact robust accuracy in the record, the per-example sandwich, and a run
killed (SIGKILL) inside ``complete`` whose rerun keeps the decided examples and redoes only the rest."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.record.read import read_examples, read_record

N = 6


def _submission(repo: Path, tmp: Path) -> Path:
    folder = tmp / "mnist-ibp-complete"
    shutil.copytree(repo / "submissions" / "mnist-ibp", folder)
    spec = yaml.safe_load((folder / "submission.yaml").read_text())
    spec["id"] = "mnist-ibp-complete"
    spec["evaluation"].update({"certify": ["complete"], "certify_budget_s": 3, "n_examples": N, "batch_size": N,
                               "eps_max": 0.6, "radius_tol": 0.02})  # a radius search: seconds per example
    (folder / "submission.yaml").write_text(yaml.safe_dump(spec))
    for p in (tmp, folder):
        p.chmod(0o755)  # the sandboxed worker (uid 65534 under root) reads them
    return folder


def _eval(repo: Path, folder: Path, out: Path, **kw):
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "harness", "eval", str(folder), "--out", str(out), "--n-examples", str(N),
           "--skip", "diagnostics"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def test_complete_end_to_end_and_resume_after_sigkill(repo, tmp_path):
    folder = _submission(repo, tmp_path)
    out = tmp_path / "out" / "rec.json"
    out.parent.mkdir(mode=0o755)
    proc = _eval(repo, folder, out)
    killed, deadline = False, time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        decided = list((out.parent / ".state").glob("*/*/certify/progress/complete-*/*.json"))
        if len(decided) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    output = proc.communicate()[0] if not killed else ""
    proc.wait()
    assert killed, output[-3000:]
    kept = {p.stem: json.loads(p.read_text()) for p in
            (out.parent / ".state").glob("*/*/certify/progress/complete-*/*.json")}
    assert 2 <= len(kept) < N and not out.exists()
    proc = _eval(repo, folder, out)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    assert "verdicts, complete" in output and "exact robust accuracy" in output or "unknown" in output
    rec = read_record(out)
    arrays = read_examples(rec, out)  # the record's checks: counts, verdict arrays, upper bound, sandwich
    c = rec.certified["complete"]
    d = c.details
    v = arrays["verdict_complete"]
    assert d["verified"] + d["falsified"] + d["unknown"] == N
    assert [int((v == k).sum()) for k in (1, 2, 0)] == [d["verified"], d["falsified"], d["unknown"]]
    assert d["resumed"] >= len(kept)  # the rerun read the killed run's decided examples back
    index = arrays["index"].tolist()
    for stem, row in kept.items():  # and used them as they were
        i = index.index(int(stem))
        assert v[i] == row["verdict"] and arrays["seconds_complete"][i] == np.float32(row["seconds"])
    if d["unknown"] == 0:
        assert d["exact_robust_accuracy"] == pytest.approx(c.certified_accuracy)
        assert d["sandwich_closed"] is True
    else:
        assert d["exact_robust_accuracy"] is None
    # certify-first: AutoAttack skipped the verified examples
    assert rec.autoattack.n_skipped_certified == d["verified"]
    cert, correct = arrays["certified_complete"], arrays["clean_correct"]
    assert not (cert & ~arrays["autoattack_robust"]).any() and not (cert & ~correct).any()
    assert not (cert & arrays["falsified_complete"]).any()
