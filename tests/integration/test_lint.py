"""The code base passes ruff with the project's configuration (``[tool.ruff]`` in pyproject.toml:
pyflakes, pycodestyle, isort and bugbear), and that configuration does catch each family."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_the_code_base_passes_ruff():
    proc = _ruff(".")
    assert proc.returncode == 0, "ruff found problems (run `ruff check --fix .`):\n" + proc.stdout[-4000:]


def test_the_configuration_catches_each_rule_family(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import sys\n"
        "import os\n"                          # I001: unsorted; F401: unused
        "\n"
        "\n"
        "def f(x=[]):\n"                       # B006: mutable default
        "    return x  \n"                     # W291: trailing whitespace
        "\n"
        "\n"
        f"LONG = {'1' * 130}\n"                # E501: longer than 120
    )
    proc = _ruff("--config", str(ROOT / "pyproject.toml"), str(bad), cwd=tmp_path)
    assert proc.returncode == 1
    for code in ("F401", "I001", "B006", "W291", "E501"):
        assert code in proc.stdout, (code, proc.stdout)
