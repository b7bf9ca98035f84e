"""``harness validate``, ``harness schema`` and ``harness leaderboard build`` import no torch (issue 17).

Each command runs through ``harness.cli.main`` in a fresh interpreter (the test process itself has
torch loaded by conftest), in the repository, on every bundled submission and the real results; the
child then lists which of the heavy packages ended up in ``sys.modules``. When one does, the child
also names the module whose import pulled it in first, so a failure points at the edge to cut.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "pyautoattack", "autoattack", "robustbench", "fvcore", "timm")

CHILD = r"""
import builtins, json, sys, traceback
heavy, argv, repo = json.loads(sys.argv[1])
first = {}
_import = builtins.__import__

def _hook(name, globals=None, locals=None, fromlist=(), level=0):
    top = name.split(".")[0] if level == 0 else ""
    if top in heavy and top not in sys.modules and top not in first:
        ours = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[:-1] if f.filename.startswith(repo)]
        first[top] = " <- ".join(reversed(ours)) or "(outside the repository)"
    return _import(name, globals, locals, fromlist, level)

builtins.__import__ = _hook
from harness.cli import main
rc = main(argv)
print(json.dumps({"rc": rc, "loaded": {m: first.get(m, "(set in sys.modules)") for m in heavy if m in sys.modules}}))
"""


def _run(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([HEAVY, argv, str(REPO)])], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _assert_torch_free(res: dict, what: str) -> None:
    assert res["rc"] == 0, f"{what} failed"
    assert not res["loaded"], f"{what} imported " + "; ".join(f"{m} via {via}" for m, via in res["loaded"].items())


def test_validate_all_bundled_submissions_imports_no_torch():
    subs = sorted(str(p.relative_to(REPO)) for p in (REPO / "submissions").iterdir()
                  if (p / "submission.yaml").is_file())
    assert "submissions/mnist-pgd" in subs
    # a RobustBench class is among them: its name is checked without importing robustbench
    assert "robustbench." in (REPO / "submissions/cifar10-autoattack-resnet18/submission.yaml").read_text()
    _assert_torch_free(_run(["validate", *subs]), "harness validate " + " ".join(subs))


def test_schema_imports_no_torch():
    _assert_torch_free(_run(["schema"]), "harness schema")


@pytest.mark.slow
def test_leaderboard_build_imports_no_torch(tmp_path):
    out = tmp_path / "site"
    _assert_torch_free(_run(["leaderboard", "build", "--out", str(out)]), "harness leaderboard build")
    assert (out / "index.html").is_file() and (out / "leaderboard.json").is_file()


def test_the_check_itself_sees_torch(tmp_path):
    """The child's report is not vacuous: a command outside the torch-free three (keygen: main imports
    harness.models.compat, hence pyautoattack and torch, for it) is reported, with the importing line."""
    res = _run(["keygen", "--out", str(tmp_path / "keys")])
    assert res["rc"] == 0
    assert "torch" in res["loaded"] and "pyautoattack" in res["loaded"]
    where = res["loaded"]["pyautoattack"]
    assert "harness/models/compat.py" in where and "harness/cli.py" in where
