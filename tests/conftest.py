"""Shared fixtures: the repository, and a factory for small throw-away submissions."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from helpers.slowcheck import pytest_addoption, pytest_configure, pytest_runtest_makereport  # noqa: F401  (fail unmarked slow tests)
from helpers.spec import REPO, base_spec

from harness.core.files import sha256_file
from harness.models import compat  # noqa: F401  (alias autoattack; quiet robustbench warnings)

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def make_submission(tmp_path):
    """make_submission(sub_id, module=None, checkpoint_bytes=None, **spec_overrides) -> yaml path.

    Writes ``tmp/submissions/<id>/model.pt`` (a state_dict saved with torch.save) and a
    ``submission.yaml`` whose sha256 matches, unless the overrides say otherwise.
    """

    def make(sub_id: str = "tmp-model", module: torch.nn.Module | None = None, *,
             checkpoint_name: str = "model.pt", write=None, **over) -> Path:
        folder = tmp_path / "submissions" / sub_id
        folder.mkdir(parents=True, exist_ok=True)
        ck = folder / checkpoint_name
        if write is not None:
            write(ck)
        else:
            from harness.models.architectures import mnist_small_cnn

            torch.manual_seed(0)
            torch.save((module or mnist_small_cnn()).state_dict(), ck)
        spec = base_spec(sub_id, sha256_file(ck), **over)
        spec["model"]["checkpoint"]["path"] = checkpoint_name
        if "model" in over:
            spec["model"] = over["model"]
        path = folder / "submission.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return make


@pytest.fixture(scope="session")
def repo_site(tmp_path_factory) -> Path:
    """The leaderboard of the repository itself (every committed record, all 188 reported rows),
    built once per test session: the build and browser tests share it."""
    from leaderboard.build import build_leaderboard

    return build_leaderboard(REPO, tmp_path_factory.mktemp("repo-site") / "site")


E2E = REPO / "tests" / "e2e"


def pytest_collection_modifyitems(config, items):
    """tests/e2e/ runs whole commands as a user does: every test there is slow by definition, so the folder
    marks them (the inner loop ``python -m pytest -m "not slow"`` leaves them out)."""
    for item in items:
        if E2E in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)
