"""Execution safety (issue 12): a stranger's submission must not run code, touch files outside its
folder, hang the machine or exhaust its memory, and every such attempt ends in ONE line.

Each attack is reproduced as an attacker would write it, and each has a guard showing the payload
is live (it does run without the harness's defence), so that its absence proves the defence. Every
evaluation goes through the real sandboxed worker: the code-execution and hang cases run the whole
CLI as a subprocess (``python -m harness eval``); the others call the CLI's ``main`` in this process
(the supervisor), which saves starting torch once more per test, and capture file descriptor 2.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harness.core.errors import HarnessError
from harness.core.files import sha256_file

MNIST = Path(__file__).resolve().parents[2] / "harness" / "data" / "mnist_test.npz"


def _submission(root: Path, sub_id: str, fmt: str, write, filename: str, *, evaluation=None, **model) -> Path:
    folder = root / "submissions" / sub_id
    folder.mkdir(parents=True)
    write(folder / filename)
    spec = {
        "id": sub_id, "name": sub_id, "authors": ["attacker"], "license": "MIT", "dataset": "mnist",
        "threat_model": {"norm": "Linf", "eps": 0.3},
        "model": {"format": fmt, "checkpoint": {"path": filename, "sha256": sha256_file(folder / filename)}, **model},
        "training": {"method": "standard", "epochs": 1},
        "evaluation": {"n_examples": 20, "batch_size": 20, **(evaluation or {})},
    }
    (folder / "submission.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "submission.yaml"


def _cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "eval", *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=timeout)


def _main(capfd, *args) -> subprocess.CompletedProcess:
    """The CLI's main() here (the supervisor), the worker as a real child process."""
    from harness.cli import main

    capfd.readouterr()
    rc = main(["eval", *map(str, args), "--no-progress"])
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr.strip()


# ------------------------------------------------------------------------------------- ONNX
def _payload_name(marker: Path) -> str:
    # the issue's payload: closes fx's getattr(self, "...") string and calls os.system
    return f'lin") if getattr(__import__("os"),"system")("touch {marker}") else getattr(self, "lin'


def _onnx_flatten_gemm(path: Path, gemm_name: str, w: np.ndarray, b: np.ndarray) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], name="flat", axis=1),
         helper.make_node("Gemm", ["f", "W", "B"], ["y"], name=gemm_name, transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _linear_weights():
    rng = np.random.default_rng(0)
    return rng.normal(size=(10, 784)).astype(np.float32), rng.normal(size=10).astype(np.float32)


def test_onnx_node_name_payload_is_live_without_the_harness(tmp_path):
    """Guard: plain onnx2torch + torch.fx runs the node name as Python (the issue's attack)."""
    import onnx
    from onnx2torch import convert

    marker = tmp_path / "PWNED"
    _onnx_flatten_gemm(tmp_path / "m.onnx", _payload_name(marker), *_linear_weights())
    gm = convert(onnx.load(str(tmp_path / "m.onnx")))
    with pytest.raises(AttributeError):  # the payload's own tail; the command ran before it
        gm(torch.rand(2, 1, 28, 28))
    assert marker.exists()


@pytest.mark.slow
def test_onnx_node_name_cannot_run_code(tmp_path):
    """Through the CLI: the payload node is renamed, nothing runs, and the model still computes
    its graph (predictions equal an independent numpy evaluation of Flatten -> Gemm)."""
    marker = tmp_path / "PWNED"
    w, b = _linear_weights()
    path = _submission(tmp_path, "evil-onnx", "onnx",
                       lambda p: _onnx_flatten_gemm(p, _payload_name(marker), w, b), "model.onnx")
    out = tmp_path / "rec.json"
    proc = _cli(path, "--only", "clean,flops", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not marker.exists()
    with np.load(MNIST) as d:
        x = d["x"][:20].reshape(20, -1).astype(np.float32) / 255
    expected = (x @ w.T + b).argmax(1)
    with np.load(out.with_suffix(".examples.npz")) as z:
        assert (z["clean_pred"] == expected).all()


def test_generated_fx_code_is_checked_before_python_compiles_it(tmp_path):
    """Second line of defence: were a name to reach fx's source unrenamed, the source is refused
    before it is compiled (so before any forward pass)."""
    import onnx
    from onnx2torch import convert

    from harness.models.load import _fx_source_checked, check_fx_source

    marker = tmp_path / "PWNED"
    _onnx_flatten_gemm(tmp_path / "m.onnx", _payload_name(marker), *_linear_weights())
    with pytest.raises(HarnessError, match="generated code .*refused"):
        with _fx_source_checked():
            convert(onnx.load(str(tmp_path / "m.onnx")))  # not sanitised on purpose
    assert not marker.exists()
    # the honest conversion of the same graph passes the same check
    _onnx_flatten_gemm(tmp_path / "ok.onnx", "lin", *_linear_weights())
    gm = convert(onnx.load(str(tmp_path / "ok.onnx")))
    check_fx_source(gm.code, gm.graph.python_code(root_module="self").globals)
    for bad in ('import os\ndef forward(self, x):\n    return x',
                'def forward(self, x):\n    return (lambda: x)()',
                'def forward(self, x):\n    return getattr(self, "a/b")(x)',
                'def forward(self, x):\n    return open("/etc/passwd")'):
        with pytest.raises(HarnessError):
            check_fx_source(bad, {})


def test_onnx_names_are_renamed_and_semantics_kept(tmp_path):
    """Every node, value and initializer name becomes a generated identifier."""
    import onnx

    from harness.models.load import sanitize_onnx

    _onnx_flatten_gemm(tmp_path / "m.onnx", _payload_name(tmp_path / "x"), *_linear_weights())
    proto = onnx.load(str(tmp_path / "m.onnx"))
    sanitize_onnx(proto)
    g = proto.graph
    names = ([n.name for n in g.node] + [v for n in g.node for v in (*n.input, *n.output)]
             + [i.name for i in g.initializer] + [v.name for v in (*g.input, *g.output, *g.value_info)])
    assert all(n.isidentifier() and n[0] in "nv" and n[1:].isdigit() for n in names), names
    onnx.checker.check_model(proto)  # still a valid model: consumers find their producers


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    from harness.models.load import _build_onnx

    folder = tmp_path / "sub"
    folder.mkdir()
    _onnx_flatten_gemm(folder / "model.onnx", "lin", *_linear_weights())
    proto = onnx.load(str(folder / "model.onnx"))
    convert_model_to_external_data(proto, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    onnx.save(proto, str(folder / "model.onnx"))
    (folder / "w.bin").rename(tmp_path / "w.bin")
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../w.bin"
    onnx.save(proto, str(folder / "model.onnx"))
    with pytest.raises(HarnessError, match="cannot read ONNX model: .*outside") as e:
        _build_onnx(folder / "model.onnx")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------- TorchScript
TS_EVIL = textwrap.dedent('''
    import torch
    from typing import Tuple

    class Evil(torch.nn.Module):
        """__setstate__ runs inside torch.jit.load: it copies a secret file into a marker file."""

        def __init__(self, secret: str, mark: str):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(10, 784))
            self.secret = secret
            self.mark = mark

        @torch.jit.export
        def __getstate__(self) -> Tuple[torch.Tensor, bool, str, str]:
            return (self.weight, self.training, self.secret, self.mark)

        @torch.jit.export
        def __setstate__(self, state: Tuple[torch.Tensor, bool, str, str]) -> None:
            torch.save(torch.from_file(state[2], size=6, dtype=torch.uint8), state[3])
            self.weight = state[0]
            self.training = state[1]
            self.secret = state[2]
            self.mark = state[3]

        def forward(self, x):
            return x.flatten(1) @ self.weight.t()
''')


def _script_module(tmp_path: Path, source: str, name: str, *args):
    """torch.jit.script needs the class's source in a real file."""
    mod_path = tmp_path / f"{name.lower()}_src.py"
    mod_path.write_text(source)
    import importlib.util

    spec = importlib.util.spec_from_file_location(mod_path.stem, mod_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return torch.jit.script(getattr(mod, name)(*args))


def _evil_torchscript(tmp_path: Path, secret: Path, marker: Path) -> Path:
    secret.write_bytes(b"secret")
    ts = tmp_path / "evil.ts"
    _script_module(tmp_path, TS_EVIL, "Evil", str(secret), str(marker)).save(str(ts))
    marker.unlink(missing_ok=True)  # scripting itself may have called __setstate__
    return ts


def test_torchscript_payload_is_live_without_the_harness(tmp_path):
    """Guard: torch.jit.load alone reads the secret and writes it outside any folder."""
    secret, marker = tmp_path / "secret.bin", tmp_path / "STOLEN"
    ts = _evil_torchscript(tmp_path, secret, marker)
    torch.jit.load(str(ts))
    assert bytes(torch.load(marker).tolist()) == b"secret"


def test_torchscript_is_refused_without_trust_code(tmp_path):
    secret, marker = tmp_path / "secret.bin", tmp_path / "STOLEN"
    ts = _evil_torchscript(tmp_path, secret, marker)
    path = _submission(tmp_path, "evil-ts", "torchscript", lambda p: p.write_bytes(ts.read_bytes()), "model.ts")
    err = _one_line_error(_cli(path, "--only", "clean", "--out", tmp_path / "rec.json"))
    assert "TorchScript submissions are refused" in err and "ONNX" in err and "--trust-code" in err
    assert not marker.exists()
    assert not (tmp_path / "rec.json").exists()


# ----------------------------------------------------------------------- denial of service
TS_HANG = textwrap.dedent('''
    import torch

    class Hang(torch.nn.Module):
        """Well-behaved on the first batch of real data (the clean stage); loops for ever on the next
        (the next stage's first forward pass)."""

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(10, 784))
            self.calls = 0

        def forward(self, x):
            if x.shape[0] == 20:
                self.calls += 1
            i = 0
            while self.calls > 1 and i >= 0:
                i = (i + 1) % 1000
            return x.flatten(1) @ self.weight.t()
''')

TS_ALLOC = textwrap.dedent('''
    import torch

    class Alloc(torch.nn.Module):
        """Allocates 3 GiB on the batch of 20 the clean stage uses."""

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(10, 784))

        def forward(self, x):
            if x.shape[0] == 20:
                big = torch.ones(805306368)  # 3 GiB of float32
                x = x + big[0]
            return x.flatten(1) @ self.weight.t()
''')


def _ts_submission(tmp_path, source, name, sub_id, **evaluation):
    ts = tmp_path / f"{name}.ts"
    _script_module(tmp_path, source, name).save(str(ts))
    return _submission(tmp_path, sub_id, "torchscript", lambda p: p.write_bytes(ts.read_bytes()), "model.ts",
                       evaluation=evaluation)


@pytest.mark.slow
def test_hang_becomes_wall_clock_error_and_finished_stages_are_kept(tmp_path, capfd):
    """The submission's own limit (evaluation.limits.stage_timeout_s) applies; the worker's process
    tree is killed; the stage that finished is kept and a rerun resumes from it."""
    path = _ts_submission(tmp_path, TS_HANG, "Hang", "hang", limits={"stage_timeout_s": 3})
    out = tmp_path / "rec.json"
    err = _one_line_error(_cli(path, "--only", "clean,autoattack", "--trust-code", "--out", out))
    assert "stage autoattack exceeded its 3 s wall-clock limit" in err and "finished stages are kept in" in err
    state = Path(err.split("finished stages are kept in ")[1])
    assert (state / "stages" / "clean.json").exists() and not (state / "stages" / "autoattack.json").exists()
    log = (state / "worker.log").read_text()
    job = json.loads(log.split("job ", 1)[1].split("; sandbox", 1)[0])  # the job the worker ran
    assert job["stages"] == ["clean", "autoattack"]
    assert not out.exists()
    # the rerun resumes: clean comes from the state folder, not from the (hanging) model
    proc = _main(capfd, path, "--only", "clean", "--trust-code", "--out", out)
    assert proc.returncode == 0 and "clean        resumed from" in proc.stdout, proc.stderr


CAP_ENV = ("ROBUST_FRONTIER_MAX_MEMORY", "ROBUST_FRONTIER_MAX_STAGE_TIMEOUT_S", "ROBUST_FRONTIER_MAX_CPU_S")


@pytest.fixture
def no_cap_env(monkeypatch):
    for name in CAP_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_submission_limits_only_lower_the_maintainers_caps(make_submission, no_cap_env):
    """The issue's submission asks for 1 TiB and a week per stage: it runs under the maintainer's
    caps (the defaults, the runner's environment, or the flags, which win); a submission's lower
    limit applies; memory ``none`` is the maintainer's to give."""
    import os

    from harness.cli import _limit_flags, build_parser
    from harness.core.settings import DEFAULT_MAX_MEMORY, DEFAULT_MAX_STAGE_TIMEOUT_S
    from harness.runner.evaluate import resolve_limits
    from harness.stages import EvalOptions
    from harness.submission.load import load_submission

    def limits(sub, **opts):
        got = resolve_limits(sub, EvalOptions(**opts))
        return got["memory"], got["stage_timeout"], got["cpu"]

    greedy = load_submission(make_submission("greedy", evaluation={
        "n_examples": 5, "limits": {"memory": "1T", "stage_timeout_s": 604800}}))
    cores = os.cpu_count() or 1
    assert limits(greedy) == (DEFAULT_MAX_MEMORY, DEFAULT_MAX_STAGE_TIMEOUT_S, DEFAULT_MAX_STAGE_TIMEOUT_S * cores)
    assert DEFAULT_MAX_MEMORY == 16 * 2**30 and DEFAULT_MAX_STAGE_TIMEOUT_S == 6 * 3600
    assert resolve_limits(greedy, EvalOptions())["set_by"] == {"memory": "maintainer", "stage_timeout": "maintainer",
                                                                "cpu": "maintainer"}
    no_cap_env.setenv("ROBUST_FRONTIER_MAX_MEMORY", "4G")
    no_cap_env.setenv("ROBUST_FRONTIER_MAX_STAGE_TIMEOUT_S", "100")
    no_cap_env.setenv("ROBUST_FRONTIER_MAX_CPU_S", "50")
    assert limits(greedy) == (4 * 2**30, 100.0, 50.0)
    args = build_parser().parse_args(["eval", "x.yaml", "--memory-limit", "512M", "--stage-timeout", "5",
                                      "--cpu-limit", "7"])
    memory, timeout, cpu = _limit_flags(args)
    assert limits(greedy, memory_limit=memory, stage_timeout=timeout, cpu_limit=cpu) == (512 * 2**20, 5.0, 7.0)
    modest = load_submission(make_submission("modest", evaluation={
        "n_examples": 5, "limits": {"memory": "2G", "stage_timeout_s": 60, "cpu_seconds": 30}}))
    assert limits(modest) == (2 * 2**30, 60.0, 30.0)  # below the caps: the submission's own
    assert resolve_limits(modest, EvalOptions())["set_by"]["memory"] == "submission"
    assert limits(modest, memory_limit=0)[0] == 2 * 2**30  # the cap lifted: the submission's limit stays
    assert limits(greedy, memory_limit=0)[0] == 2**40  # no cap: what the submission asked for
    silent = load_submission(make_submission("silent", evaluation={"n_examples": 5}))
    assert limits(silent, memory_limit=0)[0] is None  # --memory-limit none
    no_cap_env.setenv("ROBUST_FRONTIER_MAX_MEMORY", "none")
    assert limits(silent)[0] is None
    with pytest.raises(HarnessError, match="cannot lift the memory limit"):
        load_submission(make_submission("lift", evaluation={"limits": {"memory": "none"}}))


def test_record_shows_the_effective_limits(tmp_path, capfd, no_cap_env):
    """The issue's greedy submission, evaluated for real under the runner's caps: the record's
    sandbox provenance shows the limits the worker ran under, and who set them."""
    import os

    w, b = _linear_weights()
    path = _submission(tmp_path, "greedy", "onnx", lambda p: _onnx_flatten_gemm(p, "lin", w, b), "model.onnx",
                       evaluation={"limits": {"memory": "1T", "stage_timeout_s": 604800}})
    no_cap_env.setenv("ROBUST_FRONTIER_MAX_MEMORY", "3G")
    no_cap_env.setenv("ROBUST_FRONTIER_MAX_STAGE_TIMEOUT_S", "900")
    out = tmp_path / "results" / "rec.json"
    proc = _main(capfd, path, "--only", "clean", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sandbox = json.loads(out.read_text())["provenance"]["sandbox"]
    assert sandbox["limits"] == {"memory_bytes": 3 * 2**30, "stage_timeout_s": 900.0,
                                 "cpu_seconds_per_stage": 900.0 * (os.cpu_count() or 1),
                                 "set_by": {"memory": "maintainer", "stage_timeout": "maintainer",
                                            "cpu": "maintainer"}}
    assert sandbox["stage_timeout_s"] == 900.0 and "3 GiB" in sandbox["memory"]
    if os.geteuid() == 0 and not sandbox["user"].startswith("root"):
        assert sandbox["user"].startswith("uid 65534")


def _cli_options(monkeypatch, *argv: str):
    """What ``harness eval ARGV`` hands the pipeline: the CLI's own translation of its flags (the
    evaluation itself is replaced; it returns None, as a torchrun rank other than 0 does)."""
    import harness.runner.evaluate
    from harness.cli import main

    seen = {}

    def fake_evaluate(submission, opts, **kw):
        seen.update(submission=submission, opts=opts, **kw)

    monkeypatch.setattr(harness.runner.evaluate, "evaluate", fake_evaluate)
    assert main(["eval", *argv]) == 0
    return seen


def test_the_cli_turns_its_eval_flags_into_the_options(make_submission, tmp_path, no_cap_env):
    from harness.stages import EvalOptions

    path = make_submission("flags", evaluation={"n_examples": 5})
    data, train = tmp_path / "data", tmp_path / "train.npz"
    data.mkdir()
    train.write_bytes(b"")
    out = tmp_path / "rec.json"
    seen = _cli_options(no_cap_env, str(path.parent), "--device", "cpu", "--n-examples", "7", "--batch-size", "3",
                        "--data-dir", str(data), "--train-data", str(train), "--sandbox", "bwrap", "--trust-code",
                        "--memory-limit", "512M", "--stage-timeout", "90", "--cpu-limit", "30.5", "--no-progress",
                        "--only", "clean,autoattack", "--out", str(out), "--restart")
    assert seen["opts"] == EvalOptions(device="cpu", batch_size=3, n_examples=7, data_dir=data, train_data=train,
                                       progress=False, sandbox="bwrap", trust_code=True, memory_limit=512 * 2**20,
                                       stage_timeout=90.0, cpu_limit=30.5)
    assert seen["submission"] == path  # the folder names its submission.yaml
    assert (seen["stages"], seen["out"], seen["restart"]) == (["clean", "autoattack"], out, True)
    assert seen["command"].startswith("harness eval ") and "--memory-limit 512M" in seen["command"]
    # no flags: the submission's own counts and limits, the sandboxed worker, no TorchScript
    seen = _cli_options(no_cap_env, str(path), "--skip", "diagnostics", "--no-progress")
    assert seen["opts"] == EvalOptions(progress=False)
    assert seen["opts"].sandbox == "worker" and seen["opts"].memory_limit is None
    assert seen["stages"] == ["clean", "flops", "certify", "autoattack"] and seen["restart"] is False
    assert _cli_options(no_cap_env, str(path), "--memory-limit", "none", "--no-progress")["opts"].memory_limit == 0


@pytest.mark.parametrize("flag,value", [("--stage-timeout", "nan"), ("--stage-timeout", "inf"),
                                        ("--stage-timeout", "-5"), ("--stage-timeout", "0"),
                                        ("--stage-timeout", "soon"), ("--cpu-limit", "nan"),
                                        ("--cpu-limit", "1e999"), ("--memory-limit", "-1G"),
                                        ("--memory-limit", "lots")])
def test_bad_limit_flags_are_one_line_errors_that_name_the_flag(make_submission, capfd, no_cap_env, flag, value):
    path = make_submission("flags", evaluation={"n_examples": 5})
    err = _one_line_error(_main(capfd, path, f"{flag}={value}"))
    assert err.startswith(f"error: {flag}: must be") and "model" not in err, err


@pytest.mark.parametrize("var,value", [("ROBUST_FRONTIER_MAX_STAGE_TIMEOUT_S", "nan"),
                                       ("ROBUST_FRONTIER_MAX_STAGE_TIMEOUT_S", "-inf"),
                                       ("ROBUST_FRONTIER_MAX_CPU_S", "-1"), ("ROBUST_FRONTIER_MAX_CPU_S", "1e999"),
                                       ("ROBUST_FRONTIER_MAX_MEMORY", "1.5X"), ("ROBUST_FRONTIER_MAX_MEMORY", "-3")])
def test_bad_limit_variables_are_one_line_errors_that_name_the_variable(make_submission, capfd, no_cap_env,
                                                                         var, value):
    path = make_submission("env", evaluation={"n_examples": 5})
    no_cap_env.setenv(var, value)
    err = _one_line_error(_main(capfd, path))
    assert err.startswith(f"error: {var}: must be") and "model" not in err, err


@pytest.mark.parametrize("limits", [{"stage_timeout_s": float("nan")}, {"stage_timeout_s": float("inf")},
                                    {"stage_timeout_s": -1}, {"cpu_seconds": float("nan")},
                                    {"memory": float("inf")}, {"memory": -1}, {"memory": "lots"}])
def test_bad_submission_limits_are_refused_by_the_schema(make_submission, capsys, limits):
    from harness.cli import main

    path = make_submission("yaml-limits", evaluation={"limits": limits})
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "evaluation.limits" in out, out


def test_3_gib_forward_hits_the_memory_limit(tmp_path, capfd):
    path = _ts_submission(tmp_path, TS_ALLOC, "Alloc", "alloc")
    err = _one_line_error(_main(capfd, path, "--only", "clean", "--trust-code", "--memory-limit", "1G",
                               "--out", tmp_path / "rec.json"))
    assert "stage clean ran out of memory" in err and "1 GiB" in err


def test_huge_architecture_kwargs_are_refused_before_allocating(tmp_path, capfd):
    """mnist_mlp with hidden = 10^6 is 10^12 parameters (4 TB): the schema bounds the argument.
    hidden = 20,000 passes the schema but is 4.2e8 parameters (1.6 GiB): refused from its
    meta-device size against the memory limit, before anything is allocated."""
    path = _submission(tmp_path, "huge", "state_dict", lambda p: p.write_bytes(b"\0" * 64), "model.pt",
                       architecture="mnist_mlp", architecture_kwargs={"hidden": 1_000_000})
    err = _one_line_error(_main(capfd, path, "--only", "clean", "--out", tmp_path / "rec.json", "--memory-limit", "2G"))
    assert "model.architecture_kwargs" in err and "1000000" in err
    path = _submission(tmp_path, "big", "state_dict", lambda p: p.write_bytes(b"\0" * 64), "model.pt",
                       architecture="mnist_mlp", architecture_kwargs={"hidden": 20_000})
    err = _one_line_error(_main(capfd, path, "--only", "clean", "--out", tmp_path / "rec2.json", "--memory-limit",
                                "1G"))
    assert "model.architecture_kwargs" in err and "parameters" in err and "refused before allocating" in err


# --------------------------------------------------------------------- outputs on real data
def _onnx_graph(path: Path, nodes, initializers) -> None:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


PATCH = [9 * 28 + 17, 9 * 28 + 18, 10 * 28 + 17, 10 * 28 + 18]  # a 2x2 patch of pixels


def _nan_on_blank_patch(path: Path) -> None:
    """Logits times s/s, s the sum of a 2x2 patch: NaN (0/0) exactly where the patch is blank,
    which never happens on uniform noise but does on some MNIST digits."""
    from onnx import helper, numpy_helper

    w, b = _linear_weights()
    _onnx_graph(path, [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "W", "B"], ["z"], transB=1),
        helper.make_node("Gather", ["f", "C"], ["c"], axis=1),
        helper.make_node("ReduceSum", ["c", "A"], ["s"], keepdims=1),
        helper.make_node("Div", ["s", "s"], ["r"]),
        helper.make_node("Mul", ["z", "r"], ["y"]),
    ], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(np.array(PATCH, np.int64), "C"), numpy_helper.from_array(np.array([1], np.int64), "A")])


def _three_rows(path: Path) -> None:
    """The logits of the first 3 inputs whatever the batch: right on the 2 noise inputs of the load
    check, wrong on any real batch."""
    from onnx import helper, numpy_helper

    w, b = _linear_weights()
    _onnx_graph(path, [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "W", "B"], ["z"], transB=1),
        helper.make_node("Slice", ["z", "S", "E", "A"], ["y"]),
    ], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(np.array([0], np.int64), "S"), numpy_helper.from_array(np.array([3], np.int64), "E"),
        numpy_helper.from_array(np.array([0], np.int64), "A")])


@pytest.mark.slow
def test_nan_only_on_real_images_names_the_first_bad_example(tmp_path, capfd):
    with np.load(MNIST) as d:
        blank = d["x"][:100].reshape(100, -1)[:, PATCH].astype(int).sum(1) == 0
    first_blank = int(np.nonzero(blank)[0][0])
    assert first_blank > 5  # not in the first batch: the error must map the row to the example
    path = _submission(tmp_path, "nan-real", "onnx", _nan_on_blank_patch, "model.onnx",
                       evaluation={"n_examples": 100, "batch_size": 5})
    err = _one_line_error(_main(capfd, path, "--only", "clean", "--out", tmp_path / "rec.json"))
    assert err.endswith(f"model returned NaN logits for example {first_blank} (stage clean)"), err


@pytest.mark.slow
def test_wrong_batch_dimension_on_real_batches_is_caught(tmp_path, capfd):
    path = _submission(tmp_path, "three-rows", "onnx", _three_rows, "model.onnx")
    err = _one_line_error(_main(capfd, path, "--only", "clean", "--out", tmp_path / "rec.json"))
    assert "model output has shape (3, 10), expected (N, 10) with N = 20 (stage clean)" in err


def test_check_logits_names_the_example_and_the_stage():
    from harness.models.load import check_logits

    out = torch.zeros(4, 10)
    check_logits(out, 4, 10, stage="clean", index=np.arange(4))
    out[2, 3] = float("inf")
    with pytest.raises(HarnessError, match=r"infinite logits for example 12 \(stage certify\)"):
        check_logits(out, 4, 10, stage="certify", index=np.arange(10, 14))
    with pytest.raises(HarnessError, match=r"row 2 of a batch of 4 inputs \(stage autoattack\)"):
        check_logits(out, 4, 10, stage="autoattack")
    with pytest.raises(HarnessError, match=r"shape \(4, 10\), expected \(N, 10\) with N = 5"):
        check_logits(out, 5, 10, stage="clean")


# ------------------------------------------------------------------------------- network
def test_worker_network_namespace_has_no_network(tmp_path):
    """The worker's isolation, as the worker applies it, blocks a connection that works without it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    probe = textwrap.dedent(f'''
        import socket, sys
        from harness.sandbox.jail import isolate_network
        state = isolate_network() if sys.argv[1] == "isolate" else "not asked"
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
            print("connected;", state)
        except OSError as e:
            print("refused;", state)
    ''')
    try:
        runs = {mode: subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True,
                                     timeout=60).stdout.strip() for mode in ("plain", "isolate")}
    finally:
        server.close()
    assert runs["plain"].startswith("connected"), runs  # guard: the probe can connect
    if "not isolated" in runs["isolate"]:
        pytest.skip(f"this kernel refuses network namespaces: {runs['isolate']}")
    assert runs["isolate"].startswith("refused; isolated"), runs


# ------------------------------------------------------------------ what code in the worker can do
def _probe(tmp_path, mode="worker", cpu_limit=30.0, **extra) -> dict:
    """Run the worker's probe job (harness.sandbox.jail.probe) as the supervisor would run a model:
    the same environment, confinement and limits. Returns the worker's runtime with its report."""
    import os

    from harness.sandbox.job import WorkerJob
    from harness.sandbox.supervisor import run_worker

    folder = tmp_path / "submissions" / "probe"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "submission.yaml").write_text("id: probe\n")
    state = tmp_path / "results" / ".state" / "probe" / "key"
    state.mkdir(parents=True, exist_ok=True)
    job = WorkerJob(submission=str(folder / "submission.yaml"), submission_sha256="", state_dir=str(state),
                    stages=[], device="cpu", n_examples=1, batch_size=1, cpu_limit=cpu_limit, kind="probe",
                    isolate_network=mode != "bwrap", parent_pid=None if mode == "bwrap" else os.getpid(),
                    extra={"hold_host_netns": True, **extra})
    return run_worker(job, mode=mode, stage_timeout=120, echo=lambda line: None)


def test_worker_environment_is_scrubbed_and_imports_this_harness(tmp_path, monkeypatch):
    """A secret in the supervisor's environment (a CI token, a signing key) is invisible to code in
    the worker; the worker still imports the very harness package the supervisor runs."""
    import harness

    monkeypatch.setenv("ROBUST_FRONTIER_SIGNING_KEY", "-----BEGIN PRIVATE KEY----- not really")
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_secret")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    report = _probe(tmp_path)["probe"]
    assert "ROBUST_FRONTIER_SIGNING_KEY" not in report["env"] and "GITHUB_TOKEN" not in report["env"]
    assert "OMP_NUM_THREADS" in report["env"] and "PATH" in report["env"]
    assert report["harness"] == str(Path(harness.__file__).resolve().parent)


def _root_only():
    import os

    if os.geteuid() != 0:
        pytest.skip("the worker drops root only when started as root (CI runs as root)")


def test_root_worker_is_an_unprivileged_user_that_cannot_rejoin_the_host(tmp_path):
    """Started as root, the worker runs as an unprivileged user with no capability: it cannot join
    the host's network namespace (not through /proc, not with a descriptor opened before it was
    confined), raise its hard CPU limit, reach the network, or touch files beside its submission;
    its state folder stays writable."""
    _root_only()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    secret, owned = tmp_path / "secret.txt", tmp_path / "results" / "record.json"
    secret.write_text("secret")
    owned.parent.mkdir(parents=True)
    owned.write_text("{}")  # root's file, mode 0644: writable by its owner only
    state = tmp_path / "results" / ".state" / "probe" / "key"
    try:
        rt = _probe(tmp_path, connect=["127.0.0.1", server.getsockname()[1]], read=[str(secret)],
                    write=[str(secret), str(owned), "/etc/passwd", str(state / "mine.txt")])
    finally:
        server.close()
    sandbox, report = rt["sandbox"], rt["probe"]
    if sandbox["user"].startswith("root (not dropped") or sandbox["network"].startswith("not isolated"):
        pytest.skip(f"this kernel refuses the namespaces: {sandbox}")
    assert report["uid"] == [65534] * 3 and report["gid"] == [65534] * 3 and report["groups"] == []
    assert int(report["cap_eff"], 16) == 0
    assert report["setns"]["held descriptor"] == "setns: EPERM"
    assert all(v in ("open: EACCES", "open: EPERM", "setns: EPERM") for v in report["setns"].values()), report
    assert report["raise_hard"].startswith("refused") and report["rlimit_cpu"][1] != -1
    assert report["connect"].startswith("refused")
    assert report["read"][str(secret)] in ("ENOENT", "EACCES")
    assert all(report["write"][p] in ("ENOENT", "EACCES", "EROFS") for p in (str(secret), str(owned), "/etc/passwd"))
    assert report["write"][str(state / "mine.txt")] == "written"
    assert owned.read_text() == "{}" and secret.read_text() == "secret"


def test_a_phase_that_lifts_its_soft_cpu_limit_is_stopped_by_the_supervisor(tmp_path):
    """The probe raises its soft RLIMIT_CPU to the hard one (which only the job's total bounds) and
    spins: the supervisor's own accounting stops the phase at its budget."""
    from harness.sandbox.supervisor import WorkerFailed

    with pytest.raises(WorkerFailed, match=r"the sandbox probe exceeded its CPU-time limit of 2 s \(--cpu-limit\)"):
        _probe(tmp_path, cpu_limit=2.0, spin_cpu_s=60)


# ------------------------------------------------------------------------------- bubblewrap
def _bwrap_skip():
    from harness.sandbox.jail import bwrap_problem

    why = bwrap_problem()
    if why is not None:
        pytest.skip(why)


TS_WRITER = textwrap.dedent('''
    import torch

    class Writer(torch.nn.Module):
        """Trusted code that still tries to leave the jail: copies a file from outside its folder
        to another place outside its folder, on every forward pass."""

        def __init__(self, secret: str, mark: str):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(10, 784))
            self.secret = secret
            self.mark = mark

        def forward(self, x):
            torch.save(torch.from_file(self.secret, size=6, dtype=torch.uint8), self.mark)
            return x.flatten(1) @ self.weight.t()
''')


def test_bwrap_jail_sees_nothing_outside_and_writes_only_the_state(tmp_path, capfd):
    _bwrap_skip()
    secret, marker = tmp_path / "secret.bin", tmp_path / "STOLEN"
    secret.write_bytes(b"secret")
    ts = tmp_path / "writer.ts"
    _script_module(tmp_path, TS_WRITER, "Writer", str(secret), str(marker)).save(str(ts))
    torch.jit.load(str(ts))(torch.rand(2, 1, 28, 28))  # guard: outside the jail it works
    assert marker.exists()
    marker.unlink()
    path = _submission(tmp_path, "writer", "torchscript", lambda p: p.write_bytes(ts.read_bytes()), "model.ts")
    err = _one_line_error(_main(capfd, path, "--only", "clean", "--trust-code", "--sandbox", "bwrap",
                               "--out", tmp_path / "rec.json"))
    assert "model fails on an input" in err and "secret.bin" in err, err  # it cannot even see the secret
    assert not marker.exists()


def test_bwrap_runs_an_honest_submission(tmp_path, capfd):
    _bwrap_skip()
    w, b = _linear_weights()
    path = _submission(tmp_path, "honest", "onnx", lambda p: _onnx_flatten_gemm(p, "lin", w, b), "model.onnx")
    out = tmp_path / "results" / "rec.json"
    proc = _main(capfd, path, "--only", "clean", "--sandbox", "bwrap", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["provenance"]["sandbox"]["mode"] == "bwrap"
    assert rec["provenance"]["sandbox"]["network"] == "isolated (bubblewrap)"


def test_bwrap_jail_has_no_capability(tmp_path, monkeypatch):
    """As root, bubblewrap keeps every capability inside its jail unless told otherwise (enough to
    remount its read-only folders writable): the worker's jail has none, and no user namespace of its
    own; its environment is the scrubbed one."""
    _bwrap_skip()
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_secret")
    report = _probe(tmp_path, mode="bwrap")["probe"]
    assert int(report["cap_eff"], 16) == 0
    assert report["raise_hard"].startswith("refused")
    assert all(v.startswith(("open: ", "setns: EPERM")) for v in report["setns"].values()), report
    assert "GITHUB_TOKEN" not in report["env"]


# ------------------------------------------------------------------------ worker's results
def test_unreadable_stage_results_are_one_line_errors(make_submission, capfd):
    """The supervisor reads what the worker wrote as untrusted data."""
    from harness.runner.evaluate import evaluate
    from harness.stages import EvalOptions

    path = make_submission("state-check", evaluation={"n_examples": 5, "batch_size": 5})
    out = path.parent.parent.parent / "results" / "rec.json"
    res = evaluate(path, EvalOptions(device="cpu", progress=False, sandbox="none"), stages=["clean"], out=out,
                   echo=lambda s: None)
    (res.state_dir / "stages" / "clean.json").write_text('{"summary": ')
    err = _one_line_error(_main(capfd, path, "--only", "clean", "--out", out))
    assert "saved result of stage clean" in err and "unreadable" in err and "--restart" in err
    (res.state_dir / "stages" / "clean.json").write_text(json.dumps({"summary": {}, "seconds": 0}))
    np.savez(res.state_dir / "stages" / "clean.npz", clean_correct=np.ones(3, bool))  # 3 arrays for 5 examples
    err = _one_line_error(_main(capfd, path, "--only", "clean", "--out", out))
    assert "clean_correct of shape (3,) for 5 examples" in err, err
