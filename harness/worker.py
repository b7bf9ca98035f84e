"""The evaluation worker: ``python -m harness.worker`` loads the submission's model and runs the
stages, inside the sandbox the supervisor (:mod:`harness.sandbox`) set up.

It reads one :class:`WorkerJob` (JSON) on stdin, then, before importing anything large:
dies with its parent (Linux), moves into a new network namespace, and keeps its stdout for the
protocol (anything else printed goes to stderr). Then it imports torch and the stages' libraries,
sets its memory limit (``RLIMIT_AS`` above what the libraries take; not on CUDA), and for each
phase (``load``, then each stage) announces it, raises its ``RLIMIT_CPU`` by the per-stage CPU
budget, runs it, and saves a finished stage in the state folder (atomically, as before; finished
AutoAttack attacks too). Protocol lines, one JSON object each:

    {"event": "sandbox", "sandbox": {"network": ..., "memory": ..., "cpu_seconds_per_stage": ...}}
    {"event": "phase", "name": "load" | "<stage>"}
    {"event": "loaded", "runtime": {"device": ..., "device_name": ..., "torch_threads": ...}}
    {"event": "done", "stage": "<stage>", "seconds": 1.5}
    {"event": "error", "message": "<one line>"}          (then exit status 3)
    {"event": "finished"}                                (then exit status 0)

A Python traceback never reaches the terminal: it goes to ``<state>/worker.log``, with warnings.

The job is explicit so that any launcher can build one: ``torchrun`` will start one supervisor per
rank, and each supervisor one worker with its own ``device`` (``cuda:<LOCAL_RANK>``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields


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
    extra: dict = field(default_factory=dict)  # room for launchers (e.g. the torchrun rank)

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


def _setup_log(state_dir: str):
    """Warnings and tracebacks go to <state>/worker.log, not to the terminal."""
    import logging
    import warnings
    from pathlib import Path

    Path(state_dir).mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("harness.worker")
    log.propagate = False
    handler = logging.FileHandler(Path(state_dir) / "worker.log", encoding="utf-8")
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

    from . import compat  # noqa: F401
    from .stages import _CLASSES

    wanted = [f"harness.stages.{_CLASSES[name][0]}" for name in job.stages if name in _CLASSES]
    wanted += {"onnx": ["onnx", "onnx2torch"], "state_dict": ["safetensors.torch", "harness.architectures"]
               }.get(spec.model.format, [])
    if (spec.model.architecture or "").startswith("robustbench."):
        wanted += ["robustbench.model_zoo.architectures.resnet", "robustbench.model_zoo.architectures.wide_resnet"]
        if spec.model.architecture.startswith("robustbench.zoo:"):
            wanted.append("robustbench.model_zoo")
    for name in ("autoattack", "flops", "diagnostics"):
        if name in job.stages:
            wanted += {"autoattack": ["pyautoattack"], "flops": ["fvcore.nn"],
                       "diagnostics": ["harness.diagnostics"]}[name]
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

    from .sandbox import vm_size
    from .submission import format_size

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


def _cpu_budget(seconds: float | None) -> None:
    """Let this phase use ``seconds`` more CPU time (all threads); the kernel sends SIGXCPU after."""
    import math
    import resource

    if seconds is None:
        return
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(math.ceil(used.ru_utime + used.ru_stime + seconds))
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _one_line(e: BaseException, phase: str, job: WorkerJob, log_path: str) -> str:
    from .errors import HarnessError
    from .models import error_line, is_out_of_memory
    from .submission import format_size

    where = "loading the model" if phase == "load" else f"stage {phase}"
    if isinstance(e, HarnessError):
        return str(e)
    first = error_line(e)
    if is_out_of_memory(e):
        limit = format_size(job.memory_limit) if job.memory_limit is not None else "unlimited"
        return (f"{where} ran out of memory (the worker's limit is {limit}; --memory-limit): {first}; "
                f"finished stages are kept in {job.state_dir}")
    if isinstance(e, RecursionError):
        return f"{where} failed: the model is nested too deeply (RecursionError); traceback in {log_path}"
    return f"{where} failed: {type(e).__name__}: {first} (traceback in {log_path})"


def run(job: WorkerJob, sub, proto: _Protocol, sandbox: dict, status: dict) -> None:
    from pathlib import Path

    import torch

    from .data import NUM_CLASSES, load_test_data
    from .files import atomic_write_text
    from .models import load_model
    from .pipeline import run_stages, runtime_info
    from .stages import EvalContext, EvalOptions

    state_dir = Path(job.state_dir)
    spec = sub.spec
    options = EvalOptions(device=job.device, batch_size=job.batch_size, n_examples=job.n_examples,
                          data_dir=Path(job.data_dir) if job.data_dir else None,
                          train_data=Path(job.train_data) if job.train_data else None,
                          progress=job.progress, sandbox="none", trust_code=job.trust_code)
    data = load_test_data(spec.dataset, job.n_examples, data_dir=options.data_dir, custom_path=sub.dataset_path())
    num_classes = NUM_CLASSES.get(spec.dataset) or int(data.y.max()) + 1
    device = torch.device(job.device)
    torch.manual_seed(spec.evaluation.seed)
    model = load_model(sub, input_shape=data.input_shape, num_classes=num_classes, device=device,
                       trust_code=job.trust_code, max_model_bytes=job.max_model_bytes)
    runtime = {**runtime_info(device), "sandbox": sandbox}
    atomic_write_text(state_dir / "runtime.json", json.dumps(runtime))
    proto.send(event="loaded", runtime=runtime)
    ctx = EvalContext(sub, model, data, options, state_dir)

    def on_phase(name: str) -> None:
        status["phase"] = name
        proto.send(event="phase", name=name)
        _cpu_budget(job.cpu_limit)

    run_stages(ctx, job.stages, on_phase=on_phase,
               on_done=lambda name, seconds: proto.send(event="done", stage=name, seconds=seconds))


def main() -> int:
    from .sandbox import die_with_parent, isolate_network

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
    network = isolate_network() if job.isolate_network else "isolated (bubblewrap)"
    log_path = os.path.join(job.state_dir, "worker.log")
    status = {"phase": "load"}
    log = None
    try:
        log = _setup_log(job.state_dir)
        from .errors import HarnessError
        from .submission import load_submission

        sub = load_submission(job.submission)
        if sub.yaml_sha256 != job.submission_sha256:
            raise HarnessError(f"{job.submission} changed while the evaluation started; run it again")
        _preload(job, sub.spec)
        sandbox = {"network": network, "memory": _set_memory_limit(job),
                   "cpu_seconds_per_stage": job.cpu_limit}
        proto.send(event="sandbox", sandbox=sandbox)
        log.info("job %s; sandbox %s", job.to_json(), sandbox)
        proto.send(event="phase", name="load")
        _cpu_budget(job.cpu_limit)
        t0 = time.perf_counter()
        run(job, sub, proto, sandbox, status)
        log.info("finished in %.1f s", time.perf_counter() - t0)
        proto.send(event="finished")
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
            proto.send(event="error", message=message)
        except Exception:  # noqa: BLE001
            pass
        return 3


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # no interpreter teardown: atexit handlers of libraries may print or hang
