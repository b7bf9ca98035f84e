"""The evaluation worker: ``python -m harness.sandbox.worker`` loads the submission's model and computes
blocks of the stages (or, for ``harness audit``, the audit's model work; for ``harness pr-check``, one
forward pass on random inputs), inside the sandbox the supervisor (:mod:`harness.sandbox.supervisor`) set up.

It reads one :class:`WorkerJob` (JSON) on stdin, then, before importing anything large:
dies with its parent (Linux), confines itself (:func:`harness.sandbox.supervisor.confine`: a new network
namespace; started as root, a private view of the folders it needs and an unprivileged user), sets
the hard ``RLIMIT_CPU`` to the whole job's budget, and keeps its stdout for the protocol (anything
else printed goes to stderr). Then it imports torch and the stages' libraries,
sets its memory limit (``RLIMIT_AS`` above what the libraries take; not on CUDA), loads the model,
and takes blocks from the shared queue (:func:`harness.runner.schedule.run_blocks`) until none is left:
for each it announces the phase (the stage), keeps ``RLIMIT_CPU`` within the stage's CPU budget
(counted over all the stage's blocks this worker computes), computes it and saves it in the state
folder (atomically; finished AutoAttack attacks within a block too). Protocol lines, one JSON object each:

    {"event": "sandbox", "sandbox": {"network": ..., "user": ..., "memory": ..., "cpu": ...}}
    {"event": "phase", "name": "load" | "<stage>" | "wait", "block": b}
    {"event": "loaded", "runtime": {"device": ..., "device_name": ..., "torch_threads": ...}}
    {"event": "block", "stage": "<stage>", "block": b, "seconds": 1.5}
    {"event": "error", "message": "<one line>", "aborted": false}   (then exit status 3; aborted:
                                                         another rank failed first)
    {"event": "probe", "report": {...}}                  (job kind "probe" only: harness.sandbox.supervisor.probe)
    (job kind "attack", for ``harness attack-check``: the checked images classified, into
    ``<state>/attack_result.npz``; harness.review.attack_check.run_attack_job)
    {"event": "finished", "blocks": k}                   (then exit status 0)

A Python traceback never reaches the terminal: it goes to ``<state>/worker.log`` (``worker.rank<r>.log``
for ranks other than 0), with warnings.

The job is explicit so that any launcher can build one: under ``torchrun`` each rank's supervisor
starts one worker with its own ``device`` (``cuda:<LOCAL_RANK>``) and ``rank``.
"""
from __future__ import annotations

import json
import os
import sys
import time

from harness.sandbox.job import WorkerJob, _Protocol, log_name


def _setup_log(state_dir: str, rank: int = 0):
    """Warnings and tracebacks go to <state>/worker.log, not to the terminal."""
    import logging
    import warnings
    from pathlib import Path

    Path(state_dir).mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("harness.sandbox.worker")
    log.propagate = False
    handler = logging.FileHandler(Path(state_dir) / log_name(rank), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    def showwarning(message, category, filename, lineno, file=None, line=None):
        log.warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)

    warnings.showwarning = showwarning
    return log


def _preload(job: WorkerJob, spec) -> None:
    """Import what this job will need while no memory limit is set (shared libraries count against
    RLIMIT_AS), and start torch's thread pool."""
    import importlib

    import torch

    from harness.models import compat  # noqa: F401
    from harness.stages.registry import STAGE_NAMES, entry

    stages = [entry(name) for name in job.stages if name in STAGE_NAMES]
    wanted = [e.module for e in stages]
    wanted += {"onnx": ["onnx", "onnx2torch"], "state_dict": ["safetensors.torch", "harness.models.architectures"]
               }.get(spec.model.format, [])
    if (spec.model.architecture or "").startswith("robustbench."):
        wanted += ["robustbench.model_zoo.architectures.resnet", "robustbench.model_zoo.architectures.wide_resnet"]
        if spec.model.architecture.startswith("robustbench.zoo:"):
            wanted.append("robustbench.model_zoo")
    for e in stages:  # each stage's libraries, after its module (harness.stages.registry)
        wanted += e.preload[1:]
    if job.kind == "audit":
        # the audit recounts FLOPs and re-checks certificates with the stages' own code
        wanted += ["pyautoattack", "pyautoattack.square", "harness.review.audit", *entry("flops").preload,
                   *entry("certify").preload, "harness.certifiers.bound_methods", "harness.diagnostics"]
    if job.kind == "forward" and (job.forward or {}).get("count_flops"):
        wanted.append("fvcore.nn")
    wanted.append("harness.runner.schedule")
    if job.progress:
        wanted.append("tqdm.auto")
    for mod in dict.fromkeys(wanted):
        try:
            importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - a missing optional library fails later, with a message
            pass
    # start torch's intra-op threads and the BLAS threads: their stacks and malloc arenas count
    # against RLIMIT_AS, and belong to the libraries, not to the model
    a = torch.ones(512, 512)
    (a @ a).add_(1).sum()
    torch.ones(1 << 20).mul_(2).sum()


def _set_memory_limit(job: WorkerJob) -> str:
    import resource

    from harness.core.units import format_size
    from harness.sandbox.supervisor import vm_size

    if job.memory_limit is None:
        return "no limit"
    if job.device.startswith("cuda"):
        return (f"{format_size(job.memory_limit)} of resident host memory, watched by the supervisor "
                "(CUDA needs more address space than RLIMIT_AS allows)")
    base = vm_size()
    if base is None:
        return "no limit (cannot read this process's address space)"
    limit = base + job.memory_limit
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return f"{format_size(job.memory_limit)} of address space above the libraries' {format_size(base)} (RLIMIT_AS)"


def _cpu_now() -> float:
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def job_cpu_budget(job: WorkerJob) -> float | None:
    """CPU seconds the whole job may use, the worker's hard ``RLIMIT_CPU`` (None: no CPU limit): a
    phase's budget for loading and for each stage (and one more), plus the waiting allowance. The
    soft limit moves per phase within it; the supervisor checks each phase's own budget."""
    if job.cpu_limit is None:
        return None
    return job.cpu_limit * (len(job.stages) + 2) + WAIT_CPU_S


def _cpu_hard_limit(job: WorkerJob) -> str:
    """Set ``RLIMIT_CPU``'s hard limit to what is used so far plus the job's budget. Without
    CAP_SYS_RESOURCE (an unprivileged worker) it cannot be raised again."""
    import math
    import resource

    budget = job_cpu_budget(job)
    if budget is None:
        return "no limit"
    hard = int(math.ceil(_cpu_now() + budget))
    _, old = resource.getrlimit(resource.RLIMIT_CPU)
    if old != resource.RLIM_INFINITY:
        hard = min(hard, old)
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
    return f"{budget:g} s for the job (hard RLIMIT_CPU), {job.cpu_limit:g} s per stage"


def _cpu_budget(seconds: float | None) -> None:
    """Let this phase use ``seconds`` more CPU time (all threads); the kernel sends SIGXCPU after."""
    import math
    import resource

    if seconds is None:
        return
    soft = int(math.ceil(_cpu_now() + max(seconds, 1.0)))
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _one_line(e: BaseException, phase: str, job: WorkerJob, log_path: str) -> str:
    from harness.core.errors import HarnessError
    from harness.core.units import format_size
    from harness.models.load import error_line, is_out_of_memory

    where = {"load": "loading the model", "audit": "the audit", "wait": "waiting for other ranks"}.get(
        phase, f"stage {phase}")
    if isinstance(e, HarnessError):
        return str(e)
    first = error_line(e)
    if is_out_of_memory(e):
        limit = format_size(job.memory_limit) if job.memory_limit is not None else "unlimited"
        return (f"{where} ran out of memory (the worker's limit is {limit}; --memory-limit): {first}; "
                f"finished stages are kept in {job.state_dir}")
    if isinstance(e, PermissionError) and os.geteuid() != 0 and os.getuid() == 65534:
        return (f"{where} failed: {first}: the evaluation worker runs as an unprivileged user (uid 65534), "
                "so every file it reads must be readable by all (chmod o+rX)")
    if isinstance(e, RecursionError):
        return f"{where} failed: the model is nested too deeply (RecursionError); traceback in {log_path}"
    return f"{where} failed: {type(e).__name__}: {first} (traceback in {log_path})"


#: CPU seconds a worker may use while it waits for other ranks' blocks (it only polls files)
WAIT_CPU_S = 600.0


def run(job: WorkerJob, sub, proto: _Protocol, sandbox: dict, status: dict) -> None:
    from pathlib import Path

    import torch

    from harness.core.files import atomic_write_text
    from harness.data.loaders import load_test_data, num_classes_of
    from harness.models.load import load_model
    from harness.runner.evaluate import runtime_info
    from harness.runner.schedule import Plan, run_blocks
    from harness.stages import EvalContext, EvalOptions

    state_dir = Path(job.state_dir)
    spec = sub.spec
    options = EvalOptions(device=job.device, batch_size=job.batch_size, n_examples=job.n_examples,
                          data_dir=Path(job.data_dir) if job.data_dir else None,
                          train_data=Path(job.train_data) if job.train_data else None,
                          progress=job.progress, sandbox="none", trust_code=job.trust_code,
                          certify_budget=job.extra.get("certify_budget_cap_s"))
    data = load_test_data(spec.dataset, job.n_examples, data_dir=options.data_dir, custom_path=sub.dataset_path(),
                          preprocessing=spec.resize_crop)
    num_classes = num_classes_of(data)
    device = torch.device(job.device)
    torch.manual_seed(spec.evaluation.seed)
    model = load_model(sub, input_shape=data.input_shape, num_classes=num_classes, device=device,
                       trust_code=job.trust_code, max_model_bytes=job.max_model_bytes)
    runtime = {**runtime_info(device), "sandbox": sandbox}
    if job.rank == 0:
        atomic_write_text(state_dir / "runtime.json", json.dumps(runtime))
    proto.send(event="loaded", runtime=runtime)
    ctx = EvalContext(sub, model, data, options, state_dir, rank=job.rank, world_size=job.world_size)
    plan = Plan.from_dict(job.plan) if job.plan is not None else None
    if plan is None:
        raise ValueError("the job has no plan")

    cpu_used: dict[str, float] = {}  # CPU seconds each stage has used in this worker
    current = {"stage": None, "cpu0": 0.0}

    def close_phase() -> None:
        if current["stage"] is not None:
            cpu_used[current["stage"]] = cpu_used.get(current["stage"], 0.0) + _cpu_now() - current["cpu0"]
            current["stage"] = None

    def on_start(name: str, b: int) -> None:
        close_phase()
        status["phase"] = name
        proto.send(event="phase", name=name, block=b)
        current["stage"], current["cpu0"] = name, _cpu_now()
        if job.cpu_limit is not None:
            _cpu_budget(job.cpu_limit - cpu_used.get(name, 0.0))

    def on_done(name: str, b: int, seconds: float) -> None:
        proto.send(event="block", stage=name, block=b, seconds=seconds)

    def on_wait() -> None:
        close_phase()
        status["phase"] = "wait"
        proto.send(event="phase", name="wait")
        if job.cpu_limit is not None:
            _cpu_budget(WAIT_CPU_S)

    blocks = run_blocks(ctx, plan, on_start=on_start, on_done=on_done, on_wait=on_wait)
    close_phase()
    status["blocks"] = blocks


def run_audit(job: WorkerJob, proto: _Protocol, status: dict) -> None:
    """The audit's model work (:func:`harness.review.audit.run_audit_job`: :func:`harness.review.audit.recompute`),
    its result saved in the state folder for the supervisor to read back as untrusted data."""
    from harness.review.audit import run_audit_job

    status["phase"] = "audit"
    proto.send(event="phase", name="audit")
    run_audit_job(job)


def run_forward(job: WorkerJob, sub, proto: _Protocol, status: dict) -> None:
    """pr-check's model work (kind "forward"): load the model as an evaluation does (hashes, safe
    loading, the 2-input output check), count its FLOPs if asked (fvcore, for models the supervisor
    cannot build on the meta device: ONNX, some zoo entries), then one timed forward pass of
    ``n_inputs`` random inputs in [0, 1] with the logits check. The logits, the time and the counts
    go to ``forward.npz`` in the state folder, which the supervisor reads back and checks again as
    untrusted data."""
    from pathlib import Path

    import numpy as np
    import torch

    from harness.core.files import atomic_savez
    from harness.models.load import check_logits, load_model

    f = job.forward or {}
    shape = tuple(int(d) for d in f["input_shape"])
    num_classes, n = int(f["num_classes"]), int(f["n_inputs"])
    device = torch.device(job.device)
    torch.manual_seed(int(f.get("seed", 0)))
    model = load_model(sub, input_shape=shape, num_classes=num_classes, device=device, trust_code=False,
                       max_model_bytes=job.max_model_bytes)
    counts = {"flops": np.asarray(-1.0), "params": np.asarray(-1, dtype=np.int64)}
    if f.get("count_flops"):
        from harness.compute.flops import count_inference_flops

        try:
            fc = count_inference_flops(model.module, shape, device)
            counts = {"flops": np.asarray(float(fc.total)), "params": np.asarray(int(fc.params), dtype=np.int64)}
        except Exception:  # noqa: BLE001 - fvcore cannot trace some modules: the counts stay unknown
            pass
    status["phase"] = "forward"
    proto.send(event="phase", name="forward")
    _cpu_budget(job.cpu_limit)
    x = torch.rand((n, *shape), generator=torch.Generator().manual_seed(int(f.get("seed", 0)))).to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.module(x)
    seconds = time.perf_counter() - t0
    check_logits(out, n, num_classes, stage=f"forward pass on {n} random inputs")
    proto.send(event="block", stage="forward", block=0, seconds=seconds)
    atomic_savez(Path(job.state_dir) / "forward.npz", {
        "logits": out.detach().float().cpu().numpy(), "seconds": np.asarray(seconds), **counts})


def _verify(job: WorkerJob, proto: _Protocol, network: str, confined: dict, cpu: str, status: dict, log) -> int:
    """Job kind ``verify``: preload, set the memory limit, then the verification
    (:func:`harness.certifiers.vnncomp.run_verify_job`); errors go to :func:`main`'s handler."""
    import importlib

    import torch

    for mod in ("onnx", "onnx2torch", "harness.certifiers.vnncomp", "harness.bounds.bab", "harness.models.load"):
        importlib.import_module(mod)
    a = torch.ones(512, 512)
    (a @ a).add_(1).sum()
    sandbox = {"network": network, "user": confined["user"], "memory": _set_memory_limit(job), "cpu": cpu}
    proto.send(event="sandbox", sandbox=sandbox)
    log.info("job %s; sandbox %s", job.to_json(), sandbox)
    status["phase"] = "verify"
    proto.send(event="phase", name="verify")
    _cpu_budget(job.cpu_limit)
    from harness.certifiers.vnncomp import run_verify_job

    run_verify_job(job)
    proto.send(event="finished", blocks=0)
    return 0


def main() -> int:
    from harness.sandbox.supervisor import confine, die_with_parent

    die_with_parent()
    proto = _Protocol(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    os.dup2(2, 1)  # prints (libraries, a model) go to stderr: only this module writes the protocol
    try:
        job = WorkerJob.from_json(sys.stdin.read())
    except (ValueError, TypeError) as e:
        proto.send(event="error", message=f"the evaluation worker got a malformed job: {e}")
        return 3
    if job.parent_pid is not None and os.getppid() != job.parent_pid:
        return 3  # the supervisor is already gone
    held = None  # probe only: a descriptor of the host's network namespace, as if one had leaked
    if job.kind == "probe" and job.extra.get("hold_host_netns") and os.path.exists("/proc/self/ns/net"):
        held = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:  # before anything the submission gave is read: no network; as root, an unprivileged user
        if job.isolate_network:
            confined = confine(job.state_dir, job.read_only, submission_folder=os.path.dirname(job.submission))
        else:
            confined = {"network": "isolated (bubblewrap)", "user": "bubblewrap (no capabilities)"}
        die_with_parent()  # a change of user clears the parent-death signal
        if job.parent_pid is not None and os.getppid() != job.parent_pid:
            return 3
        cpu = _cpu_hard_limit(job)
    except OSError as e:
        proto.send(event="error", message=f"the evaluation worker could not confine itself: {e.strerror or e}")
        return 3
    network = confined["network"]
    log_path = os.path.join(job.state_dir, log_name(job.rank))
    status = {"phase": "load"}
    log = None
    try:
        log = _setup_log(job.state_dir, job.rank)
        if job.kind == "probe":
            from harness.sandbox.supervisor import probe

            sandbox = {"network": network, "user": confined["user"], "memory": _set_memory_limit(job), "cpu": cpu}
            proto.send(event="sandbox", sandbox=sandbox)
            status["phase"] = "probe"
            proto.send(event="phase", name="probe")
            _cpu_budget(job.cpu_limit)
            proto.send(event="probe", report=probe(job.extra, held))
            _spin(job.extra.get("spin_cpu_s"))
            proto.send(event="finished", blocks=0)
            return 0
        if job.kind == "verify":  # harness verify: an ONNX file and a property, no submission
            return _verify(job, proto, network, confined, cpu, status, log)
        from harness.core.errors import HarnessError
        from harness.submission.load import load_submission

        sub = load_submission(job.submission)
        if sub.yaml_sha256 != job.submission_sha256:
            raise HarnessError(f"{job.submission} changed while the evaluation started; run it again")
        _preload(job, sub.spec)
        sandbox = {"network": network, "user": confined["user"], "memory": _set_memory_limit(job),
                   "cpu_seconds_per_stage": job.cpu_limit, "cpu": cpu}
        proto.send(event="sandbox", sandbox=sandbox)
        log.info("job %s; sandbox %s", job.to_json(), sandbox)
        proto.send(event="phase", name="load")
        _cpu_budget(job.cpu_limit)
        t0 = time.perf_counter()
        if job.kind == "audit":
            run_audit(job, proto, status)
        elif job.kind == "eval":
            run(job, sub, proto, sandbox, status)
        elif job.kind == "forward":
            run_forward(job, sub, proto, status)
        elif job.kind == "attack":
            from harness.review.attack_check import run_attack_job

            status["phase"] = "attack-check"
            proto.send(event="phase", name="attack-check")
            run_attack_job(job)
        else:
            raise ValueError(f"unknown job kind {job.kind!r}")
        log.info("finished in %.1f s (%s blocks)", time.perf_counter() - t0, status.get("blocks", 0))
        proto.send(event="finished", blocks=status.get("blocks", 0))
        return 0
    except BaseException as e:  # noqa: BLE001 - every failure becomes one line; the traceback goes to the log
        import traceback

        try:
            if log is not None:
                log.error("%s failed:\n%s", status["phase"], "".join(traceback.format_exception(e)))
        except Exception:  # noqa: BLE001
            pass
        from harness.runner.schedule import Aborted

        if isinstance(e, KeyboardInterrupt):
            message = "interrupted"
        else:
            message = _one_line(e, status["phase"], job, log_path)
        try:
            proto.send(event="error", message=message, aborted=isinstance(e, Aborted))
        except Exception:  # noqa: BLE001
            pass
        return 3


def _spin(seconds) -> None:
    """Probe only: use ``seconds`` of CPU time after lifting the soft CPU limit to the hard one, as
    code that ignores its per-stage budget would (the supervisor's own accounting must stop it)."""
    import resource

    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
    end = _cpu_now() + seconds
    while _cpu_now() < end:
        pass


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # no interpreter teardown: atexit handlers of libraries may print or hang
