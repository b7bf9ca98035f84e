"""benchmarks/bench_vnncomp.py: an outcome is known where the VNN-COMP tools that answered agree (the
ignored ones left out), paths are matched across the results' and the instances' spellings."""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_vnncomp", ROOT / "benchmarks" / "bench_vnncomp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results_repo(tmp_path: Path, files: dict[str, str]) -> Path:
    work = tmp_path / "work"
    (work / "results_csv").mkdir(parents=True)
    for name, text in files.items():
        (work / "results_csv" / name).write_text(text)
    run = lambda *a: subprocess.run(["git", "-C", str(work), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    run("add", ".")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results")
    return work


def test_known_outcomes_need_agreement(tmp_path):
    b = _bench()
    row = "mnistfc,./benchmarks/mnistfc/{n},./benchmarks/mnistfc/{p},1.0,{w},2.0\n"
    repo = _results_repo(tmp_path, {
        "a-b-CROWN.csv": row.format(n="net.onnx", p="p1.vnnlib", w="UNSAT") + row.format(n="net.onnx", p="p2.vnnlib",
                                                                                          w="timeout")
        + row.format(n="net.onnx", p="p3.vnnlib", w="SAT"),
        "ERAN.csv": row.format(n="net.onnx", p="p1.vnnlib", w="holds") + row.format(n="net.onnx", p="p2.vnnlib",
                                                                                     w="violated")
        + row.format(n="net.onnx", p="p3.vnnlib", w="holds"),
        "RPM.csv": row.format(n="net.onnx", p="p1.vnnlib", w="violated"),
        "other.csv": "eran,./benchmarks/eran/net.onnx,./benchmarks/eran/p1.vnnlib,1,holds,1\n",
    })
    known, ref, disagree = b.known_outcomes(repo, "mnistfc", frozenset({"RPM"}))
    assert known == {("net.onnx", "p1.vnnlib"): "unsat", ("net.onnx", "p2.vnnlib"): "sat"}  # p3: disagreement
    assert disagree == 1
    assert ref[("net.onnx", "p1.vnnlib")] == ("unsat", pytest.approx(3.0))
    known, _, disagree = b.known_outcomes(repo, "mnistfc")  # with RPM: p1 is disputed too
    assert ("net.onnx", "p1.vnnlib") not in known and disagree == 2
    assert b._key("mnistfc", "mnist-net_256x2.onnx", "prop_0_0.03.vnnlib") == \
        b._key("mnistfc", "./benchmarks/mnistfc/mnist-net_256x2.onnx", "./benchmarks/mnistfc/prop_0_0.03.vnnlib")
