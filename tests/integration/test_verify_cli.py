"""``harness verify NET.onnx PROP.vnnlib``: hand-made ONNX nets with known answers, the VNN-COMP result
file, the counterexample checked here by an independent numpy forward pass, one-line errors."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx2torch  # noqa: F401  (a slow import: at collection, not inside a test's time)
import pytest

from harness.bounds.vnnlib import read_vnnlib
from harness.certifiers.vnncomp import file_sha256, property_arrays, read_answer, run_verify_job
from harness.cli import main
from harness.core.errors import HarnessError
from harness.core.files import atomic_savez
from harness.data.npzsafe import read_npz
from harness.sandbox.job import WorkerJob

# y0 = relu(x0 - x1) + 0.1 * x0, y1 = relu(x1 - x0)
W1 = np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32)
B1 = np.zeros(2, np.float32)
W2 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
SKIP = np.array([[0.1, 0.0], [0.0, 0.0]], np.float32)


def forward(x: np.ndarray) -> np.ndarray:
    """The net in numpy float64 (independent of onnx2torch and the bounds)."""
    x = np.asarray(x, np.float64).reshape(2)
    return W2.astype(np.float64) @ np.maximum(W1.astype(np.float64) @ x + B1, 0) + SKIP.astype(np.float64) @ x


def make_net(path: Path) -> Path:
    path.parent.chmod(0o755)  # the sandboxed worker (uid 65534 under root) reads the network's folder
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "W2", "Z"], ["a"], transB=1),
         helper.make_node("Gemm", ["x", "S", "Z"], ["s"], transB=1),
         helper.make_node("Add", ["a", "s"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(B1, "B1"),
         numpy_helper.from_array(W2, "W2"), numpy_helper.from_array(SKIP, "S"),
         numpy_helper.from_array(np.zeros(2, np.float32), "Z")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


DECL = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
# x0 in [0.6, 1], x1 in [0, 0.4]: y0 >= 0.2 + 0.06 > 0 = y1, and y0 <= 1.1: nothing unsafe
UNSAT = DECL + """(assert (>= X_0 0.6)) (assert (<= X_0 1.0)) (assert (>= X_1 0.0)) (assert (<= X_1 0.4))
(assert (or (and (>= Y_1 Y_0)) (and (>= Y_0 1.2))))"""
# x0 in [0.4, 1], x1 in [0, 0.5]: x0 = 0.4, x1 = 0.5 gives y0 = 0.04 < y1 = 0.1 (the second disjunct)
SAT = DECL + """(assert (>= X_0 0.4)) (assert (<= X_0 1.0)) (assert (>= X_1 0.0)) (assert (<= X_1 0.5))
(assert (or (and (>= Y_0 5)) (and (>= Y_1 (+ Y_0 0.01)) (<= Y_0 0.5))))"""


def parse_result(text: str) -> tuple[str, dict[str, float]]:
    word, _, rest = text.partition("\n")
    return word, {k: float(v) for k, v in re.findall(r"\((\w+_\d+) ([^()\s]+)\)", rest)}


def check_sat(text: str, vnnlib: str) -> None:
    word, a = parse_result(text)
    assert word == "sat"
    x = np.array([a["X_0"], a["X_1"]])
    y = forward(x)
    assert np.allclose(y, [a["Y_0"], a["Y_1"]], atol=1e-6)  # the reported outputs are the net's
    lo, hi = np.array([0.4, 0.0]), np.array([1.0, 0.5])
    assert np.all(x >= lo) and np.all(x <= hi)
    assert (y[0] >= 5) or (y[1] >= y[0] + 0.01 and y[0] <= 0.5)


def _job(tmp_path: Path, net: Path, text: str, seconds: float = 60.0):
    prop_path = tmp_path / "p.vnnlib"
    prop_path.write_text(text)
    prop = read_vnnlib(prop_path)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    atomic_savez(work / "property.npz", property_arrays(prop))
    job = WorkerJob(submission=str(net), submission_sha256=file_sha256(net), state_dir=str(work), stages=[],
                    device="cpu", n_examples=0, batch_size=1, kind="verify",
                    verify={"deadline_unix": time.time() + seconds, "threads": 1, "seed": 0})
    return prop, work, job


def _answer(work: Path) -> dict:
    return read_npz(work / "verify.npz", max_file_bytes=1 << 20, max_total_bytes=1 << 20, what="verify.npz")


@pytest.mark.parametrize("text, word", [(UNSAT, "unsat"), (SAT, "sat")], ids=["unsat", "sat"])
def test_the_worker_side_answers_known_properties(tmp_path, text, word):
    net = make_net(tmp_path / "net.onnx")
    prop, work, job = _job(tmp_path, net, text)
    run_verify_job(job)  # in this process: the sandboxed path is the slow test below
    res = read_answer(prop, _answer(work), 0.0)
    assert res.word == word
    if word == "sat":
        check_sat(res.result_text(), text)
    else:
        assert res.result_text() == "unsat\n"


def test_a_counterexample_outside_the_box_or_not_unsafe_is_refused(tmp_path):
    """The supervisor checks the worker's answer against the property it read itself."""
    net = make_net(tmp_path / "net.onnx")
    prop, work, job = _job(tmp_path, net, SAT)
    run_verify_job(job)
    got = dict(_answer(work))
    assert read_answer(prop, got, 0.0).word == "sat"
    with pytest.raises(HarnessError, match="outside the input box"):
        read_answer(prop, {**got, "x": np.array([0.39, 0.5])}, 0.0)
    with pytest.raises(HarnessError, match="not unsafe"):
        read_answer(prop, {**got, "y": np.array([0.3, 0.0])}, 0.0)
    with pytest.raises(HarnessError, match="malformed"):
        read_answer(prop, {**got, "status": np.array([7])}, 0.0)


def test_a_malformed_property_is_error_and_one_line(tmp_path, capsys):
    net = make_net(tmp_path / "net.onnx")
    bad = tmp_path / "bad.vnnlib"
    bad.write_text(DECL + "(assert (<= X_0 1)")
    out = tmp_path / "result.txt"
    assert main(["verify", str(net), str(bad), "--timeout", "10", "--out", str(out)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "error\n" and out.read_text() == "error\n"
    assert cap.err.startswith("error: ") and cap.err.count("\n") == 1 and "unbalanced '('" in cap.err
    assert main(["verify", str(net), str(bad), "--timeout", "-3"]) == 2
    assert "--timeout" in capsys.readouterr().err


@pytest.mark.slow
def test_harness_verify_end_to_end_in_the_sandboxed_worker(tmp_path, capsys):
    net = make_net(tmp_path / "net.onnx")
    for text, word in ((UNSAT, "unsat"), (SAT, "sat")):
        prop = tmp_path / f"{word}.vnnlib"
        prop.write_text(text)
        out = tmp_path / f"{word}.txt"
        # its own process: --timeout counts from the process start, as VNN-COMP counts it
        run = subprocess.run([sys.executable, "-m", "harness", "verify", str(net), str(prop), "--timeout", "60",
                              "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout == word + "\n"
        if word == "sat":
            check_sat(out.read_text(), text)
        else:
            assert out.read_text() == "unsat\n"


@pytest.mark.slow
def test_bad_networks_are_one_line_errors_from_the_worker(tmp_path, capsys):
    prop = tmp_path / "p.vnnlib"
    prop.write_text(UNSAT)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not an onnx model" * 10)
    three = tmp_path / "three.vnnlib"  # the net takes 2 inputs
    three.write_text(UNSAT.replace("(declare-const X_1 Real)", "(declare-const X_1 Real)(declare-const X_2 Real)")
                     + " (assert (>= X_2 0)) (assert (<= X_2 1))")
    net = make_net(tmp_path / "net.onnx")
    for onnx_path, vnnlib, words in ((garbage, prop, "ONNX"), (net, three, "declares 3 inputs")):
        out = tmp_path / "r.txt"
        assert main(["verify", str(onnx_path), str(vnnlib), "--timeout", "60", "--out", str(out)]) == 2
        cap = capsys.readouterr()
        assert cap.out == "error\n" and out.read_text() == "error\n"
        assert cap.err.count("\n") == 1 and words in cap.err, cap.err
