"""Throw-away git repositories for the `harness pr-check` tests (tests/unit/review/test_prcheck*.py).

`make_repo` builds a base commit on `main` holding two real entries (mnist-standard and mnist-pgd:
their folders and records copied from this repository), `leaderboard/reported.csv`, and stand-ins
for the harness code, a workflow and pyproject.toml; HEAD is a fresh branch `pr` off it.
`new_entry` adds a submission folder (by default a copy of mnist-standard's with a fresh
random-weight checkpoint, so that it is no duplicate), `pr_check` runs the command in process and
checks the invariants every run must keep: no traceback, one stderr line per problem, as in the
report.
"""
from __future__ import annotations

import mmap
import os
import shutil
import subprocess
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from harness.cli import main
from harness.core.files import sha256_file
from harness.submission.hosted import CACHE_ENV
from helpers.spec import REPO

BASE_ENTRIES = ("mnist-standard", "mnist-pgd")
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def make_repo(tmp_path: Path, monkeypatch=None) -> Path:
    """The fixture repository in ``tmp_path/repo``; the checkpoint cache in ``tmp_path/cache`` (set
    through ``monkeypatch`` in a test, in ``os.environ`` without it, e.g. in a benchmark)."""
    if monkeypatch is not None:
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
        monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
        monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    else:
        os.environ[CACHE_ENV] = str(tmp_path / "cache")
    root = tmp_path / "repo"
    results = root / "leaderboard" / "results"
    results.mkdir(parents=True)
    for eid in BASE_ENTRIES:
        shutil.copytree(REPO / "submissions" / eid, root / "submissions" / eid)
        for suffix in (".json", ".examples.npz"):
            shutil.copy(REPO / "leaderboard" / "results" / f"{eid}{suffix}", results / f"{eid}{suffix}")
    for rel in ("leaderboard/reported.csv", "leaderboard/training_recipes.csv"):
        shutil.copy(REPO / rel, root / rel)
    (root / "harness").mkdir()
    (root / "harness" / "worker.py").write_text("# stands in for the harness code\n")
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "full-eval.yml").write_text("name: full-eval\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'stand-in'\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    git(root, "checkout", "-qb", "pr")
    return root


def commit(root, msg="pr"):
    git(root, "add", "-A")
    git(root, "commit", "-qm", msg)


def random_cnn(path: Path, seed: int = 1) -> str:
    """A random-weight mnist_small_cnn saved as safetensors; returns its SHA-256."""
    from harness.models.architectures import mnist_small_cnn

    torch.manual_seed(seed)
    save_file(mnist_small_cnn().state_dict(), str(path))
    return sha256_file(path)


def random_weights(architecture: str, kwargs: dict | None, path: Path, seed: int = 0) -> str:
    """Random weights of a harness architecture (normal, small), saved as safetensors without the
    architecture's own (slow) initialisation: shapes from a meta-device build."""
    from harness.models.architectures import build_architecture

    with torch.device("meta"):
        net = build_architecture(architecture, kwargs)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, t in net.state_dict().items():
        if t.dtype.is_floating_point:
            state[k] = (torch.randn(t.shape, generator=gen) * 0.02) if "running_var" not in k else torch.ones(t.shape)
        else:
            state[k] = torch.zeros(t.shape, dtype=t.dtype)
    save_file(state, str(path))
    del state
    return sha256_file(path)


def new_entry(root, eid, *, url=None, sha=None, license="MIT", name="new model", seed=1, **over):
    """A new submission folder (mnist-standard's yaml), with a fresh local checkpoint or a hosted one."""
    folder = root / "submissions" / eid
    folder.mkdir(parents=True)
    spec = yaml.safe_load((REPO / "submissions" / "mnist-standard" / "submission.yaml").read_text())
    spec.update(id=eid, name=name, license=license)
    if url is not None:
        spec["model"]["checkpoint"] = {"url": url, "sha256": sha}
    else:
        got = random_cnn(folder / "model.safetensors", seed)
        spec["model"]["checkpoint"] = {"path": "model.safetensors", "sha256": sha or got}
    for key, value in over.items():
        spec[key] = value
    (folder / "submission.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return folder


def write_spec(folder: Path, spec: dict) -> None:
    (folder / "submission.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))


def pr_check(root, capsys, *extra):
    """`harness pr-check --base main` on ``root``: (exit code, report, problem lines on stderr, stderr)."""
    code = main(["pr-check", "--base", "main", "--root", str(root), "--no-progress", *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    problems = [ln for ln in err.splitlines() if ln.startswith(("problem: ", "::error "))]
    listed = out.split("### Problems\n\n", 1)[1].split("\n\n", 1)[0].splitlines() if "### Problems" in out else []
    assert len(problems) == len(listed)  # one stderr line per problem, as in the report
    assert all(ln.startswith("- ") for ln in listed)
    assert (code == 0) == (problems == []) and ("passed" in out.splitlines()[0]) == (code == 0)
    return code, out, problems, err


def check_rows(report: str) -> dict[str, str]:
    """The report's table of checks: {check: result}."""
    if "### Checks" not in report:
        return {}
    table = report.split("### Checks\n\n", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    rows = {}
    for line in table:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if cells[0] != "total":
            rows[cells[0]] = cells[1]
    return rows


def hosted_entry(root, srv, tmp_path, eid, dataset, architecture, kwargs=None, **over):
    """A submission folder for ``architecture`` (a zoo entry, or a class with ``kwargs``) with random
    weights, hosted by ``srv`` (a tests/helpers/hosting.py FileServer) from a memory map of the file."""
    ckpt = tmp_path / f"{eid}.safetensors"
    sha = random_weights(architecture, kwargs, ckpt)
    with open(ckpt, "rb") as f:  # served from the page cache, not copied into memory
        body = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    url = srv.add(f"/zoo/{eid}.safetensors", body)
    spec = yaml.safe_load((REPO / "submissions" / "cifar10-autoattack-resnet18" / "submission.yaml").read_text())
    spec.update(id=eid, name=f"random-weight {architecture}", dataset=dataset, training={"method": "other"})
    spec["evaluation"] = {"seed": 0}
    spec["model"] = {"format": "state_dict", "architecture": architecture, "checkpoint": {"url": url, "sha256": sha},
                     "preprocessing": {"mean": [0.0], "std": [1.0]}}
    if kwargs:
        spec["model"]["architecture_kwargs"] = kwargs
    spec.update(over)
    folder = root / "submissions" / eid
    folder.mkdir(parents=True)
    write_spec(folder, spec)
    return folder


#: the largest architecture of the RobustBench leaderboards: 267 M parameters, a 1.07 GB checkpoint
WRN_70_16 = ("robustbench.WideResNet", {"depth": 70, "widen_factor": 16, "num_classes": 10})


def wrn_70_16_entry(root, srv, tmp_path, eid="wrn-70-16"):
    """A CIFAR-10 submission of a random-weight WRN-70-16, hosted by ``srv``."""
    return hosted_entry(root, srv, tmp_path, eid, "cifar10", WRN_70_16[0], dict(WRN_70_16[1]))
