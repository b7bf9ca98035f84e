"""The worker's job (:class:`WorkerJob`, JSON on the worker's stdin), its protocol (one JSON object a line on
stdout), the job kinds (:data:`JOB_KINDS`: the only list, kind -> handler) and the worker's CPU limits: what
the supervisor and any launcher build, and what :mod:`harness.sandbox.worker` reads.

A job kind's handler lives in the package that owns the work (``eval`` in :mod:`harness.runner`, ``audit``,
``forward`` and ``attack`` in :mod:`harness.review`) and is named here by its dotted path, the way
:mod:`harness.stages.registry` names the stages: the worker imports it by name, so the sandbox never imports
the packages above it, and a new kind is one line here plus its handler.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from harness.core.errors import HarnessError


@dataclass
class WorkerJob:
    submission: str  # absolute path of submission.yaml
    submission_sha256: str  # as the supervisor read it: the worker refuses a file changed since
    state_dir: str  # the run's state folder (finished stages are read from and written to it)
    stages: list[str]  # stages to run, in order (finished ones are skipped)
    device: str  # "cpu", "cuda", "cuda:1"
    n_examples: int
    batch_size: int
    data_dir: str | None = None
    train_data: str | None = None
    progress: bool = True
    trust_code: bool = False
    memory_limit: int | None = None  # bytes the worker may add after loading its libraries; None: no limit
    cpu_limit: float | None = None  # CPU seconds per phase; None: no limit
    isolate_network: bool = True  # False when bubblewrap already did
    parent_pid: int | None = None  # the supervisor: exit at once if it is already gone
    max_model_bytes: int | None = None  # cap on a state_dict architecture's size
    rank: int = 0  # torchrun: this worker's rank, and how many ranks share the blocks
    world_size: int = 1
    plan: dict | None = None  # harness.runner.schedule.Plan (attempt, stages to compute, their inputs)
    kind: str = "eval"  # one of JOB_KINDS below, or "probe": what code in the worker can see and do (jail.probe)
    audit: dict | None = None  # the audit's inputs (kind "audit")
    attack: dict | None = None  # attack-check's inputs (kind "attack"): input_shape, num_classes, forward_passes,
    # seed; the images are <state_dir>/attack_inputs.npz
    forward: dict | None = None  # pr-check's forward pass (kind "forward"): input_shape, num_classes, n_inputs,
    # seed, count_flops
    verify: dict | None = None  # harness verify (kind "verify"): deadline_unix, threads, seed; the property in
    # <state_dir>/property.npz, the answer written to <state_dir>/verify.npz; ``submission`` is the ONNX file
    read_only: list[str] = field(default_factory=list)  # folders the worker reads (its view when root)
    extra: dict = field(default_factory=dict)  # room for launchers

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerJob":
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        return cls(**data)


class _Protocol:
    def __init__(self, stream):
        self.stream = stream

    def send(self, **msg) -> None:
        self.stream.write(json.dumps(msg) + "\n")
        self.stream.flush()


def log_name(rank: int) -> str:
    return "worker.log" if rank == 0 else f"worker.rank{rank}.log"




class Aborted(HarnessError):
    """This rank stopped because another rank of the same attempt failed first (that rank's error says why);
    the worker reports it with ``"aborted": true``. ``after``: when that rank failed."""

    def __init__(self, message: str, after: float | None = None):
        super().__init__(message)
        self.after = after


# ---------------------------------------------------------------------------------------- job kinds
@dataclass(frozen=True)
class JobKind:
    handler: str  # "package.module:function", called as function(ctx: JobContext) inside the worker
    phase: str | None = None  # the phase the worker announces before calling it (None: the handler does)
    preload: tuple[str, ...] = ()  # modules to import before the memory limit is set (after the handler's)
    preload_stages: tuple[str, ...] = ()  # stages whose modules and libraries it also needs (stages.registry)
    #: job.submission is a submission.yaml, loaded and checked by the worker; False: another file (the
    #: handler checks it against job.submission_sha256) and JobContext.submission is None
    submission: bool = True


#: every job kind the worker runs ("probe" is the sandbox's own and needs no submission)
JOB_KINDS: dict[str, JobKind] = {
    "eval": JobKind("harness.runner.inworker:run_eval"),
    # the audit recounts FLOPs and re-checks certificates with the stages' own code
    "audit": JobKind("harness.review.audit:worker_audit", phase="audit", preload_stages=("flops", "certify"),
                     preload=("pyautoattack", "pyautoattack.square", "harness.certifiers.bound_methods",
                              "harness.diagnostics")),
    "forward": JobKind("harness.review.forward:run_forward", preload=("fvcore.nn",)),
    "attack": JobKind("harness.review.attack_check:worker_attack", phase="attack-check"),
    "verify": JobKind("harness.certifiers.vnncomp:worker_verify", phase="verify", submission=False,
                      preload=("onnx", "onnx2torch", "harness.bounds.bab", "harness.models.load")),
}
PROBE = "probe"


def job_kind(name: str) -> JobKind:
    if name not in JOB_KINDS:
        raise ValueError(f"unknown job kind {name!r}")
    return JOB_KINDS[name]


def handler_of(kind: JobKind):
    import importlib

    module, _, func = kind.handler.partition(":")
    return getattr(importlib.import_module(module), func)


@dataclass
class JobContext:
    """What a job kind's handler gets inside the worker."""
    job: WorkerJob
    submission: Any  # harness.submission.load.LoadedSubmission, checked against job.submission_sha256 (None
    #                  for a kind with submission=False)
    proto: _Protocol
    sandbox: dict  # the confinement in effect (reported in the record's provenance)
    status: dict  # "phase" (for the error line) and "blocks" (how many blocks this worker computed)

    def phase(self, name: str, **fields) -> None:
        self.status["phase"] = name
        self.proto.send(event="phase", name=name, **fields)


# ---------------------------------------------------------------------------------------- CPU limits
#: CPU seconds a worker may use while it waits for other ranks' blocks (it only polls files)
WAIT_CPU_S = 600.0


def cpu_now() -> float:
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


def cpu_hard_limit(job: WorkerJob) -> str:
    """Set ``RLIMIT_CPU``'s hard limit to what is used so far plus the job's budget. Without
    CAP_SYS_RESOURCE (an unprivileged worker) it cannot be raised again."""
    import math
    import resource

    budget = job_cpu_budget(job)
    if budget is None:
        return "no limit"
    hard = int(math.ceil(cpu_now() + budget))
    _, old = resource.getrlimit(resource.RLIMIT_CPU)
    if old != resource.RLIM_INFINITY:
        hard = min(hard, old)
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
    return f"{budget:g} s for the job (hard RLIMIT_CPU), {job.cpu_limit:g} s per stage"


def set_cpu_budget(seconds: float | None) -> None:
    """Let this phase use ``seconds`` more CPU time (all threads); the kernel sends SIGXCPU after."""
    import math
    import resource

    if seconds is None:
        return
    soft = int(math.ceil(cpu_now() + max(seconds, 1.0)))
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
