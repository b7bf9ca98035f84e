"""The GitHub workflows: actionlint passes on each, and they cannot be turned against the project.

actionlint comes from the test extras (a pip wheel that ships the binary); without it this test
fails rather than skips. Shellcheck/pyflakes integrations are switched off so the result does
not depend on what else is installed.

:func:`problems` states the security rules as code and is run on every workflow (it must find
nothing) and on workflows known to be bad (it must find the hole), among them the full-eval.yml
of before issue 16 (``OLD_FULL_EVAL``), whose `pull_request` job put the PR's own workflow on the
self-hosted GPU runner. The rules:

- top-level ``permissions: {}``, every job states its own; every action pinned to a commit SHA;
  no ``${{ }}`` expression inside a ``run:`` script (script injection); no ``workflow_run``;
  no ``--trust-code``.
- A ``pull_request`` workflow may be the PR's own copy, so each of its jobs runs PR code: a
  read-only token, no secrets, no environment, a GitHub-hosted runner, no stored credentials.
- A base-branch workflow (``pull_request_target``, ``workflow_dispatch``) never checks the PR
  out as a workspace: its ``actions/checkout`` steps name only base refs. A job that handles the
  PR's commit (``refs/pull/``, ``github.event.pull_request.head``, dispatch inputs) or runs on a
  self-hosted runner has a read-only token, no secrets and no environment; it treats the PR as
  data: it starts only an allow-listed set of programs (git for the PR's objects, with read-only
  subcommands and ``worktree add`` outside the workspace; the trusted ``harness`` console script;
  coreutils-like helpers; pip for the trusted checkout only) and runs ``harness eval`` in bwrap.
  ``pull_request_target`` jobs are gated by the label.
- Secrets and write permissions only in jobs with an ``environment`` (required reviewers) on a
  GitHub-hosted runner that do not touch the PR, and a secret only in one step's ``env``.
"""
from __future__ import annotations

import copy
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW_DIR = REPO / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.yml"))
SHA_PIN = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")


def _actionlint() -> str:
    found = shutil.which("actionlint") or shutil.which("actionlint", path=sysconfig.get_path("scripts"))
    if not found:
        pytest.fail("actionlint is not installed: pip install -e '.[test]'")
    return found


def _parse(text: str) -> dict:
    data = yaml.safe_load(text)
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def _load(path: Path) -> dict:
    return _parse(path.read_text())


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


# ------------------------------------------------------------------------------------------ rules
GITHUB_HOSTED = re.compile(r"^(ubuntu|windows|macos)-[A-Za-z0-9.-]+$")
# refs a base-branch workflow may check out: the base branch's own commits
BASE_REFS = {None, "${{ github.sha }}", "${{ github.ref }}", "${{ github.event.pull_request.base.sha }}",
             "${{ github.event.pull_request.base.ref }}", "main"}
# what marks a job that handles the pull request's commit
PR_MARKERS = ("refs/pull/", "pull_request.head", "github.head_ref", "inputs.")
SECRET = re.compile(r"\bsecrets\s*(\.|\[)|\bgithub\.token\b")
# the programs a job that handles PR data or runs on the GPU runner may start
ALLOWED_PROGRAMS = {"git", "harness", "echo", "printf", "exit", "mkdir", "cd", "tar", "find", "grep", "cut",
                    "sort", "[", "[[", "test", "true", "false"}
# git subcommands that read objects or write outside the workspace; never checkout, switch, reset, merge...
ALLOWED_GIT = {"fetch", "rev-parse", "diff", "cat-file", "archive", "worktree", "show", "ls-tree", "log"}
ALLOWED_PIP_TARGETS = {"pip", "./trusted", "torch", "torchvision"}
_SEPARATORS = {"|", "||", "&&", ";", "(", ")", "{", "}", "&", "|&", ";;"}
_KEYWORDS = {"!", "if", "then", "else", "elif", "do", "while", "until", "fi", "done"}  # at a command's start
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _triggers(data: dict) -> dict:
    on = data["on"]
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return {t: None for t in on}
    return dict(on)


def _labels(job: dict) -> list[str]:
    runs_on = job.get("runs-on", [])
    if isinstance(runs_on, dict):  # {group: ..., labels: ...}: a runner group is never GitHub's plain runner
        return ["group:" + str(runs_on.get("group"))] + list(runs_on.get("labels") or [])
    return [runs_on] if isinstance(runs_on, str) else list(runs_on)


def self_hosted(job: dict) -> bool:
    labels = _labels(job)
    return not labels or any(not GITHUB_HOSTED.match(str(label)) for label in labels)


def _dump(obj) -> str:
    return yaml.safe_dump(obj, sort_keys=False, width=10**6)


def writes(job: dict) -> bool:
    perms = job.get("permissions")
    if isinstance(perms, str):
        return perms != "read-all"
    return any(v == "write" for v in (perms or {}).values())


def uses_secrets(job: dict) -> bool:
    return "secrets" in job or bool(SECRET.search(_dump(job)))


def touches_pr(job: dict) -> bool:
    text = _dump(job)
    return any(m in text for m in PR_MARKERS)


def _substitutions(token: str) -> list[str]:
    """The scripts inside ``$( ... )`` and backticks of one word."""
    out, i = [], 0
    while (i := token.find("$(", i)) != -1:
        depth, j = 1, i + 2
        while j < len(token) and depth:
            depth += {"(": 1, ")": -1}.get(token[j], 0)
            j += 1
        out.append(token[i + 2:j - 1])
        i = j
    out += re.findall(r"`([^`]*)`", token)
    return out


def commands(script: str) -> list[list[str]]:
    """The simple commands of a bash script, each as its words, with those of ``$(...)`` too.
    Rough (no here-documents, no functions), which is all a CI step needs; unparsable text is
    reported as a command of its own so that it cannot hide a program."""
    out: list[list[str]] = []
    for line in script.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = ""
        try:
            tokens = list(lex)
        except ValueError:
            out.append(["<unparsable>", line])
            continue
        cur: list[str] = []
        for tok in tokens:
            for inner in _substitutions(tok):
                out += commands(inner)
            if tok in _SEPARATORS or (not cur and tok in _KEYWORDS):
                if cur:
                    out.append(cur)
                cur = []
            elif not cur and _ASSIGNMENT.match(tok):
                continue  # VAR=value before a command, or VAR=$( ... ) (split at "(" above)
            else:
                cur.append(tok)
        if cur:
            out.append(cur)
    return out


def _git_subcommand(words: list[str]) -> tuple[str, list[str]]:
    i = 1
    while i < len(words) and words[i].startswith("-"):
        i += 2 if words[i] in ("-C", "-c") else 1
    return (words[i], words[i + 1:]) if i < len(words) else ("", [])


def _command_problem(words: list[str]) -> str | None:
    """Why this command does not treat the PR as data, or None."""
    prog = words[0]
    if prog == "python3" and words[1:3] == ["-m", "venv"]:
        return None
    if re.fullmatch(r"(.*/)?python3?", prog):
        if words[1:4] != ["-m", "pip", "install"]:
            return f"runs {' '.join(words[:3])!r} (only `python3 -m venv` and `pip install` of the trusted checkout)"
        targets, skip = [], False
        for w in words[4:]:
            if skip:
                skip = False
            elif w in ("--index-url", "--extra-index-url", "-i"):
                skip = True
            elif not w.startswith("-"):
                targets.append(w)
        bad = [t for t in targets if t not in ALLOWED_PIP_TARGETS]
        return f"pip installs {bad} (only {sorted(ALLOWED_PIP_TARGETS)})" if bad else None
    if prog not in ALLOWED_PROGRAMS:
        return f"starts the program {prog!r}, which is not on the allow-list for PR data"
    if prog == "git":
        sub, rest = _git_subcommand(words)
        if sub not in ALLOWED_GIT:
            return f"runs `git {sub}`: it could put the PR's files into the workspace (only {sorted(ALLOWED_GIT)})"
        if sub == "worktree":
            paths = [w for w in rest[1:] if not w.startswith("-")]
            if rest[:1] != ["add"] or not paths or not paths[0].startswith("$RUNNER_TEMP/"):
                return "runs `git worktree` other than `add` into a folder under $RUNNER_TEMP (outside the workspace)"
    if prog == "harness" and words[1:2] == ["eval"]:
        i = words.index("--sandbox") if "--sandbox" in words else -1
        if i < 0 or words[i + 1:i + 2] != ["bwrap"]:
            return "runs `harness eval` without `--sandbox bwrap`"
    return None


def _checkout_steps(job: dict) -> list[dict]:
    return [s for s in job.get("steps", []) if str(s.get("uses", "")).startswith("actions/checkout@")]


def problems(data: dict) -> list[str]:
    """Every way this workflow (parsed YAML) could be turned against the project."""
    out: list[str] = []
    triggers = _triggers(data)
    pr_workflow = "pull_request" in triggers
    base_pr_workflow = bool({"pull_request_target", "workflow_dispatch"} & set(triggers))
    if "workflow_run" in triggers:
        out.append("workflow_run runs with write access on behalf of a PR's workflow")
    if data.get("permissions") != {}:
        out.append("top-level permissions must be {}")
    if SECRET.search(_dump(data.get("env", {}))):
        out.append("a secret in the workflow-level env reaches every job")
    if "pull_request_target" in triggers:
        types = (triggers["pull_request_target"] or {}).get("types")
        if types != ["labeled"]:
            out.append(f"pull_request_target must run only on [labeled], not {types}")
    gated = set()
    for name, job in data["jobs"].items():
        where = f"job {name}"
        if "permissions" not in job:
            out.append(f"{where} has no permissions:")
        for use in ([job["uses"]] if "uses" in job else []) + [s["uses"] for s in job.get("steps", []) if "uses" in s]:
            if not str(use).startswith("./") and not SHA_PIN.match(str(use)):
                out.append(f"{where}: {use} is not pinned to a 40-hex commit SHA")
        for step in job.get("steps", []):
            run = step.get("run", "")
            if "${{" in run:
                out.append(f"{where}: an expression inside run: ({step.get('name', '?')}); pass it through env:")
            if "--trust-code" in run:
                out.append(f"{where}: --trust-code runs a submission's code outside the safe loaders")
        for step in _checkout_steps(job):
            if (step.get("with") or {}).get("persist-credentials") is not False:
                out.append(f"{where}: actions/checkout without persist-credentials: false keeps a token on disk")
        secret, write, hosted, pr = uses_secrets(job), writes(job), not self_hosted(job), touches_pr(job)
        if pr_workflow:  # the PR may have written this very file: every job runs PR code
            for bad, what in ((not hosted, "a self-hosted runner"), (write, "a write token"),
                              (secret, "a secret"), ("environment" in job, "an environment")):
                if bad:
                    out.append(f"{where} runs PR code (a pull_request workflow is the PR's own copy) with {what}")
            continue
        if base_pr_workflow:
            for step in _checkout_steps(job):
                w = step.get("with") or {}
                if w.get("ref") not in BASE_REFS or w.get("repository") not in (None, "${{ github.repository }}"):
                    out.append(f"{where} checks out the pull request's code as a workspace "
                               f"(ref {w.get('ref')!r}); fetch it as data and extract only submissions/")
        if pr or not hosted:
            kind = "handles the PR's commit" if pr else "runs on a self-hosted runner"
            for bad, what in ((write, "a write token"), (secret, "a secret"), ("environment" in job, "an environment")):
                if bad:
                    out.append(f"{where} {kind} and has {what}")
            for step in job.get("steps", []):
                for words in commands(step.get("run", "")):
                    if (why := _command_problem(words)) is not None:
                        out.append(f"{where} {kind}; step {step.get('name', step.get('id', '?'))!r} {why}")
        if secret or write:
            what = "a secret" if secret else "a write token"
            if "environment" not in job:
                out.append(f"{where} has {what} but no environment (with required reviewers)")
            if not hosted:
                out.append(f"{where} has {what} on a self-hosted runner")
        if secret:
            rest = copy.deepcopy(job)
            for step in rest.get("steps", []):
                step.pop("env", None)
            if uses_secrets(rest):
                out.append(f"{where}: a secret outside a step's env: (job env, with:, run: or secrets:)")
        if "pull_request_target" in triggers:
            if "github.event.label.name" in str(job.get("if", "")) or set(_needs(job)) & gated:
                gated.add(name)
            else:
                out.append(f"{where} runs on pull_request_target without the label gate")
        if "workflow_dispatch" in triggers and pr and "refs/heads/main" not in str(job.get("if", "")):
            out.append(f"{where} can be dispatched on another branch than main")
    return out


def _needs(job: dict) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)



# The full-eval.yml of before issue 16, verbatim: a `pull_request` job on the self-hosted GPU runner.
OLD_FULL_EVAL = r'''# The full evaluation of a pull request's entry on the maintainers' self-hosted GPU runner, started
# when a maintainer adds the label `full-eval` (adding labels needs triage or write access, so a
# submitter cannot start it). The record and its examples.npz are uploaded as artifacts; a
# maintainer commits them into the PR, where pr-check audits them.
#
# Security: `pull_request` with types [labeled] (never `pull_request_target`): read-only token, no
# secrets. The evaluation code is the base commit's harness, installed from a separate checkout;
# the PR provides only data (submission.yaml and checkpoint). Label only after reviewing the PR's
# latest commit: the job evaluates the merge commit of the moment the label was added.
name: full-eval

on:
  pull_request:
    types: [labeled]

permissions: {}

concurrency:
  group: full-eval-${{ github.event.pull_request.number }}
  cancel-in-progress: true

jobs:
  full-eval:
    if: github.event.label.name == 'full-eval'
    runs-on: [self-hosted, linux, x64, gpu]
    timeout-minutes: 1440
    permissions:
      contents: read
    steps:
      - name: Check out the pull request
        uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1
        with:
          path: pr
          fetch-depth: 0
          persist-credentials: false

      - name: Check out the base commit (the trusted harness)
        uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1
        with:
          ref: ${{ github.event.pull_request.base.sha }}
          path: trusted
          persist-credentials: false

      - name: Install the base commit's harness in a fresh virtual environment
        run: |
          python3 -m venv "$RUNNER_TEMP/venv"
          "$RUNNER_TEMP/venv/bin/python" -m pip install --upgrade pip
          "$RUNNER_TEMP/venv/bin/python" -m pip install ./trusted
          echo "$RUNNER_TEMP/venv/bin" >> "$GITHUB_PATH"

      - name: Checks before the GPU time (pr-check, smoke evaluation on the GPU)
        working-directory: pr
        env:
          BASE_SHA: ${{ github.event.pull_request.base.sha }}
        run: harness pr-check --base "$BASE_SHA" --device cuda --keep "$RUNNER_TEMP/pr-check"

      - name: Find the entry
        id: entry
        working-directory: pr
        env:
          BASE_SHA: ${{ github.event.pull_request.base.sha }}
        run: |
          ids=$(git diff --name-only "$BASE_SHA"...HEAD -- submissions/ | cut -d/ -f2 | sort -u)
@@ID_CHECK@@
            echo "::error::the PR must change exactly one submission folder"
            exit 1
          fi
          echo "id=$ids" >> "$GITHUB_OUTPUT"

      - name: Full evaluation on the GPU
        working-directory: pr
        env:
          ENTRY: ${{ steps.entry.outputs.id }}
          # a repository variable (not a secret): the runner's local CIFAR/MNIST copies, torchvision layout
          DATA_DIR: ${{ vars.ROBUST_FRONTIER_DATA_DIR }}
        run: |
          harness eval "submissions/$ENTRY/submission.yaml" --device cuda --no-progress \
            ${DATA_DIR:+--data-dir "$DATA_DIR"} --out "$RUNNER_TEMP/full-eval/$ENTRY.json"
          harness audit "$RUNNER_TEMP/full-eval/$ENTRY.json" --submission "submissions/$ENTRY/submission.yaml" \
            --device cuda --no-progress ${DATA_DIR:+--data-dir "$DATA_DIR"}

      - name: Upload the record and examples.npz
        uses: actions/upload-artifact@bbbca2ddaa5d8feaa63e36b76fdaad77386f024f # v7.0.0
        with:
          name: full-eval-record
          path: |
            ${{ runner.temp }}/full-eval/*.json
            ${{ runner.temp }}/full-eval/*.examples.npz
            ${{ runner.temp }}/pr-check/pr-check.md
          if-no-files-found: error
          retention-days: 30
'''.replace("@@ID_CHECK@@", "          if [ \"$(printf '%s\\n' \"$ids\" | grep -c .)\" -ne 1 ] || "
                                     "! printf '%s' \"$ids\" | grep -Eq '^[a-z0-9][a-z0-9._-]{0,63}$'; then")
# git's blob id of .github/workflows/full-eval.yml at 86d736c, so the fixture is that file, byte for byte
OLD_FULL_EVAL_BLOB = "dda64c0cf15a1d161dbd3c7dbfb59fd8b0a0b078"

_PR_GPU_JOB = """
name: innocent
on: pull_request
permissions: {}
jobs:
  x:
    runs-on: [self-hosted, gpu]
    permissions: {contents: read}
    steps:
      - run: nvidia-smi && ./mine.sh
"""

_TARGET_CHECKS_OUT_HEAD = """
name: t
on:
  pull_request_target:
    types: [labeled]
permissions: {}
jobs:
  x:
    if: github.event.label.name == 'full-eval'
    runs-on: ubuntu-latest
    permissions: {contents: read}
    steps:
      - uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1
        with:
          ref: ${{ github.event.pull_request.head.sha }}
          persist-credentials: false
      - run: make test
"""

_PR_SECRET = """
name: s
on: pull_request
permissions: {}
jobs:
  x:
    runs-on: ubuntu-latest
    permissions: {contents: read}
    steps:
      - run: echo "$K"
        env:
          K: ${{ secrets.ROBUST_FRONTIER_SIGNING_KEY }}
"""

_PR_WRITE = """
name: w
on: pull_request
permissions: {}
jobs:
  x:
    runs-on: ubuntu-latest
    permissions: {contents: write}
    steps:
      - run: echo hi
"""

_UNPINNED = """
name: u
on: push
permissions: {}
jobs:
  x:
    runs-on: ubuntu-latest
    permissions: {contents: read}
    steps:
      - uses: actions/checkout@v4
        with:
          persist-credentials: false
"""

_NO_TOP_PERMISSIONS = """
name: p
on: push
jobs:
  x:
    runs-on: ubuntu-latest
    permissions: {contents: read}
    steps:
      - run: echo hi
"""

_EXPRESSION_IN_RUN = """
name: e
on: pull_request
permissions: {}
jobs:
  x:
    runs-on: ubuntu-latest
    permissions: {contents: read}
    steps:
      - run: echo "${{ github.event.pull_request.title }}"
"""

BAD_WORKFLOWS = {
    "old-full-eval": (OLD_FULL_EVAL, "runs PR code (a pull_request workflow is the PR's own copy) with a self-hosted"),
    "pr-adds-gpu-job": (_PR_GPU_JOB, "with a self-hosted runner"),
    "target-checks-out-head": (_TARGET_CHECKS_OUT_HEAD, "checks out the pull request's code as a workspace"),
    "pr-secret": (_PR_SECRET, "with a secret"),
    "pr-write": (_PR_WRITE, "with a write token"),
    "unpinned": (_UNPINNED, "is not pinned"),
    "no-top-permissions": (_NO_TOP_PERMISSIONS, "top-level permissions must be {}"),
    "expression-in-run": (_EXPRESSION_IN_RUN, "an expression inside run:"),
}


@pytest.mark.parametrize("name", sorted(BAD_WORKFLOWS))
def test_problems_finds_each_known_hole(name):
    text, expected = BAD_WORKFLOWS[name]
    found = problems(_parse(text))
    assert any(expected in p for p in found), found


def test_the_old_full_eval_fails_the_security_rules_of_today():
    """The workflow of before issue 16 fails the very test today's files pass."""
    data = OLD_FULL_EVAL.encode()
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == OLD_FULL_EVAL_BLOB
    found = problems(_parse(OLD_FULL_EVAL))
    assert found and all("job full-eval" in p for p in found), found
    assert any("self-hosted" in p for p in found)


def _step(job: dict, step_id: str) -> dict:
    (step,) = [s for s in job["steps"] if s.get("id") == step_id]
    return step


def _full_eval() -> dict:
    return _load(WORKFLOW_DIR / "full-eval.yml")


def _mut_secret_in_gpu_job(d):
    _step(d["jobs"]["evaluate"], "eval")["env"]["K"] = "${{ secrets.ROBUST_FRONTIER_SIGNING_KEY }}"


def _mut_sign_on_gpu_runner(d):
    d["jobs"]["sign"]["runs-on"] = ["self-hosted", "linux", "x64", "gpu"]


def _mut_python_m_harness(d):
    s = _step(d["jobs"]["evaluate"], "eval")
    s["run"] = s["run"].replace("harness eval", "python -m harness eval")


def _mut_git_checkout(d):
    s = _step(d["jobs"]["evaluate"], "fetch-pr")
    s["run"] += 'git checkout "$HEAD_SHA"\n'


def _mut_run_submission_script(d):
    s = _step(d["jobs"]["evaluate"], "eval")
    s["run"] += 'bash "submissions/$ENTRY/setup.sh"\n'


def _mut_hidden_in_substitution(d):
    s = _step(d["jobs"]["evaluate"], "audit")
    s["run"] += 'echo "$(./submissions/x/run)"\n'


def _mut_secret_in_job_env(d):
    job = d["jobs"]["sign"]
    job["env"] = {"ROBUST_FRONTIER_SIGNING_KEY": _step(job, "sign-record")["env"].pop("ROBUST_FRONTIER_SIGNING_KEY")}


def _mut_sign_without_environment(d):
    del d["jobs"]["sign"]["environment"]


def _mut_gpu_job_writes(d):
    d["jobs"]["evaluate"]["permissions"] = {"contents": "write"}


def _mut_eval_without_bwrap(d):
    s = _step(d["jobs"]["evaluate"], "eval")
    s["run"] = s["run"].replace("--sandbox bwrap", "--sandbox worker")


def _mut_trust_code(d):
    s = _step(d["jobs"]["evaluate"], "eval")
    s["run"] = s["run"].replace("--no-progress", "--no-progress --trust-code")


def _mut_pip_installs_the_pr(d):
    s = _step(d["jobs"]["evaluate"], "pr-check")
    s["run"] += 'pip install "$RUNNER_TEMP/pr"\n'


def _mut_worktree_in_workspace(d):
    s = _step(d["jobs"]["evaluate"], "pr-check")
    s["run"] = s["run"].replace('worktree add --detach "$RUNNER_TEMP/pr"', 'worktree add --detach pr')


def _mut_no_label_gate(d):
    d["jobs"]["evaluate"]["if"] = ("github.event_name == 'workflow_dispatch' || "
                                   "github.event_name == 'pull_request_target'")


def _mut_checkout_pr_head(d):
    _step(d["jobs"]["evaluate"], "trusted")["with"]["ref"] = "${{ github.event.pull_request.head.sha }}"


def _mut_sign_fetches_the_pr(d):
    s = _step(d["jobs"]["sign"], "push")
    s["run"] = 'git -C trusted fetch origin "refs/pull/$PR/head"\n' + s["run"]


def _mut_pull_request_trigger(d):
    d["on"]["pull_request"] = {"types": ["labeled"]}


MUTATIONS = {
    "secret-in-gpu-job": (_mut_secret_in_gpu_job, "job evaluate handles the PR's commit and has a secret"),
    "sign-on-gpu-runner": (_mut_sign_on_gpu_runner, "job sign has a secret on a self-hosted runner"),
    "python-m-harness": (_mut_python_m_harness, "runs 'python -m harness'"),
    "git-checkout": (_mut_git_checkout, "runs `git checkout`"),
    "run-submission-script": (_mut_run_submission_script, "starts the program 'bash'"),
    "hidden-in-substitution": (_mut_hidden_in_substitution, "starts the program './submissions/x/run'"),
    "secret-in-job-env": (_mut_secret_in_job_env, "a secret outside a step's env"),
    "sign-without-environment": (_mut_sign_without_environment, "but no environment"),
    "gpu-job-writes": (_mut_gpu_job_writes, "job evaluate handles the PR's commit and has a write token"),
    "eval-without-bwrap": (_mut_eval_without_bwrap, "without `--sandbox bwrap`"),
    "trust-code": (_mut_trust_code, "--trust-code"),
    "pip-installs-the-pr": (_mut_pip_installs_the_pr, "starts the program 'pip'"),
    "worktree-in-workspace": (_mut_worktree_in_workspace, "`git worktree` other than `add` into a folder under"),
    "no-label-gate": (_mut_no_label_gate, "without the label gate"),
    "checkout-pr-head": (_mut_checkout_pr_head, "checks out the pull request's code as a workspace"),
    "sign-fetches-the-pr": (_mut_sign_fetches_the_pr, "job sign handles the PR's commit and has a secret"),
    "pull-request-trigger": (_mut_pull_request_trigger, "runs PR code (a pull_request workflow is the PR's own copy)"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_problems_catches_each_weakening_of_full_eval(name):
    """Each rule guards something: weakening today's full-eval.yml in one place is caught."""
    data = _full_eval()
    assert problems(copy.deepcopy(data)) == []
    mutate, expected = MUTATIONS[name]
    mutate(data)
    found = problems(data)
    assert any(expected in p for p in found), found


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
    assert problems(_load(path)) == []
    # every third-party action pinned by a full commit SHA, with its version tag beside it
    for line in path.read_text().splitlines():
        if re.match(r"\s*(- )?uses:", line) and "./" not in line:
            assert re.search(r"@[0-9a-f]{40} # v\d+(\.\d+)*\s*$", line), f"no version comment: {line.strip()}"


def test_secrets_appear_only_in_the_sign_step():
    """Across all workflows, the one secret is the signing key, in the env of full-eval's sign step."""
    holders = []
    for path in WORKFLOWS:
        data = _load(path)
        for name, job in data["jobs"].items():
            for step in job.get("steps", []):
                if SECRET.search(_dump(step.get("env", {}))):
                    holders.append((path.name, name, step.get("id")))
        assert "secrets." not in _code(path.read_text()).replace(
            "secrets.ROBUST_FRONTIER_SIGNING_KEY", "") or path.name == "full-eval.yml"
    sign = _full_eval()["jobs"]["sign"]
    assert holders == [("full-eval.yml", "sign", "sign-record"), ("full-eval.yml", "sign", "push")]
    assert _step(sign, "sign-record")["env"]["ROBUST_FRONTIER_SIGNING_KEY"] == \
        "${{ secrets.ROBUST_FRONTIER_SIGNING_KEY }}"
    assert _step(sign, "push")["env"]["GH_TOKEN"] == "${{ github.token }}"  # the job's contents: write token
    assert "secrets." not in _dump(_step(sign, "push"))


def test_pr_check_runs_the_base_commits_checker_on_a_hosted_runner():
    """The checker is the base commit's harness, installed from its own checkout and run as the
    console script, so a PR cannot rewrite the check it is judged by."""
    data = _load(WORKFLOW_DIR / "pr-check.yml")
    assert data["on"] == {"pull_request": {"branches": ["main"]}}
    assert set(data["jobs"]) == {"pr-check", "board"}
    job = data["jobs"]["pr-check"]
    assert job["runs-on"] == "ubuntu-latest" and job["permissions"] == {"contents": "read"}
    assert job["timeout-minutes"] <= 60
    refs = [s["with"].get("ref") for s in _checkout_steps(job)]
    assert "${{ github.event.pull_request.base.sha }}" in refs
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "pip install ./trusted" in runs
    assert "python -m harness" not in runs and "pip install -e" not in runs
    assert 'harness pr-check --base "$BASE_SHA" --keep' in runs
    assert "--device" not in runs and "--data-dir" not in runs  # CPU checks only, no dataset



def test_the_board_check_of_a_pr_trusts_only_the_base_branchs_keys():
    """A records PR is checked by the board main would build after the merge, with main's keys in
    place of the PR's own leaderboard/keys/ (a key the PR adds must vouch for nothing)."""
    job = _load(WORKFLOW_DIR / "pr-check.yml")["jobs"]["board"]
    assert job["runs-on"] == "ubuntu-latest" and job["permissions"] == {"contents": "read"}
    assert "${{ github.event.pull_request.base.sha }}" in [s["with"].get("ref") for s in _checkout_steps(job)]
    (step,) = [s for s in job["steps"] if "leaderboard build" in s.get("run", "")]
    assert step["working-directory"] == "pr"
    lines = [line.strip() for line in step["run"].splitlines()]
    assert lines[0] == "rm -rf leaderboard/keys"
    assert "cp -R ../trusted/leaderboard/keys leaderboard/keys" in lines[1]
    assert lines[2].startswith("harness leaderboard build ") and "--local" not in step["run"]

def test_full_eval_runs_from_the_base_branch_only():
    data = _full_eval()
    assert data["on"]["pull_request_target"] == {"types": ["labeled"], "branches": ["main"]}
    inputs = data["on"]["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"pr", "head_sha", "allow_update"}
    assert inputs["pr"]["required"] and inputs["head_sha"]["required"] and inputs["allow_update"]["default"] is False
    assert set(data["on"]) == {"pull_request_target", "workflow_dispatch"}
    assert set(data["jobs"]) == {"evaluate", "sign"}
    ev = data["jobs"]["evaluate"]
    assert "github.event.label.name == 'full-eval'" in ev["if"] and "github.ref == 'refs/heads/main'" in ev["if"]
    assert ev["runs-on"] == ["self-hosted", "linux", "x64", "gpu"]
    assert ev["permissions"] == {"contents": "read"} and not uses_secrets(ev) and "environment" not in ev
    (checkout,) = _checkout_steps(ev)
    assert checkout["with"]["ref"] == "${{ github.sha }}" and checkout["with"]["persist-credentials"] is False
    install = _step(ev, "install")["run"]
    assert '-m venv "$RUNNER_TEMP/venv"' in install
    assert '"$RUNNER_TEMP/venv/bin/python" -m pip install ./trusted' in install
    assert 'echo "$RUNNER_TEMP/venv/bin" >> "$GITHUB_PATH"' in install
    assert "concurrency" not in data["jobs"]["sign"]  # a pending run in a group is cancelled by the next


def test_full_eval_pins_the_commit_the_label_or_dispatch_named():
    ev = _full_eval()["jobs"]["evaluate"]
    req = _step(ev, "request")
    assert req["env"]["HEAD_SHA"] == "${{ github.event.pull_request.head.sha || inputs.head_sha }}"
    fetch = _step(ev, "fetch-pr")
    assert fetch["env"]["HEAD_SHA"] == "${{ steps.request.outputs.head_sha }}"
    assert '"$fetched" != "$HEAD_SHA"' in fetch["run"]
    for sid in ("pr-check", "entry"):  # later steps use the pinned SHA, never a moving ref
        assert _step(ev, sid)["env"]["HEAD_SHA"] == "${{ steps.request.outputs.head_sha }}"
        assert "refs/pull" not in _step(ev, sid)["run"]
    assert ev["outputs"]["head_sha"] == "${{ steps.request.outputs.head_sha }}"


def test_full_eval_evaluates_only_the_submission_folder_with_the_maintainers_caps():
    ev = _full_eval()["jobs"]["evaluate"]
    ids = [s.get("id") for s in ev["steps"]]
    assert ids.index("fetch-pr") < ids.index("entry") < ids.index("pr-check") < ids.index("fetch-checkpoint") \
        < ids.index("eval") < ids.index("audit")
    entry = _step(ev, "entry")["run"]
    assert 'archive --format=tar "$HEAD_SHA" -- "submissions/$ids"' in entry
    assert 'harness pr-check --base "$BASE_SHA"' in _step(ev, "pr-check")["run"]
    for cap, default in (("ROBUST_FRONTIER_MAX_MEMORY", "64G"), ("ROBUST_FRONTIER_MAX_STAGE_TIMEOUT_S", "43200"),
                         ("ROBUST_FRONTIER_MAX_CPU_S", "345600"),
                         ("ROBUST_FRONTIER_MAX_DOWNLOAD_BYTES", "4294967296")):
        assert ev["env"][cap] == f"${{{{ vars.{cap} || '{default}' }}}}"
    assert ev["env"]["DATA_DIR"] == "${{ vars.ROBUST_FRONTIER_DATA_DIR }}"
    (cmd,) = [c for c in commands(_step(ev, "eval")["run"]) if c[0] == "harness"]
    assert cmd[1:3] == ["eval", "submissions/$ENTRY/submission.yaml"]
    flags = " ".join(cmd)
    for flag in ("--sandbox bwrap", "--device cuda", "--no-progress", '--memory-limit $ROBUST_FRONTIER_MAX_MEMORY',
                 "--stage-timeout $ROBUST_FRONTIER_MAX_STAGE_TIMEOUT_S", "--cpu-limit $ROBUST_FRONTIER_MAX_CPU_S",
                 "--out $RUNNER_TEMP/full-eval/$ENTRY.json"):
        assert flag in flags, flag
    assert "${DATA_DIR:+--data-dir" in _step(ev, "eval")["run"]
    (audit,) = [c for c in commands(_step(ev, "audit")["run"]) if c[0] == "harness"]
    assert audit[1:3] == ["audit", "$RUNNER_TEMP/full-eval/$ENTRY.json"]
    assert "--submission submissions/$ENTRY/submission.yaml --device cuda" in " ".join(audit)
    (upload,) = [s for s in ev["steps"] if s.get("with", {}).get("name") == "unsigned-record"]
    assert upload["uses"].startswith("actions/upload-artifact@")
    assert ".examples.npz" in upload["with"]["path"] and ".json" in upload["with"]["path"]


def test_the_sign_job_alone_holds_the_key_after_the_worker_exited():
    data = _full_eval()
    sign = data["jobs"]["sign"]
    assert sign["needs"] == "evaluate" and sign["runs-on"] == "ubuntu-latest"  # another job, another machine
    assert sign["environment"] == "record-signing" and sign["permissions"] == {"contents": "write"}
    assert not touches_pr(sign)
    assert [s["with"].get("ref") for s in _checkout_steps(sign)] == ["${{ github.sha }}"]
    ids = [s.get("id") for s in sign["steps"]]
    download = [i for i, s in enumerate(sign["steps"]) if s.get("uses", "").startswith("actions/download-artifact@")]
    assert download and download[0] < ids.index("check-artifact") < ids.index("sign-record") < ids.index("push")
    assert _step(sign, "sign-record")["run"] == 'harness sign "$RUNNER_TEMP/record/$ENTRY.json"'
    assert 'git push --quiet origin "HEAD:refs/heads/$branch"' in _step(sign, "push")["run"]
    assert not uses_secrets(data["jobs"]["evaluate"])


def test_pages_publishes_the_leaderboard_on_push_to_main():
    data = _load(WORKFLOW_DIR / "pages.yml")
    assert data["on"]["push"] == {"branches": ["main"]} and "pull_request" not in data["on"]
    build, deploy = data["jobs"]["build"], data["jobs"]["deploy"]
    assert any("harness leaderboard build" in s.get("run", "") for s in build["steps"])
    assert any(s.get("uses", "").startswith("actions/upload-pages-artifact@") for s in build["steps"])
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]
    assert build["permissions"] == {"contents": "read"}


def test_commands_sees_programs_in_every_position():
    """The parser behind the allow-list: pipes, lists, substitutions, assignments, continuations."""
    script = ('a=$(git rev-parse HEAD)\nif ! [[ $a =~ x ]]; then echo "$(./evil)" | tee f; fi\n'
              'cd d && make \\\n  all; `id`\nX=1 python3 -m venv v\n')
    progs = [c[0] for c in commands(script)]
    assert progs == ["git", "[[", "./evil", "echo", "tee", "cd", "make", "id", "`id`", "python3"], progs
    assert [c[0] for c in commands('[ -n "$(find d ! -type f)" ]')] == ["find", "["]


# ------------------------------------------- the data-only steps of full-eval.yml, run for real
# The `run:` scripts of the request, fetch-pr and entry steps (and the sign job's artifact check
# and push) run here with bash and git against a local "origin" that has the PR under
# refs/pull/<N>/head, as GitHub's has; the environment the workflow would give them is supplied
# key by key, so a step that starts reading another variable fails this test.
def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def _commit(repo: Path, files: dict[str, str | None], message: str) -> str:
    for rel, content in files.items():
        path = repo / rel
        if content is None:
            _git(repo, "rm", "-q", "--", rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if content.startswith("->"):
            path.symlink_to(content[2:])
        else:
            path.write_text(content)
        _git(repo, "add", "--", rel)
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


class _Fixture:
    """origin (main + a PR under refs/pull/7/head) and the workspace with `trusted`, its clone."""

    def __init__(self, tmp: Path, pr_files: dict[str, str | None]):
        self.origin, self.workspace, self.temp = tmp / "origin", tmp / "workspace", tmp / "runner-temp"
        self.workspace.mkdir()
        self.temp.mkdir()
        self.origin.mkdir()
        _git(self.origin, "init", "-q", "-b", "main")
        self.base = _commit(self.origin, {"harness/__init__.py": "", "submissions/old/submission.yaml": "id: old\n",
                                           "leaderboard/results/old.json": "{}\n"},
                            "base")
        _git(self.origin, "switch", "-q", "-c", "contrib")
        self.head = _commit(self.origin, pr_files, "the PR")
        _git(self.origin, "switch", "-q", "main")
        _git(self.origin, "update-ref", "refs/pull/7/head", self.head)
        _git(self.workspace, "clone", "-q", str(self.origin), "trusted")
        self.trusted = self.workspace / "trusted"

    def run(self, job: str, step_id: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
        step = _step(_full_eval()["jobs"][job], step_id)
        assert set(step.get("env", {})) <= set(env), (step_id, sorted(step.get("env", {})))
        out, summary = self.temp / f"{step_id}.out", self.temp / f"{step_id}.summary"
        out.write_text("")
        full = {"PATH": os.environ["PATH"], "HOME": str(self.temp), "RUNNER_TEMP": str(self.temp),
                "GITHUB_OUTPUT": str(out), "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_SHA": self.base,
                "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "11",
                "GITHUB_RUN_ATTEMPT": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_LFS_SKIP_SMUDGE": "1", **env}
        cwd = self.workspace / step.get("working-directory", ".")
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=cwd,
                              env=full, capture_output=True, text=True, timeout=60)
        outputs = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
        return proc, outputs

    def files(self, root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


_GOOD_PR = {"submissions/demo/submission.yaml": "id: demo\n", "submissions/demo/model.safetensors": "weights"}


def test_the_data_steps_extract_only_the_submission_of_the_pinned_commit(tmp_path):
    fx = _Fixture(tmp_path, _GOOD_PR)
    proc, out = fx.run("evaluate", "request", {"PR": "7", "HEAD_SHA": fx.head})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out == {"pr": "7", "head_sha": fx.head}
    proc, _ = fx.run("evaluate", "fetch-pr", {"PR": "7", "HEAD_SHA": fx.head})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc, out = fx.run("evaluate", "entry", {"BASE_SHA": fx.base, "HEAD_SHA": fx.head})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out == {"id": "demo"}
    assert fx.files(fx.temp / "data") == ["submissions/demo/model.safetensors", "submissions/demo/submission.yaml"]
    # the trusted checkout still holds main, untouched: the PR's files were never checked out there
    assert _git(fx.trusted, "rev-parse", "HEAD") == fx.base
    assert _git(fx.trusted, "status", "--porcelain") == "" and not (fx.trusted / "submissions" / "demo").exists()


def test_a_push_after_the_label_is_refused_not_evaluated(tmp_path):
    fx = _Fixture(tmp_path, _GOOD_PR)
    _git(fx.origin, "switch", "-q", "contrib")
    moved = _commit(fx.origin, {"submissions/demo/model.safetensors": "other weights"}, "pushed after the label")
    _git(fx.origin, "update-ref", "refs/pull/7/head", moved)
    proc, _ = fx.run("evaluate", "fetch-pr", {"PR": "7", "HEAD_SHA": fx.head})
    assert proc.returncode == 1
    assert f"PR #7 moved: the run was asked for {fx.head}, its head is now {moved}" in proc.stdout


@pytest.mark.parametrize("pr, sha", [("7\n8", None), ("0", None), ("$(id)", None), ("7", "abc"),
                                     ("7", "A" * 40), ("7", ("a" * 40) + "\n")])
def test_the_request_step_refuses_a_malformed_pr_or_sha(tmp_path, pr, sha):
    fx = _Fixture(tmp_path, _GOOD_PR)
    proc, out = fx.run("evaluate", "request", {"PR": pr, "HEAD_SHA": fx.head if sha is None else sha})
    assert proc.returncode == 1 and out == {} and "::error::" in proc.stdout


@pytest.mark.parametrize("pr_files, message", [
    ({**_GOOD_PR, "submissions/other/submission.yaml": "id: other\n"}, "exactly one folder submissions/<id>/"),
    ({"submissions/old/submission.yaml": None}, "removes submissions/old/submission.yaml"),
    ({**_GOOD_PR, "submissions/demo/link": "->/etc/passwd"}, "neither a file nor a folder"),
])
def test_the_entry_step_refuses_what_is_not_one_submission_folder(tmp_path, pr_files, message):
    fx = _Fixture(tmp_path, pr_files)
    assert fx.run("evaluate", "fetch-pr", {"PR": "7", "HEAD_SHA": fx.head})[0].returncode == 0
    proc, out = fx.run("evaluate", "entry", {"BASE_SHA": fx.base, "HEAD_SHA": fx.head})
    assert proc.returncode == 1 and "id" not in out and message in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("extra, ok", [(None, True), ("notes.txt", False), ("->demo.json", False)])
def test_the_sign_job_takes_exactly_the_record_and_its_npz(tmp_path, extra, ok):
    fx = _Fixture(tmp_path, _GOOD_PR)
    rec = fx.temp / "record"
    rec.mkdir()
    (rec / "demo.json").write_text("{}")
    (rec / "demo.examples.npz").write_text("npz")
    if extra == "notes.txt":
        (rec / extra).write_text("x")
    elif extra:
        (rec / "demo.examples.npz").unlink()
        (rec / "demo.examples.npz").symlink_to(extra[2:])
    good = {"ENTRY": "demo", "PR": "7", "HEAD_SHA": fx.head}
    proc, _ = fx.run("sign", "check-artifact", good)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    for bad in ({"ENTRY": "../demo"}, {"PR": "7:refs/heads/main"}, {"HEAD_SHA": "main"}):
        assert fx.run("sign", "check-artifact", {**good, **bad})[0].returncode == 1, bad


def test_the_sign_job_pushes_only_the_signed_record_to_a_new_branch(tmp_path):
    fx = _Fixture(tmp_path, _GOOD_PR)
    _git(fx.origin, "config", "receive.denyCurrentBranch", "ignore")
    rec = fx.temp / "record"
    rec.mkdir()
    (rec / "demo.json").write_text('{"signature": {}}\n')
    (rec / "demo.examples.npz").write_text("npz")
    proc, _ = fx.run("sign", "push", {"ENTRY": "demo", "PR": "7", "HEAD_SHA": fx.head, "GH_TOKEN": "t0ken"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    branch = "records/demo-pr7-run11-1"
    assert _git(fx.origin, "rev-parse", f"{branch}~1") == fx.base
    changed = _git(fx.origin, "diff", "--name-only", fx.base, branch).splitlines()
    assert changed == ["leaderboard/results/demo.examples.npz", "leaderboard/results/demo.json"]
    assert f"PR #7 at {fx.head}" in _git(fx.origin, "log", "-1", "--format=%s", branch)
    assert _git(fx.origin, "rev-parse", "main") == fx.base  # main itself is never pushed to
    summary = (fx.temp / "push.summary").read_text()
    assert f"compare/main...{branch}?expand=1" in summary and "t0ken" not in proc.stdout + proc.stderr + summary


# ----------------------------------------------------------------------------------- CODEOWNERS
def _codeowners() -> list[tuple[str, list[str]]]:
    rules = []
    for line in (REPO / ".github" / "CODEOWNERS").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pattern, *owners = line.split()
            rules.append((pattern, owners))
    return rules


def _owners(path: str, rules: list[tuple[str, list[str]]]) -> list[str]:
    """Owners of a repository path under the CODEOWNERS patterns used here: anchored (/x) files
    and folders (/x/); as on GitHub, the last matching line wins."""
    found: list[str] = []
    for pattern, owners in rules:
        assert pattern.startswith("/") and "*" not in pattern, f"unanchored or glob pattern {pattern!r}"
        rel = pattern[1:]
        if (rel.endswith("/") and path.startswith(rel)) or path == rel:
            found = owners
    return found


@pytest.mark.parametrize("path", [
    "leaderboard/keys/maintainers-ed25519.pub.pem", "leaderboard/results/mnist-pgd.json",
    "leaderboard/results/mnist-pgd.examples.npz", "leaderboard/boards.py", "leaderboard/reported.csv",
    ".github/workflows/full-eval.yml", ".github/CODEOWNERS", "harness/worker.py", "pyproject.toml",
    ".gitattributes"])
def test_codeowners_guard_what_the_board_trusts(path):
    assert _owners(path, _codeowners()) == ["@robust-frontier/maintainers"]


def test_codeowners_leave_submission_folders_to_ordinary_review():
    rules = _codeowners()
    assert all(owners and all(o.startswith("@") for o in owners) for _, owners in rules)
    assert _owners("submissions/demo/submission.yaml", rules) == []
