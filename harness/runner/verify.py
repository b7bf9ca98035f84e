"""``harness verify NET.onnx PROP.vnnlib --timeout S``: the supervisor's side (no model code runs here).

The property is read here (:func:`harness.bounds.vnnlib.read_vnnlib`), the ONNX goes to the sandboxed
worker (job kind ``verify``, :func:`harness.certifiers.vnncomp.run_verify_job`) with the same limits as
an evaluation's, and its answer is read back as untrusted data and checked against the property read
here (:func:`harness.certifiers.vnncomp.read_answer`). See :mod:`harness.certifiers.vnncomp`.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from harness.bounds.vnnlib import read_vnnlib
from harness.certifiers.vnncomp import VerifyResult, file_sha256, property_arrays, read_answer
from harness.core.errors import HarnessError, one_line

#: seconds granted on top of --timeout before the worker is killed (start-up, teardown)
KILL_SLACK_S = 30.0


def process_start_unix() -> float:
    """When this process started (Unix time, from /proc: the python start-up counts against --timeout as
    VNN-COMP counts it); now where /proc is not there."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = float(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        start = time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
        return min(time.time(), start)
    except (OSError, ValueError, IndexError):
        return time.time()


def verify_instance(onnx_path: str | Path, vnnlib_path: str | Path, *, timeout: float, device: str = "cpu",
                    threads: Optional[int] = None, sandbox: str = "worker", limits: Optional[dict] = None,
                    seed: int = 0, echo: Callable[[str], None] = lambda s: None,
                    started: Optional[float] = None) -> VerifyResult:
    """Verify the property ``vnnlib_path`` on the network ``onnx_path`` in the sandboxed worker, within
    ``timeout`` seconds (wall clock, from ``started``, Unix time; default this process's start). A bad
    input is a one-line HarnessError."""
    from harness.core.files import atomic_savez
    from harness.core.settings import effective_limits, maintainer_caps
    from harness.data.npzsafe import read_npz
    from harness.sandbox.job import WorkerJob
    from harness.sandbox.supervisor import WorkerFailed, run_worker

    start = process_start_unix() if started is None else float(started)
    t0 = time.monotonic() - max(0.0, time.time() - start)
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise HarnessError(f"--timeout must be a number of seconds > 0, got {one_line(timeout, 40)!r}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise HarnessError(f"{one_line(onnx_path, 300)}: no such file")
    prop = read_vnnlib(vnnlib_path)
    end = start + float(timeout)
    caps = limits if limits is not None else effective_limits(None, maintainer_caps())
    work = Path(tempfile.mkdtemp(prefix="harness-verify-"))
    try:
        atomic_savez(work / "property.npz", property_arrays(prop))
        wall = max(1.0, end - time.time()) + KILL_SLACK_S
        job = WorkerJob(
            submission=str(onnx_path.resolve()), submission_sha256=file_sha256(onnx_path), state_dir=str(work),
            stages=[], device=device, n_examples=0, batch_size=1, progress=False, trust_code=False,
            memory_limit=caps.get("memory"), cpu_limit=min(float(caps["cpu"]), wall * (os.cpu_count() or 1)),
            isolate_network=sandbox != "bwrap", parent_pid=None if sandbox == "bwrap" else os.getpid(),
            max_model_bytes=caps.get("memory"), kind="verify",
            verify={"deadline_unix": end, "threads": threads, "seed": int(seed)})
        try:
            run_worker(job, mode=sandbox, stage_timeout=min(wall, float(caps["stage_timeout"])),
                       read_only=[onnx_path.resolve().parent], echo=echo)
        except WorkerFailed as e:
            msg = str(e).split("; finished stages are kept in", 1)[0]
            if "wall-clock limit" in msg:
                return VerifyResult("timeout", time.monotonic() - t0, cases=len(prop.cases), message=msg)
            raise HarnessError(f"verify: {msg}")
        got = read_npz(work / "verify.npz", max_file_bytes=256 * 2**20, max_total_bytes=256 * 2**20,
                       what="the verify job's result")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return read_answer(prop, got, time.monotonic() - t0)
