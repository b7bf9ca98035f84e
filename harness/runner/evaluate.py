"""The evaluation pipeline: submission -> loaded model -> stages -> result record.

    sub   = load_submission(path)                  # harness.submission (schema, paths, hashes)
    data  = load_test_data(...)                    # harness.data.loaders (first N test points, uint8)
    plan  = rank 0's plan, broadcast               # harness.runner.schedule (attempt, stages to compute)
    --- in the sandboxed worker of each rank (harness.sandbox.worker, supervised by harness.sandbox.supervisor) ---
    model = load_model(sub, ...)                   # harness.models.load (safe loading, wrapper)
    run_blocks(ctx, plan)                          # stages' map, block by block from a shared queue
    --- back in the supervisors, which never load the model; rank 0 only from here ---
    reduce each stage from its blocks             # stages' reduce (as soon as its blocks are done)
    check_sandwich(ctx)                            # certified <= robust <= clean, per example
    write_record(build_record(ctx), arrays, out)   # harness.record (atomic JSON + npz)

Without torchrun there is one rank. Under ``torchrun`` (:mod:`harness.runner.distributed`) every rank runs
this same function: rank 0 plans and, once every block of every stage is in the state folder,
reduces and writes the record; the others compute blocks and exit. The record does not depend on the
number of ranks (:mod:`harness.stages.blocks`).

Every finished block, and every reduced stage, is stored in the run's state folder
(``<results>/.state/<id>/<run key>/``), whose key covers everything a result depends on (the result-
relevant fields of the submission, ``results_sha256``, so a metadata-only edit resumes; the checkpoint hash,
N, seed, batch size, device type, harness version). Rerunning the same
command resumes, redoing only unfinished blocks; stages finished under the same key are included in
the record even when not selected again, so a partial run (``--only certify``) adds to the record
instead of erasing it. ``--restart`` drops the state.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness import __version__, certifiers
from harness.core.errors import HarnessError, SandwichViolation, one_line
from harness.core.files import atomic_savez, atomic_write_text, read_bytes_confined
from harness.core.provenance import device_name, now, package_versions, python_version
from harness.data.loaders import load_test_data, num_classes_of
from harness.models.load import load_model, resolve_device
from harness.record.read import parse_record_json, read_examples, read_record, validate_record
from harness.record.schema import MAX_RECORD_BYTES, STAGE_PARTS, Provenance, ResultRecord
from harness.record.write import record_paths, write_record
from harness.runner.distributed import Distributed
from harness.runner.schedule import (
    POLL_S,
    Plan,
    gather,
    other_rank_failed,
    reduced_paths,
    run_blocks,
    snapshot,
    stage_finished,
)
from harness.sandbox.job import Aborted
from harness.stages import STAGE_ORDER, EvalContext, EvalOptions, StageResult, get_stage, ordered, stage_class
from harness.stages.base import concat_blocks
from harness.stages.blocks import StageStore, first_error, new_generation, write_error
from harness.submission.load import LoadedSubmission, load_submission


@dataclass
class EvalOutcome:
    record: ResultRecord
    json_path: Path
    npz_path: Path
    state_dir: Path
    arrays: dict[str, np.ndarray]


def default_record_path(sub: LoadedSubmission) -> Path:
    """``leaderboard/results/local/<id>.json`` of the repository holding ``submissions/<id>/``: a
    scratch path (git-ignored), never a committed record. The trusted evaluation passes
    ``--out leaderboard/results/<id>.json``."""
    root = sub.folder.parent.parent if sub.folder.parent.name == "submissions" else Path.cwd()
    return root / "leaderboard" / "results" / "local" / f"{sub.spec.id}.json"


#: where a run that would shrink the record at its ``--out`` path writes instead: ``<dir>/.partial/``
PARTIAL_DIR = ".partial"


def check_out_path(out: Path) -> None:
    """``--out`` must be a regular file or a new path, named ``<name>.json``, in a folder that can be
    created and written: checked before anything runs, so that a long evaluation never ends unable
    to write its record (and ``/dev/null``, a FIFO or a folder is never replaced by a file)."""
    from harness.record.write import record_paths

    shown = one_line(out, 300)
    for path in record_paths(out):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            raise HarnessError(f"--out {shown}: cannot use {one_line(path, 300)}: {one_line(e, 200)}")
        if not stat.S_ISREG(st.st_mode):
            kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a symlink" if stat.S_ISLNK(st.st_mode) else
                    "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or
                    stat.S_ISBLK(st.st_mode) else "not a regular file")
            raise HarnessError(f"--out {shown}: {one_line(path, 300)} is {kind}; the record path must be a regular "
                               "file or a new path")
    if not out.name.endswith(".json") or not EXAMPLES_NAME.fullmatch(record_paths(out)[1].name):
        raise HarnessError(f"--out {shown}: a record path is <name>.json, with letters, digits, '.', '_' or '-' "
                           "in the name")
    parent = out.parent
    try:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise HarnessError(f"--out {shown}: {one_line(parent, 300)} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise HarnessError(f"--out {shown}: the folder {one_line(parent, 300)} is not writable")
    except (OSError, ValueError) as e:
        raise HarnessError(f"--out {shown}: cannot use its folder: {one_line(e, 200)}")


def record_destination(out: Path, record: ResultRecord, echo: Callable[[str], None]) -> Path:
    """Where the record goes: ``out``, unless a record there has more examples or stages than this
    run's. Then ``<dir>/.partial/<name>.json``: a run never shrinks a record (said in one line). A file
    at ``out`` that is not a readable record is not replaced either."""
    if not out.exists():
        return out
    partial = out.parent / PARTIAL_DIR / out.name
    try:
        old = read_record(out, examples=False)
    except HarnessError as e:
        check_out_path(partial)
        echo(f"  {one_line(out, 300)} is not a readable record ({one_line(e, 200)}); this run's record is "
             f"written to {one_line(partial, 300)} instead (remove the file to write there)")
        return partial
    missing = [s for s in old.stages if s not in record.stages]
    if record.n_examples < old.n_examples or missing:
        check_out_path(partial)
        echo(f"  {one_line(out, 300)} holds {old.n_examples} examples ({','.join(old.stages)}); this run has "
             f"{record.n_examples} ({','.join(record.stages)}), so its record is written to "
             f"{one_line(partial, 300)} and does not replace the larger one")
        return partial
    return out


#: the name of an ``.examples.npz`` beside a record (harness.record.ResultRecord.examples_file)
EXAMPLES_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.npz")


#: bumped when a stage's stored blocks change meaning under the same harness version, so that a
#: state folder of the older format is not resumed: 2 = the certify stage runs the certifier
#: registry (smoothing noise seeded by certifiers.base.example_seed, per-method block arrays)
STATE_FORMAT = 2


def run_key(sub: LoadedSubmission, n: int, batch_size: int, device: torch.device, data_source: str,
            train_source: str | None = None) -> str:
    key = {
        # the result-relevant fields only: a metadata-only edit (name, licence, notes) resumes
        "harness": __version__, "state_format": STATE_FORMAT, "submission_results": sub.results_sha256,
        "checkpoint": sub.spec.model.checkpoint.sha256,
        "n": n, "batch_size": batch_size, "device": device.type, "seed": sub.spec.evaluation.seed,
        "data": data_source, "train": train_source,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
def _save_stage(state_dir: Path, name: str, res: StageResult) -> None:
    j, z = reduced_paths(state_dir, name)
    atomic_savez(z, res.arrays)
    atomic_write_text(j, json.dumps({"summary": res.summary, "seconds": res.seconds}))


def _load_stage(state_dir: Path, name: str, n: int) -> StageResult | None:
    j, z = reduced_paths(state_dir, name)
    if not (j.exists() and z.exists()):
        return None
    # reduced from blocks a worker wrote, which ran a stranger's model: read as untrusted data
    try:
        meta = json.loads(j.read_text())
        with np.load(z, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        if not isinstance(meta, dict) or not isinstance(meta.get("summary"), dict):
            raise ValueError("no summary")
        STAGE_PARTS[name].model_validate(meta["summary"])  # the stage's own part of the record, typed
        res = StageResult(meta["summary"], arrays, float(meta["seconds"]), resumed=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one error line
        raise HarnessError(f"the saved result of stage {name} in {state_dir} is unreadable "
                           f"({type(e).__name__}); run again with --restart")
    _check_lengths(state_dir, name, res, n)
    return res


def _check_lengths(state_dir: Path, name: str, res: StageResult, n: int) -> None:
    for key, arr in res.arrays.items():  # per-example arrays (the gallery is a few examples)
        if not key.startswith("gallery_") and (arr.ndim < 1 or arr.shape[0] != n):
            raise HarnessError(f"the saved result of stage {name} in {state_dir} has {key} of shape "
                               f"{arr.shape} for {n} examples; run again with --restart")


def reduce_stage(ctx: EvalContext, name: str, plan: Plan) -> StageResult:
    """Gather every block of ``name`` (untrusted data), reduce them into the stage's result (no
    model), check it and save it in the state folder."""
    parts, extras, metas = gather(ctx.state_dir, name, plan)
    stage = get_stage(name)
    try:
        res = stage.reduce(ctx, concat_blocks(parts), extras)
    except HarnessError:
        raise
    except Exception as e:  # noqa: BLE001 - blocks of the wrong shape or type from a worker
        raise HarnessError(f"the blocks of stage {name} in {ctx.state_dir} are malformed ({type(e).__name__}: "
                           f"{one_line(e, 200)}); run again with --restart")
    try:
        STAGE_PARTS[name].model_validate(res.summary)
    except Exception as e:  # noqa: BLE001 - a stage wrote a field outside its part: a harness bug
        raise HarnessError(f"internal error: stage {name} produced a summary outside its record part: "
                           f"{one_line(e, 300)}")
    res.seconds = float(sum(float(m["seconds"]) for m in metas))
    _check_lengths(ctx.state_dir, name, res, len(ctx.data))
    _save_stage(ctx.state_dir, name, res)
    return res


def check_sandwich(ctx: EvalContext) -> None:
    """certified => robust under every attack that was run => clean-correct, example by example.

    An example certified at eps but broken by an attack means a bound or an attack is wrong.
    """
    correct = ctx.array("clean", "clean_correct")
    robust_arrays = {f"{stage}/{k}": v for stage, r in ctx.results.items()
                     for k, v in r.arrays.items() if k.endswith("_robust")}
    problems = []
    for _stage, res in ctx.results.items():
        for key, arr in res.arrays.items():
            # sound certifiers only (the registry's): smoothing certifies the smoothed classifier
            if key.startswith("certified_") and certifiers.is_sound(key.removeprefix("certified_")):
                cert = arr.astype(bool)
                if correct is not None and (bad := np.nonzero(cert & ~correct)[0]).size:
                    problems.append(f"{key} certifies misclassified examples {bad[:5].tolist()}")
                for rname, rob in robust_arrays.items():
                    if (bad := np.nonzero(cert & ~rob.astype(bool))[0]).size:
                        problems.append(f"{key} certifies examples {bad[:5].tolist()} that {rname} broke")
    sound = [a.astype(bool) for r in ctx.results.values() for k, a in r.arrays.items()
             if k.startswith("certified_") and certifiers.is_sound(k.removeprefix("certified_"))]
    for _stage, res in ctx.results.items():  # a checked counterexample on a certified example: a bug
        for key, arr in res.arrays.items():
            if key.startswith("falsified_") and certifiers.is_sound(key.removeprefix("falsified_")):
                for cert in sound:
                    if (bad := np.nonzero(cert & arr.astype(bool))[0]).size:
                        problems.append(f"{key} has counterexamples for examples {bad[:5].tolist()} that a "
                                        "sound certifier certified")
                        break
    if correct is not None:
        for rname, rob in robust_arrays.items():
            if (bad := np.nonzero(rob.astype(bool) & ~correct)[0]).size:
                problems.append(f"{rname} marks misclassified examples {bad[:5].tolist()} robust")
    if problems:
        raise SandwichViolation("sandwich violated (certified <= robust <= clean): " + "; ".join(problems))


def runtime_info(device: torch.device) -> dict:
    """Where the stages ran, for the record's provenance."""
    return {"device": str(device), "device_name": device_name(device), "torch_threads": torch.get_num_threads()}


def resolve_limits(sub: LoadedSubmission, options: EvalOptions) -> dict:
    """The worker's limits: the maintainer's caps (``options``' memory_limit / stage_timeout /
    cpu_limit from the flags, ``memory_limit`` 0 = no memory cap; else the runner's
    ROBUST_FRONTIER_MAX_* variables; else the defaults), each lowered, never raised, by the
    submission's ``evaluation.limits`` (:mod:`harness.core.settings`). Returns ``{"memory": bytes | None,
    "stage_timeout": s, "cpu": s per stage, "set_by": {limit: "maintainer" | "submission"}}``; a NaN,
    infinite, negative or unparsable cap is a one-line HarnessError naming its flag or variable."""
    from harness.core.settings import effective_limits, maintainer_caps

    caps = maintainer_caps(options.memory_limit, options.stage_timeout, options.cpu_limit)
    return effective_limits(sub.spec.evaluation.limits, caps)


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


def make_plan(state_dir: Path, selected: list[str], n: int, batch_size: int, seed: int,
              world_size: int) -> tuple[Plan, dict[str, int]]:
    """Rank 0's plan for this attempt: a new generation, the selected stages not finished yet, and
    the stages whose per-example arrays are there; with the blocks already done, per stage."""
    probe = Plan(n, batch_size, seed, 0, [], [], world_size)
    finished = {s for s in STAGE_ORDER if stage_finished(state_dir, s, probe)}
    todo = [s for s in ordered(selected) if s not in finished]
    available = [s for s in STAGE_ORDER if s in selected or s in finished]
    resumed = {s: len(StageStore(state_dir, s).done()) for s in todo}
    generation = new_generation(state_dir, {"world_size": world_size, "host": socket.gethostname(),
                                            "pid": os.getpid(), "started": now(), "todo": todo})
    return Plan(n, batch_size, seed, generation, todo, available, world_size), {
        s: k for s, k in resumed.items() if k}


class _Reducer:
    """Rank 0's supervisor side while the blocks are computed: reduces each stage as soon as its
    blocks are all there (so a finished stage is kept even if a later one fails), says so, and shows
    one progress bar for the whole job (blocks done of all blocks, read from the state folder)."""

    def __init__(self, ctx: EvalContext, plan: Plan, echo: Callable[[str], None], progress: bool, label: str):
        self.ctx, self.plan, self.echo = ctx, plan, echo
        self.bar = None
        total = sum(plan.count(s) for s in plan.todo)
        if progress and total:
            from tqdm.auto import tqdm

            done, _ = snapshot(ctx.state_dir, plan)
            self.bar = tqdm(total=total, initial=int(done), desc=label, unit="block", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.2f}/{total} blocks [{elapsed}<{remaining}]{postfix}")
        self.tick()

    def say(self, line: str) -> None:
        if self.bar is None:
            self.echo(line)
            return
        from tqdm.auto import tqdm

        with tqdm.external_write_mode():
            self.echo(line)

    def tick(self) -> None:
        ctx, plan = self.ctx, self.plan
        for name in ordered(plan.available):
            if name in ctx.results:
                continue
            res = _load_stage(ctx.state_dir, name, len(ctx.data))
            if res is not None:
                res.resumed = name not in plan.todo
                ctx.results[name] = res
                continue
            waits_for = [u for u in stage_class(name).uses if u in plan.available and u not in ctx.results]
            if waits_for or not stage_finished(ctx.state_dir, name, plan):
                continue
            res = reduce_stage(ctx, name, plan)
            res.resumed = name not in plan.todo
            ctx.results[name] = res
            self.say(f"  {name:<12} done in {res.seconds:.1f} s"
                     + (f" ({plan.count(name)} blocks)" if plan.count(name) > 1 else ""))
        if self.bar is not None:
            done, per_stage = snapshot(ctx.state_dir, plan)
            self.bar.n = min(done, self.bar.total)
            busy = [f"{s} {per_stage[s]}/{plan.count(s)}" for s in plan.todo if per_stage[s] < plan.count(s)]
            self.bar.set_postfix_str(", ".join(busy[:2]), refresh=False)
            self.bar.refresh()

    def close(self, *, failed: bool = False) -> None:
        """Close the bar; after a failure it is erased, so that the error stays the one line printed."""
        if self.bar is not None:
            if failed:
                self.bar.leave = False
            self.bar.close()
            self.bar = None


def _wait_for_blocks(state_dir: Path, plan: Plan, dist: Distributed, tick: Callable[[], None] | None) -> None:
    """After this rank's worker is done: wait until every block of the plan is in the state folder
    (other ranks may still be computing theirs); stop if a rank reports an error."""
    while True:
        if tick is not None:
            tick()
        if all(stage_finished(state_dir, s, plan) for s in plan.todo):
            return
        other_rank_failed(state_dir, plan.generation, dist.rank)
        if not dist.launched:  # one process, and its worker finished: blocks missing is an error
            missing = [s for s in plan.todo if not stage_finished(state_dir, s, plan)]
            raise HarnessError(f"the evaluation finished without the results of {', '.join(missing)} in {state_dir}")
        time.sleep(POLL_S)


def evaluate(
    submission_path: str | Path,
    options: EvalOptions,
    *,
    stages: list[str] | None = None,
    out: Path | None = None,
    restart: bool = False,
    command: str | None = None,
    echo: Callable[[str], None] = print,
) -> EvalOutcome | None:
    """Evaluate a submission: the supervisor's part (validate, plan, compute blocks in a sandboxed
    worker unless ``options.sandbox == "none"``, reduce, check the sandwich, write the record).

    Under torchrun every rank calls this; rank 0 returns the outcome, the other ranks None. An error
    on a rank is one line naming the rank (``rank 1: ...``), and no record is written."""
    dist = Distributed.from_env()
    try:
        return _evaluate(dist, submission_path, options, stages=stages, out=out, restart=restart,
                         command=command, echo=echo)
    except HarnessError as e:
        if dist.launched:
            line = f"rank {dist.rank}: {e}"
            dist.report_failure(line, at=getattr(e, "failed_at", None), after=getattr(e, "after", None))
            raise HarnessError(line) from None
        raise
    finally:
        dist.close()


def _evaluate(dist: Distributed, submission_path, options: EvalOptions, *, stages, out, restart, command,
              echo) -> EvalOutcome | None:
    started = now()
    sub = load_submission(submission_path)
    spec = sub.spec
    limits = resolve_limits(sub, options)  # before any data: a bad cap is the maintainer's one-line error
    selected = ordered(stages) if stages is not None else list(STAGE_ORDER)

    n = options.n_examples or spec.evaluation.n_examples
    data = load_test_data(spec.dataset, n, data_dir=options.data_dir, custom_path=sub.dataset_path(),
                          preprocessing=spec.resize_crop)
    num_classes = num_classes_of(data)
    device = dist.device(resolve_device(options.device))
    dist.init(device)
    batch_size = options.batch_size or spec.evaluation.batch_size
    main = dist.is_main
    say = echo if main else (lambda line: None)

    out = Path(out) if out is not None else default_record_path(sub)
    check_out_path(out)
    train_source = str(options.train_data.resolve()) if options.train_data else (
        f"{options.data_dir}:train" if options.data_dir else None)
    state_dir = out.parent / ".state" / spec.id / run_key(sub, len(data), batch_size, device, data.source,
                                                          train_source)
    if main and not dist.launched and not restart:
        kept = metadata_update(out, sub, n=len(data), data_source=data.source, batch_size=batch_size, stages=selected)
        if kept is not None:
            record, arrays, signed = kept
            atomic_write_text(out, record.model_dump_json(indent=2) + "\n")
            say(f"{spec.id}: only metadata (name, authors, paper, licence, notes) changed since {one_line(out, 300)} "
                "was computed, and its results_sha256 matches: the record is updated without re-running any stage"
                + ("; its signature no longer applies and was dropped (re-sign it)" if signed else "")
                + " (--restart re-evaluates)")
            return EvalOutcome(record, out, record_paths(out)[1], state_dir, arrays)
    planned = None
    if main:
        # --restart drops the state once, not again when torchrun restarts the job (--max-restarts)
        if restart and state_dir.exists() and dist.restart_count == 0:
            shutil.rmtree(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        plan, resumed_blocks = make_plan(state_dir.resolve(), selected, len(data), batch_size,
                                         spec.evaluation.seed, dist.world_size)
        planned = (plan.to_dict(), resumed_blocks)
    plan_dict, resumed_blocks = dist.broadcast(planned)
    plan = Plan.from_dict(plan_dict)
    state_dir = state_dir.resolve()

    where = f", {dist.world_size} ranks ({dist.backend})" if dist.launched else ""
    say(f"{spec.id}: {spec.dataset}, {spec.threat_model.label}, {len(data)} examples, device {device}{where}, "
        f"stages {','.join(selected)}")
    for name in selected:
        if name not in plan.todo:
            say(f"  {name:<12} resumed from {state_dir}")
        elif resumed_blocks.get(name):
            say(f"  {name:<12} {resumed_blocks[name]} of {plan.count(name)} blocks resumed from {state_dir}")

    reducer = None
    runtime: dict
    computed = 0
    try:
        if main:
            rctx = EvalContext(sub, None, data, options, state_dir, rank=dist.rank, world_size=dist.world_size)
            reducer = _Reducer(rctx, plan, say, options.progress, spec.id)
        tick = reducer.tick if reducer is not None else None
        if plan.todo and options.sandbox == "none":  # in process: trusted fixtures and benchmarks only
            torch.manual_seed(spec.evaluation.seed)
            model = load_model(sub, input_shape=data.input_shape, num_classes=num_classes, device=device,
                               trust_code=options.trust_code,
                               max_model_bytes=limits["memory"] if limits["memory"] else None)
            runtime = {**runtime_info(device), "sandbox": {"mode": "none (in process)"}}
            ctx = EvalContext(sub, model, data, options, state_dir, rank=dist.rank, world_size=dist.world_size)
            computed = run_blocks(ctx, plan, on_done=(lambda *a: tick()) if tick else None)
        elif plan.todo:
            runtime = _run_in_worker(sub, options, data, device, batch_size, limits, state_dir, plan, dist,
                                     echo=say, tick=tick)
            computed = int(runtime.pop("blocks", 0) or 0)
        else:
            runtime = _read_runtime(state_dir, device)
        _wait_for_blocks(state_dir, plan, dist, tick)
    except HarnessError as e:
        if dist.launched:
            if isinstance(e, Aborted) or getattr(e, "aborted", False):  # another rank failed first
                first = first_error(state_dir, plan.generation, exclude=dist.rank)
                e.after = first[2] if first is not None else None
            else:
                e.failed_at = time.time()
                write_error(state_dir, plan.generation, dist.rank, str(e))  # the other ranks stop too
        if reducer is not None:
            reducer.close(failed=True)
        raise

    # every rank's device and share of the work, in rank order (also the final barrier)
    ranks = dist.all_gather({"rank": dist.rank, "device": str(device),
                             "device_name": str(runtime.get("device_name") or device_name(device))[:200],
                             "host": socket.gethostname()[:200], "blocks": computed})
    if not main:
        return None
    try:
        reducer.tick()
    finally:
        reducer.close()
    results = reducer.ctx.results
    missing = [name for name in selected if name not in results]
    if missing:
        raise HarnessError(f"the evaluation finished without the results of {', '.join(missing)} in {state_dir}")
    ctx = EvalContext(sub, None, data, options, state_dir, {k: results[k] for k in STAGE_ORDER if k in results})
    try:
        check_sandwich(ctx)
        record, arrays = build_record(
            ctx, started=started, command=command or f"harness eval {submission_path}", runtime=runtime,
            device=device, distributed={"world_size": dist.world_size, "backend": dist.backend,
                                        "ranks": ranks if dist.launched else [], "block_size": batch_size,
                                        "blocks": {k: plan.count(k) for k in ctx.results},
                                        "resumed_blocks": resumed_blocks})
    except HarnessError:
        raise
    except Exception as e:  # noqa: BLE001 - arrays of the wrong shape or type from the worker
        raise HarnessError(f"the stage results in {state_dir} are malformed ({type(e).__name__}: "
                           f"{str(e)[:200]}); run again with --restart")
    dest = record_destination(out, record, say)
    try:
        json_path, npz_path = write_record(record, arrays, dest)
    except OSError as e:
        raise HarnessError(f"cannot write the record {one_line(dest, 300)}: {one_line(e.strerror or e, 200)} "
                           f"(every stage is kept in {one_line(state_dir, 300)}: the same command writes it)")
    return EvalOutcome(record, json_path, npz_path, state_dir, arrays)


def metadata_update(out: Path, sub: LoadedSubmission, *, n: int, data_source: str, batch_size: int,
                    stages: list[str]) -> tuple[ResultRecord, dict[str, np.ndarray], bool] | None:
    """The record at ``out`` with the submission's metadata of now (name, ``submission_sha256``,
    ``files_sha256``), when it already holds this run's results: a valid record whose
    ``results_sha256`` is the submission's, of the same checkpoint, examples, data, block size and
    seed, with every selected stage, and only its metadata out of date. Else None (a run is needed,
    or nothing changed). Also returns its arrays and whether it carried a signature (dropped: it no
    longer applies)."""
    if not out.is_file():
        return None
    try:
        raw = parse_record_json(read_bytes_confined(out, max_bytes=MAX_RECORD_BYTES, what="result record"), str(out))
        signed = raw.pop("signature", None) is not None
        rec = validate_record(raw, str(out))
        arrays = read_examples(rec, out)
    except HarnessError:
        return None
    prov, spec = rec.provenance, sub.spec
    same_results = (prov.results_sha256 is not None and prov.results_sha256 == sub.results_sha256
                    and prov.checkpoint_sha256 == spec.model.checkpoint.sha256 and rec.submission_id == spec.id
                    and rec.n_examples == n and prov.data_source == data_source and prov.batch_size == batch_size
                    and prov.seed == spec.evaluation.seed and set(stages) <= set(rec.stages))
    if not same_results or (prov.submission_sha256 == sub.yaml_sha256 and rec.name == spec.name
                            and prov.files_sha256 == sub.files_sha256):
        return None
    rec.name = spec.name
    prov.submission_sha256 = sub.yaml_sha256
    prov.files_sha256 = sub.files_sha256
    return ResultRecord.model_validate(rec.model_dump()), arrays, signed


def _run_in_worker(sub, options: EvalOptions, data, device, batch_size: int, limits: dict, state_dir: Path,
                   plan: Plan, dist: Distributed, *, echo, tick) -> dict:
    """This rank's blocks, computed by a sandboxed worker (harness.sandbox.worker)."""
    from harness.core.settings import certify_budget_cap
    from harness.sandbox.job import WorkerJob
    from harness.sandbox.supervisor import run_worker

    job = WorkerJob(
        submission=str(sub.yaml_path), submission_sha256=sub.yaml_sha256, state_dir=str(state_dir),
        stages=list(plan.todo), device=str(device), n_examples=len(data), batch_size=batch_size,
        data_dir=str(options.data_dir.resolve()) if options.data_dir else None,
        train_data=str(options.train_data.resolve()) if options.train_data else None,
        progress=False, trust_code=options.trust_code, memory_limit=limits["memory"],
        cpu_limit=limits["cpu"], isolate_network=options.sandbox != "bwrap", parent_pid=None
        if options.sandbox == "bwrap" else os.getpid(), max_model_bytes=limits["memory"],
        rank=dist.rank, world_size=dist.world_size, plan=plan.to_dict(),
        extra={"certify_budget_cap_s": certify_budget_cap(options.certify_budget)[0]})
    read_only = [sub.folder, sub.checkpoint_path().parent] + [
        p.resolve() for p in (options.data_dir, options.train_data) if p is not None]
    runtime = run_worker(job, mode=options.sandbox, stage_timeout=limits["stage_timeout"],
                         watch_memory=limits["memory"] if device.type == "cuda" else None,
                         read_only=read_only, echo=lambda line: echo(one_line(line)), tick=tick)
    runtime.setdefault("sandbox", {})
    if isinstance(runtime["sandbox"], dict):
        runtime["sandbox"]["mode"] = options.sandbox
        runtime["sandbox"]["stage_timeout_s"] = limits["stage_timeout"]
        runtime["sandbox"]["cpu_seconds_per_stage"] = limits["cpu"]
        # the effective limits, as the supervisor set them (not as the worker reports them)
        runtime["sandbox"]["limits"] = {"memory_bytes": limits["memory"], "stage_timeout_s": limits["stage_timeout"],
                                        "cpu_seconds_per_stage": limits["cpu"], "set_by": limits.get("set_by")}
    if not isinstance(runtime.get("device_name"), str):
        blocks = runtime.get("blocks")
        runtime = {**_read_runtime(state_dir, device), "sandbox": runtime.get("sandbox"), "blocks": blocks}
    return runtime


def build_record(ctx: EvalContext, *, started: str, command: str, runtime: dict, device: torch.device,
                 distributed: dict | None = None) -> tuple[ResultRecord, dict[str, np.ndarray]]:
    spec = ctx.spec
    fields: dict = {}
    arrays: dict[str, np.ndarray] = {"index": ctx.data.index, "label": ctx.data.y.numpy().astype(np.int16)}
    for name in STAGE_ORDER:
        if name in ctx.results:
            # each stage fills only its own part of the record (harness.record.STAGE_PARTS)
            part = STAGE_PARTS[name].model_validate(ctx.results[name].summary)
            fields.update({k: getattr(part, k) for k in part.model_fields_set})
            arrays.update(ctx.results[name].arrays)
    from harness.certifiers.results import falsified_bound

    falsified_bound(fields.get("certified") or {}, arrays)  # robust <= clean - |AA successes U falsified|
    prov = Provenance(
        harness_version=__version__,
        python=python_version(),
        packages=package_versions(),
        device=str(device),
        device_name=str(runtime.get("device_name") or device_name(device)),
        torch_threads=int(runtime.get("torch_threads") or torch.get_num_threads()),
        checkpoint_sha256=spec.model.checkpoint.sha256,
        submission_sha256=ctx.submission.yaml_sha256,
        results_sha256=ctx.submission.results_sha256,
        files_sha256=ctx.submission.files_sha256,  # the folder digest verified at load (harness.submission.manifest)
        data_source=ctx.data.source,
        seed=ctx.seed,
        batch_size=ctx.batch_size,
        started_at=started,
        finished_at=now(),
        stage_seconds={k: round(r.seconds, 3) for k, r in ctx.results.items()},
        resumed_stages=[k for k, r in ctx.results.items() if r.resumed],
        command=command,
        sandbox=runtime.get("sandbox"),
        **(distributed or {}),
    )
    try:
        record = ResultRecord(
            submission_id=spec.id, name=spec.name, dataset=spec.dataset,
            threat_model={"norm": spec.threat_model.norm, "eps": spec.threat_model.eps},
            n_examples=len(ctx.data), stages=[s for s in STAGE_ORDER if s in ctx.results],
            provenance=prov, **fields,
        )
    except Exception as e:  # a stage produced a field the record does not define: a harness bug
        raise HarnessError(f"internal error building the result record: {one_line(e, 300)}")
    return record, arrays
