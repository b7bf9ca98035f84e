"""The evaluation worker: ``python -m harness.sandbox.worker`` loads the submission's model and computes
blocks of the stages (or, for ``harness audit``, the audit's model work; for ``harness pr-check``, one
forward pass on random inputs), inside the sandbox the supervisor (:mod:`harness.sandbox.supervisor`) set up.

It reads one :class:`WorkerJob` (JSON) on stdin, then, before importing anything large:
dies with its parent (Linux), confines itself (:func:`harness.sandbox.jail.confine`: a new network
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
    {"event": "probe", "report": {...}}                  (job kind "probe" only: harness.sandbox.jail.probe)
    (job kind "attack", for ``harness attack-check``: the checked images classified, into
    ``<state>/attack_result.npz``; harness.review.attack_check.run_attack_job)
    {"event": "finished", "blocks": k}                   (then exit status 0)

A Python traceback never reaches the terminal: it goes to ``<state>/worker.log`` (``worker.rank<r>.log``
for ranks other than 0), with warnings.

The job is explicit so that any launcher can build one: under ``torchrun`` each rank's supervisor
starts one worker with its own ``device`` (``cuda:<LOCAL_RANK>``) and ``rank``.
"""
from __future__ import annotations

import os
import sys
import time

from harness.sandbox.job import (
    Aborted,
    JobContext,
    WorkerJob,
    _Protocol,
    cpu_hard_limit,
    cpu_now,
    handler_of,
    job_kind,
    log_name,
    set_cpu_budget,
)


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
               }.get(spec.model.format, []) if spec is not None else []
    if spec is not None and (spec.model.architecture or "").startswith("robustbench."):
        wanted += ["robustbench.model_zoo.architectures.resnet", "robustbench.model_zoo.architectures.wide_resnet"]
        if spec.model.architecture.startswith("robustbench.zoo:"):
            wanted.append("robustbench.model_zoo")
    for e in stages:  # each stage's libraries, after its module (harness.stages.registry)
        wanted += e.preload[1:]
    kind = job_kind(job.kind)
    wanted.append(kind.handler.partition(":")[0])
    for name in kind.preload_stages:
        wanted += [entry(name).module, *entry(name).preload[1:]]
    wanted += kind.preload
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
    from harness.sandbox.jail import vm_size

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


def main() -> int:
    from harness.sandbox.jail import confine, die_with_parent

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
        cpu = cpu_hard_limit(job)
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
            from harness.sandbox.jail import probe

            sandbox = {"network": network, "user": confined["user"], "memory": _set_memory_limit(job), "cpu": cpu}
            proto.send(event="sandbox", sandbox=sandbox)
            status["phase"] = "probe"
            proto.send(event="phase", name="probe")
            set_cpu_budget(job.cpu_limit)
            proto.send(event="probe", report=probe(job.extra, held))
            _spin(job.extra.get("spin_cpu_s"))
            proto.send(event="finished", blocks=0)
            return 0
        from harness.core.errors import HarnessError
        from harness.submission.load import load_submission

        kind = job_kind(job.kind)

        sub = load_submission(job.submission) if kind.submission else None
        if sub is not None and sub.yaml_sha256 != job.submission_sha256:
            raise HarnessError(f"{job.submission} changed while the evaluation started; run it again")
        _preload(job, sub.spec if sub is not None else None)
        sandbox = {"network": network, "user": confined["user"], "memory": _set_memory_limit(job),
                   "cpu_seconds_per_stage": job.cpu_limit, "cpu": cpu}
        proto.send(event="sandbox", sandbox=sandbox)
        log.info("job %s; sandbox %s", job.to_json(), sandbox)
        proto.send(event="phase", name="load")
        set_cpu_budget(job.cpu_limit)
        t0 = time.perf_counter()
        if kind.phase is not None:
            status["phase"] = kind.phase
            proto.send(event="phase", name=kind.phase)
        handler_of(kind)(JobContext(job, sub, proto, sandbox, status))
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
    end = cpu_now() + seconds
    while cpu_now() < end:
        pass


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # no interpreter teardown: atexit handlers of libraries may print or hang
