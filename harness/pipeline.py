"""The evaluation pipeline: submission -> loaded model -> stages -> result record.

    sub   = load_submission(path)                  # harness.submission (schema, paths, hashes)
    data  = load_test_data(...)                    # harness.data (first N test points, uint8)
    model = load_model(sub, ...)                   # harness.models (safe loading, wrapper)
    for stage in stages: ctx.results[...] = ...    # harness.stages.* (cached in the run state)
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
    meta = json.loads(j.read_text())
    with np.load(z, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return StageResult(meta["summary"], arrays, meta["seconds"], resumed=True)


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
    started = now()
    sub = load_submission(submission_path)
    spec = sub.spec
    selected = list(stages) if stages is not None else list(STAGE_ORDER)

    n = options.n_examples or spec.evaluation.n_examples
    data = load_test_data(spec.dataset, n, data_dir=options.data_dir, custom_path=sub.dataset_path())
    num_classes = NUM_CLASSES.get(spec.dataset) or int(data.y.max()) + 1
    device = resolve_device(options.device)
    batch_size = options.batch_size or spec.evaluation.batch_size
    torch.manual_seed(spec.evaluation.seed)
    model = load_model(sub, input_shape=data.input_shape, num_classes=num_classes, device=device)

    out = Path(out) if out is not None else default_record_path(sub)
    train_source = str(options.train_data.resolve()) if options.train_data else (
        f"{options.data_dir}:train" if options.data_dir else None)
    state_dir = out.parent / ".state" / spec.id / run_key(sub, len(data), batch_size, device, data.source,
                                                          train_source)
    if restart and state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    ctx = EvalContext(sub, model, data, options, state_dir)

    echo(f"{spec.id}: {spec.dataset}, {spec.threat_model.label}, {len(data)} examples, device {device}, "
         f"stages {','.join(selected)}")
    for name in STAGE_ORDER:
        cached = _load_stage(state_dir, name)
        if cached is not None:
            ctx.results[name] = cached
            if name in selected:
                echo(f"  {name:<12} resumed from {state_dir}")
            continue
        if name not in selected:
            continue
        t0 = time.perf_counter()
        result = get_stage(name).run(ctx)
        result.seconds = time.perf_counter() - t0
        _save_stage(state_dir, name, result)
        ctx.results[name] = result
        echo(f"  {name:<12} done in {result.seconds:.1f} s")

    check_sandwich(ctx)
    record, arrays = build_record(ctx, started=started, command=command or f"harness eval {submission_path}")
    json_path, npz_path = write_record(record, arrays, out)
    return EvalOutcome(record, json_path, npz_path, state_dir, arrays)


def build_record(ctx: EvalContext, *, started: str, command: str) -> tuple[ResultRecord, dict[str, np.ndarray]]:
    spec = ctx.spec
    fields: dict = {}
    arrays: dict[str, np.ndarray] = {"index": ctx.data.index, "label": ctx.data.y.numpy().astype(np.int16)}
    for name in STAGE_ORDER:
        if name in ctx.results:
            fields.update(ctx.results[name].summary)
            arrays.update(ctx.results[name].arrays)
    dev = ctx.model.device
    prov = Provenance(
        harness_version=__version__,
        python=python_version(),
        packages=package_versions(),
        device=str(dev),
        device_name=device_name(dev),
        torch_threads=torch.get_num_threads(),
        checkpoint_sha256=ctx.model.checkpoint_sha256,
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
