"""Shared by the bound benchmarks: the VNN-COMP 2021 and auto_LiRPA snapshots (fetched bare git
directories, no network), extracted into a temporary folder, and the simple VNN-LIB properties of
the ``mnistfc`` and ``eran`` benchmarks (an input box and "some other class reaches the label").

auto_LiRPA is a *reference* here, never a dependency of the harness: it is put on ``sys.path``
only inside the benchmark process. Its optional imports ``appdirs`` and ``graphviz`` are given
two-line stand-ins in the temporary folder (the bound computation does not use them).

The property reader is deliberately minimal (this is a benchmark of bounds, not of the VNN-LIB
reader): it reads ``(assert (<= X_i v))`` / ``(assert (>= X_i v))`` and the label ``t`` of the
disjunction ``(or (and (>= Y_j Y_t)) ...)``, and refuses anything else.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

MIRROR = Path(__file__).resolve().parents[2] / ".mirror"  # fetched snapshots, beside the checkout (like ../shared)
VNNCOMP = MIRROR / "stanleybak+vnncomp2021" / "repo"
LIRPA = MIRROR / "Verified-Intelligence+auto_LiRPA" / "repo"
_TMP = Path(os.environ.get("BENCH_VNN_TMP", Path(tempfile.gettempdir()) / "bench_vnn"))


def git_head(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def extract(repo: Path, subdir: str, name: str) -> Path:
    """``git archive HEAD subdir`` of a bare repository into ``$TMP/name/<commit>`` (once)."""
    dest = _TMP / name / git_head(repo)[:12]
    if not (dest / subdir).exists():
        dest.mkdir(parents=True, exist_ok=True)
        arch = subprocess.run(["git", "-C", str(repo), "archive", "HEAD", subdir], check=True,
                              capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return dest / subdir


def benchmark_dir(name: str, repo: Path = VNNCOMP) -> Path:
    return extract(repo, f"benchmarks/{name}", "vnncomp2021")


def import_lirpa(repo: Path = LIRPA):
    """auto_LiRPA from the snapshot (extracted to the temporary folder), with stand-ins for its
    optional ``appdirs``/``graphviz`` imports; returns the module and the snapshot's commit."""
    root = extract(repo, "auto_LiRPA", "auto_LiRPA").parent
    shim = _TMP / "lirpa_shim"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "appdirs.py").write_text(f"def user_cache_dir(*a, **k):\n    return {str(_TMP / 'lirpa_cache')!r}\n"
                                     "user_data_dir = user_cache_dir\n")
    (shim / "graphviz.py").write_text("class Digraph:\n    def __init__(self, *a, **k):\n"
                                      "        raise RuntimeError('graphviz is not available')\n")
    for p in (str(shim), str(root)):
        if p not in sys.path:
            sys.path.insert(0, p)
    import warnings
    warnings.filterwarnings("ignore")
    import auto_LiRPA
    return auto_LiRPA, git_head(repo)


_BOUND = re.compile(r"\(assert \((<=|>=) X_(\d+) ([-+0-9.eE]+)\)\)")
_LABEL = re.compile(r"\(>= Y_(\d+) Y_(\d+)\)")


def read_robustness_property(path: Path, input_shape) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(lo, hi) of shape (1, *input_shape) and the label of a robustness property."""
    text = Path(path).read_text()
    n = 1
    for s in input_shape:
        n *= int(s)
    lo = torch.full((n,), float("nan"))
    hi = torch.full((n,), float("nan"))
    for m in _BOUND.finditer(text):
        (hi if m.group(1) == "<=" else lo)[int(m.group(2))] = float(m.group(3))
    labels = {int(m.group(2)) for m in _LABEL.finditer(text)}
    if torch.isnan(lo).any() or torch.isnan(hi).any() or len(labels) != 1:
        raise ValueError(f"{path.name}: not a simple robustness property")
    return lo.reshape(1, *input_shape), hi.reshape(1, *input_shape), labels.pop()


def instances(bench: Path) -> list[tuple[Path, Path, float]]:
    """(net, property, timeout) rows of the benchmark's instances csv."""
    csv = next(bench.glob("*instances.csv"))
    rows = []
    for line in csv.read_text().splitlines():
        if line.strip():
            net, prop, t = [s.strip() for s in line.split(",")]
            rows.append((bench / net, bench / prop, float(t)))
    return rows


def load_onnx(path: Path) -> torch.nn.Module:
    """The harness's own sanitised ONNX loading (onnx2torch)."""
    from harness.models.load import _build_onnx
    return _build_onnx(Path(path)).eval()


def input_shape(net: torch.nn.Module, path: Path) -> tuple:
    import onnx
    g = onnx.load(str(path)).graph
    dims = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    return tuple(int(d) for d in dims[1:])
