"""The GitHub workflows: actionlint passes on each, and the security rules hold.

actionlint comes from the test extras (a pip wheel that ships the binary); without it this test
fails rather than skips. Shellcheck/pyflakes integrations are switched off so the result does
not depend on what else is installed.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
SHA_PIN = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")


def _actionlint() -> str:
    found = shutil.which("actionlint") or shutil.which("actionlint", path=sysconfig.get_path("scripts"))
    if not found:
        pytest.fail("actionlint is not installed: pip install -e '.[test]'")
    return found


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def _code(text: str) -> str:
    """The workflow without its comments (they may name what is forbidden, to explain why)."""
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())


def _uses(data: dict) -> list[str]:
    out = []
    for job in data["jobs"].values():
        if "uses" in job:
            out.append(job["uses"])
        out += [s["uses"] for s in job.get("steps", []) if "uses" in s]
    return out


def test_the_three_workflows_exist():
    names = {p.name for p in WORKFLOWS}
    assert {"pr-check.yml", "full-eval.yml", "pages.yml"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint_passes(path):
    out = subprocess.run([_actionlint(), "-no-color", "-oneline", "-shellcheck=", "-pyflakes=",
                          "-config-file", str(REPO / ".github" / "actionlint.yaml"), str(path)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """Guards the test above: the linter really runs and reports errors."""
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - run: echo ${{ github.event.head_commit.message }}\n        shell: bashh\n")
    out = subprocess.run([_actionlint(), "-no-color", "-oneline", "-shellcheck=", "-pyflakes=", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "bad.yml" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_security_rules(path):
    text = path.read_text()
    data = _load(path)
    assert "pull_request_target" not in _code(text) and "pull_request_target" not in data["on"]
    assert "workflow_run" not in data["on"]
    # least privilege: nothing by default, every job states what it needs
    assert data.get("permissions") == {}, "top-level permissions must be {}"
    for name, job in data["jobs"].items():
        assert "permissions" in job, f"job {name} has no permissions:"
    # every third-party action pinned by a full commit SHA, with its version tag beside it
    for use in _uses(data):
        if use.startswith("./"):
            continue
        assert SHA_PIN.match(use), f"{use} is not pinned to a 40-hex commit SHA"
    for line in text.splitlines():
        if re.match(r"\s*(- )?uses:", line) and "./" not in line:
            assert re.search(r"@[0-9a-f]{40} # v\d+(\.\d+)*\s*$", line), f"no version comment: {line.strip()}"
    triggers = data["on"] if isinstance(data["on"], dict) else {t: None for t in data["on"]}
    if "pull_request" in triggers:  # the PR's code and data run here: read-only, no secrets
        assert "secrets." not in _code(text)
        for name, job in data["jobs"].items():
            assert job["permissions"] == {"contents": "read"}, f"{name}: a PR job may only read"
            for step in job.get("steps", []):
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False


def test_pr_workflows_run_the_base_commits_checker():
    """The checker is the base commit's harness, installed from its own checkout and run as the
    console script, so a PR cannot rewrite the check it is judged by."""
    for name in ("pr-check.yml", "full-eval.yml"):
        data = _load(REPO / ".github" / "workflows" / name)
        steps = [s for job in data["jobs"].values() for s in job["steps"]]
        refs = [s["with"].get("ref") for s in steps if s.get("uses", "").startswith("actions/checkout@")]
        assert "${{ github.event.pull_request.base.sha }}" in refs
        runs = "\n".join(s.get("run", "") for s in steps)
        assert "pip install ./trusted" in runs
        assert "python -m harness" not in runs and "pip install -e" not in runs


def test_full_eval_is_gated_by_the_label_and_uploads_artifacts():
    data = _load(REPO / ".github" / "workflows" / "full-eval.yml")
    assert data["on"] == {"pull_request": {"types": ["labeled"]}}
    (job,) = data["jobs"].values()
    assert job["if"] == "github.event.label.name == 'full-eval'"
    assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
    upload = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload and ".examples.npz" in upload[0]["with"]["path"] and ".json" in upload[0]["with"]["path"]


def test_pages_publishes_the_leaderboard_on_push_to_main():
    data = _load(REPO / ".github" / "workflows" / "pages.yml")
    assert data["on"]["push"] == {"branches": ["main"]} and "pull_request" not in data["on"]
    build, deploy = data["jobs"]["build"], data["jobs"]["deploy"]
    assert any("harness leaderboard build" in s.get("run", "") for s in build["steps"])
    assert any(s.get("uses", "").startswith("actions/upload-pages-artifact@") for s in build["steps"])
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]
    assert build["permissions"] == {"contents": "read"}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
