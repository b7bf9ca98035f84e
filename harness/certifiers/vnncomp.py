"""``harness verify NET.onnx PROP.vnnlib``: the verification community's interface (VNN-COMP),
the parts below the sandbox: the property as arrays for the worker, the worker's job
(:func:`run_verify_job`) and the reading of its answer (:func:`read_answer`). The supervisor's
side is :func:`harness.runner.verify.verify_instance`:

1. the VNN-LIB property is read (:func:`harness.bounds.vnnlib.read_vnnlib`): one or more cases,
   each an input box and an unsafe output set;
2. the ONNX goes to the sandboxed evaluation worker (:mod:`harness.sandbox.worker`, job kind ``verify``,
   supervised by :func:`harness.sandbox.supervisor.run_worker`: no network, memory and CPU caps, a
   wall-clock limit), which loads it with the same sanitised loader as a submission's ONNX
   (:func:`harness.models.load.build_onnx`: onnx.load, :func:`~harness.models.load.sanitize_onnx`,
   onnx2torch, the checked torch.fx source) and runs :func:`harness.bounds.bab.verify` on each case,
   within what is left of ``--timeout``;
3. the worker's answer (``verify.npz`` in a scratch folder) is read back as untrusted data: a
   counterexample must lie in its case's input box and its reported output must meet the unsafe
   set (the worker checked the same with a float64 forward pass);
4. the result: ``unsat`` (every case verified), ``sat`` (a checked counterexample), ``timeout``
   (time ran out), ``unknown`` (a cap other than time stopped the search), ``error``. The VNN-COMP
   result file holds the word and, after ``sat``, the assignment ``((X_0 v) ... (Y_0 v))``.

VNN-COMP 2021's own scripts wrote ``holds`` / ``violated``; from 2022 on the words are ``unsat`` /
``sat`` with the counterexample, which is what this writes.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from harness.bounds.vnnlib import Property
from harness.core.errors import HarnessError, one_line

#: the worker's verdict codes in verify.npz
CODES = {"unknown": 0, "verified": 1, "falsified": 2}
WORDS = ("unsat", "sat", "timeout", "unknown", "error")


@dataclass
class VerifyResult:
    word: str  # one of WORDS
    seconds: float
    counterexample: Optional[np.ndarray] = None  # flat float64 inputs (sat)
    output: Optional[np.ndarray] = None  # flat float64 outputs at the counterexample
    message: str = ""  # the one-line reason of an error
    cases: int = 0
    domains: int = 0
    decided_by: str = ""

    def result_text(self) -> str:
        """The VNN-COMP result file: the word, then for ``sat`` the assignment."""
        if self.word != "sat" or self.counterexample is None or self.output is None:
            return self.word + "\n"
        lines = [f"(X_{i} {float(v)!r})" for i, v in enumerate(self.counterexample)]
        lines += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(self.output)]
        return "sat\n(" + "\n ".join(lines) + ")\n"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def property_arrays(prop: Property) -> dict[str, np.ndarray]:
    """The property as plain arrays for the worker: case k's box ``lo_k``/``hi_k`` and its unsafe
    conjunctions stacked (``C_k`` (R, n_out), ``d_k`` (R,), ``g_k`` (R,) the conjunction of each row)."""
    out: dict[str, np.ndarray] = {"n_cases": np.asarray(len(prop.cases)), "n_outputs": np.asarray(prop.n_outputs)}
    for k, case in enumerate(prop.cases):
        out[f"lo_{k}"], out[f"hi_{k}"] = case.lo, case.hi
        out[f"C_{k}"] = np.concatenate([C for C, _ in case.unsafe]) if case.unsafe else np.zeros((0, prop.n_outputs))
        out[f"d_{k}"] = np.concatenate([d for _, d in case.unsafe]) if case.unsafe else np.zeros(0)
        out[f"g_{k}"] = np.concatenate([np.full(len(d), i) for i, (_, d) in enumerate(case.unsafe)]).astype(np.int64) \
            if case.unsafe else np.zeros(0, np.int64)
    return out


def unsafe_of(arrays: dict, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    C, d, g = arrays[f"C_{k}"], arrays[f"d_{k}"], arrays[f"g_{k}"]
    return [(C[g == i], d[g == i]) for i in (np.unique(g) if g.size else [])]


def meets(y: np.ndarray, unsafe: list[tuple[np.ndarray, np.ndarray]], atol: float = 1e-6) -> bool:
    """Whether the output ``y`` lies in one of the unsafe conjunctions (to ``atol``)."""
    return any(bool(np.all(C @ y + d <= atol)) for C, d in unsafe)


def read_answer(prop: Property, got: dict, seconds: float) -> VerifyResult:
    """The answer from the worker's arrays, checked against the property read here."""
    try:
        codes = np.asarray(got["status"]).astype(np.int64).reshape(-1)
        domains = int(np.asarray(got["domains"]).sum())
        timed_out = bool(np.asarray(got["timed_out"]).reshape(-1)[0])
    except (KeyError, TypeError, ValueError):
        raise HarnessError("the verify job's result is malformed (status, domains, timed_out)")
    raw = np.asarray(got.get("decided_by", np.zeros(0, np.uint8)))
    decided = one_line(bytes(raw.astype(np.uint8)[:40]).decode("ascii", "replace"), 40) \
        if raw.dtype.kind in "iu" else ""
    if codes.size > len(prop.cases) or not np.isin(codes, list(CODES.values())).all():
        raise HarnessError("the verify job's result is malformed (statuses)")
    base = dict(cases=len(prop.cases), domains=domains, decided_by=decided)
    if (codes == CODES["falsified"]).any():
        k = int(np.nonzero(codes == CODES["falsified"])[0][0])
        try:
            x = np.asarray(got["x"], np.float64).reshape(-1)
            y = np.asarray(got["y"], np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError):
            raise HarnessError("the verify job's result is malformed (counterexample)")
        case = prop.cases[k]
        if x.shape != (prop.n_inputs,) or y.shape != (prop.n_outputs,) or not np.isfinite(x).all() \
                or not np.isfinite(y).all():
            raise HarnessError("the verify job returned a counterexample of the wrong shape")
        if not (np.all(x >= case.lo) and np.all(x <= case.hi)):
            raise HarnessError("the verify job returned a counterexample outside the input box (a bug)")
        if not meets(y, case.unsafe):
            raise HarnessError("the verify job returned a counterexample whose output is not unsafe (a bug)")
        return VerifyResult("sat", seconds, x, y, **base)
    if codes.size == len(prop.cases) and (codes == CODES["verified"]).all():
        return VerifyResult("unsat", seconds, **base)
    return VerifyResult("timeout" if timed_out else "unknown", seconds, **base)


# ------------------------------------------------------------------------- the worker's side
def input_shape_of(proto) -> tuple[int, ...]:
    """The network's input shape without the batch dimension (its first, of size 1 or symbolic)."""
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise HarnessError(f"the ONNX network has {len(inputs)} inputs; verify takes networks with one")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if not dims or any(d is None or d < 1 for d in dims[1:]):
        raise HarnessError(f"the ONNX input has shape {dims}; verify needs fixed sizes after the batch dimension")
    if dims[0] not in (None, 1):
        raise HarnessError(f"the ONNX input has batch size {dims[0]}; verify needs 1 (or a symbolic batch)")
    return tuple(int(d) for d in dims[1:])


def _checked(model, x, lo, hi, unsafe) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The counterexample ``x`` in float64, clamped into the box ``[lo, hi]`` (float64, as the property
    gives it: verify() returns x in the model's dtype, which may round just outside the box) and checked
    again by a float64 forward pass; (x, y) flat, or None when it does not check."""
    import copy

    import torch

    from harness.bounds.bab import check_counterexample

    lo64, hi64 = lo.double().cpu(), hi.double().cpu()
    x64 = torch.minimum(torch.maximum(x.detach().double().cpu().reshape(lo64.shape), lo64), hi64)
    m64 = copy.deepcopy(model).cpu().double().eval()
    if not check_counterexample(m64, x64, lo64, hi64, unsafe, model64=m64):
        return None
    with torch.no_grad():
        y = m64(x64).reshape(-1)
    return x64.numpy().reshape(-1), y.numpy().astype(np.float64)


def worker_verify(ctx) -> None:
    """Job kind ``verify`` (harness.sandbox.job.JOB_KINDS): the handler inside the sandboxed worker."""
    run_verify_job(ctx.job)


def run_verify_job(job) -> None:
    """Job kind ``verify`` in the worker: load the ONNX (sanitised), verify each case, save verify.npz."""
    import onnx
    import torch

    from harness.bounds.bab import Budget, verify
    from harness.core.files import atomic_savez
    from harness.data.npzsafe import read_npz
    from harness.models.load import build_onnx  # the submissions' sanitised ONNX loader

    spec = job.verify or {}
    # the wall-clock end of the instance, set by the supervisor (its start-up counts against --timeout)
    end = float(spec["deadline_unix"])
    threads = spec.get("threads")
    t_start = time.time()
    work = Path(job.state_dir)
    path = Path(job.submission)
    if file_sha256(path) != job.submission_sha256:
        raise HarnessError(f"{path} changed while verify started; run it again")
    arrays = read_npz(work / "property.npz", max_file_bytes=1 << 31, max_total_bytes=1 << 31, what="the property")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise HarnessError(f"cannot read ONNX model: {one_line(e, 200)}")
    shape = input_shape_of(proto)
    model = build_onnx(path).to(job.device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    n_in, n_out = int(np.prod(shape)), int(arrays["n_outputs"])
    if int(arrays["lo_0"].size) != n_in:
        raise HarnessError(f"the property declares {arrays['lo_0'].size} inputs; the network takes {n_in} "
                           f"(shape {list(shape)})")
    with torch.no_grad():
        y0 = model(torch.zeros((1, *shape), device=job.device))
    if y0.numel() != n_out:
        raise HarnessError(f"the property declares {n_out} outputs; the network gives {y0.numel()}")
    status, domains, decided = [], [], []
    x_out, y_out = np.zeros(0), np.zeros(0)
    timed_out = False
    for k in range(int(arrays["n_cases"])):
        left = end - time.time()
        if left <= 0:
            timed_out = True
            break
        lo = torch.from_numpy(arrays[f"lo_{k}"]).reshape(1, *shape)
        hi = torch.from_numpy(arrays[f"hi_{k}"]).reshape(1, *shape)
        unsafe = [(torch.from_numpy(C), torch.from_numpy(d)) for C, d in unsafe_of(arrays, k)]
        if not unsafe:
            status.append(CODES["verified"]), domains.append(0), decided.append("empty")
            continue
        v = verify(model, lo.to(job.device), hi.to(job.device), unsafe,
                   Budget(timeout_s=left, device=str(job.device), threads=threads, seed=int(spec.get("seed", 0))))
        status.append(CODES[v.status])
        domains.append(int(v.domains))
        decided.append(v.decided_by)
        if v.status == "falsified":
            got = _checked(model, v.counterexample, lo, hi, unsafe)
            if got is not None:
                x_out, y_out = got
                break
            status[-1] = CODES["unknown"]  # pragma: no cover - verify() checked it in float64
            decided[-1] = "unchecked counterexample"
            break
        if v.status == "unknown":
            timed_out = time.time() >= end - 0.05 * max(1e-3, end - t_start)  # else a cap on domains or memory
            break
    atomic_savez(work / "verify.npz", {
        "status": np.asarray(status, np.int8), "domains": np.asarray(domains, np.int64),
        "timed_out": np.asarray([timed_out]), "x": x_out, "y": y_out,
        "decided_by": np.frombuffer((decided[-1] if decided else "").encode()[:40], np.uint8)})
