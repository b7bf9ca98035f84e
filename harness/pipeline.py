"""The evaluation pipeline: submission -> loaded model -> stages -> result record.

    sub   = load_submission(path)                  # harness.submission (schema, paths, hashes)
    data  = load_test_data(...)                    # harness.data (first N test points, uint8)
    --- in the sandboxed worker (harness.worker, supervised by harness.sandbox) ---
    model = load_model(sub, ...)                   # harness.models (safe loading, wrapper)
    run_stages(ctx, ...)                           # harness.stages.* (each saved in the run state)
    --- back in the supervisor, which never loads the model ---
    check_sandwich(ctx)                            # certified <= robust <= clean, per example
    write_record(build_record(ctx), arrays, out)   # harness.record (atomic JSON + npz)

Every finished stage is stored in the run's state folder (``<results>/.state/<id>/<run key>/``),
whose key covers everything a result depends on (submission and checkpoint hashes, N, seed, batch
size, device type, harness version). Rerunning the same command resumes; stages cached under the same
key are included in the record even when not selected again, so a partial run (``--only certify``)
adds to the record instead of erasing it. ``--restart`` drops the state.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__
from .bounds import METHODS as EXACT_CERTIFIERS  # bound methods: sound, not probabilistic
from .data import NUM_CLASSES, load_test_data
from .errors import HarnessError, SandwichViolation
from .files import atomic_savez, atomic_write_text
from .models import load_model, resolve_device
from .provenance import device_name, now, package_versions, python_version
from .record import Provenance, ResultRecord, write_record
from .stages import STAGE_ORDER, EvalContext, EvalOptions, StageResult, get_stage
from .submission import LoadedSubmission, load_submission



@dataclass
class EvalOutcome:
    record: ResultRecord
    json_path: Path
    npz_path: Path
    state_dir: Path
    arrays: dict[str, np.ndarray]


def default_record_path(sub: LoadedSubmission) -> Path:
    """``leaderboard/results/<id>.json`` of the repository holding ``submissions/<id>/``."""
    root = sub.folder.parent.parent if sub.folder.parent.name == "submissions" else Path.cwd()
    return root / "leaderboard" / "results" / f"{sub.spec.id}.json"


def run_key(sub: LoadedSubmission, n: int, batch_size: int, device: torch.device, data_source: str,
            train_source: str | None = None) -> str:
    key = {
        "harness": __version__, "submission": sub.yaml_sha256, "checkpoint": sub.spec.model.checkpoint.sha256,
        "n": n, "batch_size": batch_size, "device": device.type, "seed": sub.spec.evaluation.seed,
        "data": data_source, "train": train_source,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
def _save_stage(state_dir: Path, name: str, res: StageResult) -> None:
    d = state_dir / "stages"
    atomic_savez(d / f"{name}.npz", res.arrays)
    atomic_write_text(d / f"{name}.json", json.dumps({"summary": res.summary, "seconds": res.seconds}))


def _load_stage(state_dir: Path, name: str) -> StageResult | None:
    d = state_dir / "stages"
    j, z = d / f"{name}.json", d / f"{name}.npz"
    if not (j.exists() and z.exists()):
        return None
    # written by the worker, which ran a stranger's model: read as untrusted data
    try:
        meta = json.loads(j.read_text())
        with np.load(z, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        if not isinstance(meta, dict) or not isinstance(meta.get("summary"), dict):
            raise ValueError("no summary")
        return StageResult(meta["summary"], arrays, float(meta["seconds"]), resumed=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one error line
        raise HarnessError(f"the saved result of stage {name} in {state_dir} is unreadable "
                           f"({type(e).__name__}); run again with --restart")


def check_sandwich(ctx: EvalContext) -> None:
    """certified => robust under every attack that was run => clean-correct, example by example.

    An example certified at eps but broken by an attack means a bound or an attack is wrong.
    """
    correct = ctx.array("clean", "clean_correct")
    robust_arrays = {f"{stage}/{k}": v for stage, r in ctx.results.items()
                     for k, v in r.arrays.items() if k.endswith("_robust")}
    problems = []
    for stage, res in ctx.results.items():
        for key, arr in res.arrays.items():
            if key.startswith("certified_") and key.removeprefix("certified_") in EXACT_CERTIFIERS:
                cert = arr.astype(bool)
                if correct is not None and (bad := np.nonzero(cert & ~correct)[0]).size:
                    problems.append(f"{key} certifies misclassified examples {bad[:5].tolist()}")
                for rname, rob in robust_arrays.items():
                    if (bad := np.nonzero(cert & ~rob.astype(bool))[0]).size:
                        problems.append(f"{key} certifies examples {bad[:5].tolist()} that {rname} broke")
    if correct is not None:
        for rname, rob in robust_arrays.items():
            if (bad := np.nonzero(rob.astype(bool) & ~correct)[0]).size:
                problems.append(f"{rname} marks misclassified examples {bad[:5].tolist()} robust")
    if problems:
        raise SandwichViolation("sandwich violated (certified <= robust <= clean): " + "; ".join(problems))


def runtime_info(device: torch.device) -> dict:
    """Where the stages ran, for the record's provenance."""
    return {"device": str(device), "device_name": device_name(device), "torch_threads": torch.get_num_threads()}


def run_stages(ctx: EvalContext, selected: list[str], *,
               on_phase: Callable[[str], None] | None = None,
               on_done: Callable[[str, float], None] | None = None) -> None:
    """Run the ``selected`` stages that the state folder does not hold yet, in order, saving each as
    it finishes; earlier results (cached under the same key) are in ``ctx.results`` for the stages
    that read them. Used in process and by the sandboxed worker alike."""
    for name in STAGE_ORDER:
        cached = _load_stage(ctx.state_dir, name)
        if cached is not None:
            ctx.results[name] = cached
            continue
        if name not in selected:
            continue
        if on_phase is not None:
            on_phase(name)
        t0 = time.perf_counter()
        result = get_stage(name).run(ctx)
        result.seconds = time.perf_counter() - t0
        _save_stage(ctx.state_dir, name, result)
        ctx.results[name] = result
        if on_done is not None:
            on_done(name, result.seconds)


def resolve_limits(sub: LoadedSubmission, options: EvalOptions) -> dict:
    """The worker's limits: the submission's ``evaluation.limits``, overridden by the maintainer's
    options (``memory_limit`` 0 = no limit). The CPU budget per stage defaults to the wall-clock
    limit times the number of CPU cores."""
    import os

    lim = sub.spec.evaluation.limits
    memory = lim.memory if options.memory_limit is None else (options.memory_limit or None)
    timeout = float(options.stage_timeout if options.stage_timeout is not None else lim.stage_timeout_s)
    cpu = options.cpu_limit if options.cpu_limit is not None else lim.cpu_seconds
    if cpu is None:
        cpu = timeout * (os.cpu_count() or 1)
    if timeout <= 0 or cpu <= 0:
        raise HarnessError("--stage-timeout and --cpu-limit must be positive")
    return {"memory": memory, "stage_timeout": timeout, "cpu": float(cpu)}


def _read_runtime(state_dir: Path, device: torch.device) -> dict:
    """The runtime a worker recorded in the state folder (untrusted: checked), else this process's."""
    try:
        rt = json.loads((state_dir / "runtime.json").read_text())
        if (isinstance(rt, dict) and isinstance(rt.get("device_name"), str) and isinstance(rt.get("torch_threads"), int)
                and rt.get("device") == str(device)):
            return {"device": str(device), "device_name": rt["device_name"][:200],
                    "torch_threads": rt["torch_threads"],
                    "sandbox": rt["sandbox"] if isinstance(rt.get("sandbox"), dict) else None}
    except (OSError, ValueError):
        pass
    return runtime_info(device)


def evaluate(
    submission_path: str | Path,
    options: EvalOptions,
    *,
    stages: list[str] | None = None,
    out: Path | None = None,
    restart: bool = False,
    command: str | None = None,
    echo: Callable[[str], None] = print,
) -> EvalOutcome:
    """Evaluate a submission: the supervisor's part (validate, plan, run the stages in a sandboxed
    worker unless ``options.sandbox == "none"``, check the sandwich, write the record)."""
    started = now()
    sub = load_submission(submission_path)
    spec = sub.spec
    selected = list(stages) if stages is not None else list(STAGE_ORDER)

    n = options.n_examples or spec.evaluation.n_examples
    data = load_test_data(spec.dataset, n, data_dir=options.data_dir, custom_path=sub.dataset_path())
    num_classes = NUM_CLASSES.get(spec.dataset) or int(data.y.max()) + 1
    device = resolve_device(options.device)
    batch_size = options.batch_size or spec.evaluation.batch_size
    limits = resolve_limits(sub, options)

    out = Path(out) if out is not None else default_record_path(sub)
    train_source = str(options.train_data.resolve()) if options.train_data else (
        f"{options.data_dir}:train" if options.data_dir else None)
    state_dir = out.parent / ".state" / spec.id / run_key(sub, len(data), batch_size, device, data.source,
                                                          train_source)
    if restart and state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir = state_dir.resolve()

    echo(f"{spec.id}: {spec.dataset}, {spec.threat_model.label}, {len(data)} examples, device {device}, "
         f"stages {','.join(selected)}")
    cached = {name for name in STAGE_ORDER if _load_stage(state_dir, name) is not None}
    for name in selected:
        if name in cached:
            echo(f"  {name:<12} resumed from {state_dir}")
    todo = [name for name in selected if name not in cached]

    def done(name: str, seconds: float) -> None:
        echo(f"  {name:<12} done in {seconds:.1f} s")

    runtime: dict
    if options.sandbox == "none":  # in process: trusted fixtures and benchmarks only
        torch.manual_seed(spec.evaluation.seed)
        model = load_model(sub, input_shape=data.input_shape, num_classes=num_classes, device=device,
                           trust_code=options.trust_code,
                           max_model_bytes=limits["memory"] if limits["memory"] else None)
        runtime = {**runtime_info(device), "sandbox": {"mode": "none (in process)"}}
        run_stages(EvalContext(sub, model, data, options, state_dir), selected, on_done=done)
    elif todo:
        from .sandbox import run_worker
        from .worker import WorkerJob

        job = WorkerJob(
            submission=str(sub.yaml_path), submission_sha256=sub.yaml_sha256, state_dir=str(state_dir),
            stages=todo, device=str(device), n_examples=len(data), batch_size=batch_size,
            data_dir=str(options.data_dir.resolve()) if options.data_dir else None,
            train_data=str(options.train_data.resolve()) if options.train_data else None,
            progress=options.progress, trust_code=options.trust_code, memory_limit=limits["memory"],
            cpu_limit=limits["cpu"], isolate_network=options.sandbox != "bwrap", parent_pid=None
            if options.sandbox == "bwrap" else os.getpid(), max_model_bytes=limits["memory"])
        read_only = [sub.folder, sub.checkpoint_path().parent] + [
            p.resolve() for p in (options.data_dir, options.train_data) if p is not None]
        runtime = run_worker(job, mode=options.sandbox, stage_timeout=limits["stage_timeout"],
                             watch_memory=limits["memory"] if device.type == "cuda" else None,
                             read_only=read_only, echo=echo, on_done=done)
        runtime.setdefault("sandbox", {})
        if isinstance(runtime["sandbox"], dict):
            runtime["sandbox"]["mode"] = options.sandbox
            runtime["sandbox"]["stage_timeout_s"] = limits["stage_timeout"]
        if not isinstance(runtime.get("device_name"), str):
            runtime = {**_read_runtime(state_dir, device), "sandbox": runtime.get("sandbox")}
    else:
        runtime = _read_runtime(state_dir, device)

    results = {}
    for name in STAGE_ORDER:
        res = _load_stage(state_dir, name)
        if res is not None:
            res.resumed = name in cached
            results[name] = res
            for key, arr in res.arrays.items():  # per-example arrays (the gallery is a few examples)
                if not key.startswith("gallery_") and (arr.ndim < 1 or arr.shape[0] != len(data)):
                    raise HarnessError(f"the saved result of stage {name} in {state_dir} has {key} of shape "
                                       f"{arr.shape} for {len(data)} examples; run again with --restart")
    missing = [name for name in selected if name not in results]
    if missing:
        raise HarnessError(f"the evaluation finished without the results of {', '.join(missing)} in {state_dir}")
    ctx = EvalContext(sub, None, data, options, state_dir, results)
    try:
        check_sandwich(ctx)
        record, arrays = build_record(ctx, started=started, command=command or f"harness eval {submission_path}",
                                      runtime=runtime, device=device)
    except HarnessError:
        raise
    except Exception as e:  # noqa: BLE001 - arrays of the wrong shape or type from the worker
        raise HarnessError(f"the stage results in {state_dir} are malformed ({type(e).__name__}: "
                           f"{str(e)[:200]}); run again with --restart")
    json_path, npz_path = write_record(record, arrays, out)
    return EvalOutcome(record, json_path, npz_path, state_dir, arrays)


def build_record(ctx: EvalContext, *, started: str, command: str, runtime: dict, device: torch.device,
                 ) -> tuple[ResultRecord, dict[str, np.ndarray]]:
    spec = ctx.spec
    fields: dict = {}
    arrays: dict[str, np.ndarray] = {"index": ctx.data.index, "label": ctx.data.y.numpy().astype(np.int16)}
    for name in STAGE_ORDER:
        if name in ctx.results:
            fields.update(ctx.results[name].summary)
            arrays.update(ctx.results[name].arrays)
    prov = Provenance(
        harness_version=__version__,
        python=python_version(),
        packages=package_versions(),
        device=str(device),
        device_name=str(runtime.get("device_name") or device_name(device)),
        torch_threads=int(runtime.get("torch_threads") or torch.get_num_threads()),
        checkpoint_sha256=spec.model.checkpoint.sha256,
        submission_sha256=ctx.submission.yaml_sha256,
        files_sha256=ctx.submission.files_sha256,  # the folder digest verified at load (harness.manifest)
        data_source=ctx.data.source,
        seed=ctx.seed,
        batch_size=ctx.batch_size,
        started_at=started,
        finished_at=now(),
        stage_seconds={k: round(r.seconds, 3) for k, r in ctx.results.items()},
        resumed_stages=[k for k, r in ctx.results.items() if r.resumed],
        command=command,
        sandbox=runtime.get("sandbox"),
    )
    try:
        record = ResultRecord(
            submission_id=spec.id, name=spec.name, dataset=spec.dataset,
            threat_model={"norm": spec.threat_model.norm, "eps": spec.threat_model.eps},
            n_examples=len(ctx.data), stages=[s for s in STAGE_ORDER if s in ctx.results],
            provenance=prov, **fields,
        )
    except Exception as e:  # a stage produced a field the record does not define: a harness bug
        raise HarnessError(f"internal error building the result record: {' '.join(str(e).split())[:300]}")
    return record, arrays
