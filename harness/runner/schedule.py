"""Who computes which block: the dynamic queue every worker pulls from, and the supervisor's view of
the shared state folder (what is done, gathering the blocks of a stage).

A run has a :class:`Plan`, made once by rank 0 and sent to every rank: the attempt number
(generation), the stages to compute and the stages whose per-example arrays exist or will exist.
Each worker then loops (:func:`run_blocks`): it takes the first block, in stage order, that is not
done, not claimed in this attempt, and whose inputs are ready (block b of every stage it reads), claims
it with an exclusive file and computes it. A fast rank simply takes more blocks; a rank that has
nothing left to claim exits while the others finish theirs. A block that a rank claimed and did not
finish (it died) is free again in the next attempt (a rerun, or a ``torchrun --max-restarts``
restart), as claims belong to an attempt.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.core.errors import HarnessError
from harness.sandbox.job import Aborted
from harness.stages.blocks import StageStore, first_error, make_block, unit_count
from harness.stages.registry import entry

#: seconds between two looks at the state folder while a worker or a supervisor waits
POLL_S = 0.2


@dataclass
class Plan:
    n: int
    batch_size: int
    seed: int
    generation: int
    todo: list[str]  # stages to compute, in order (selected and not finished before)
    available: list[str]  # stages whose per-example arrays exist or will exist in this run
    world_size: int = 1

    def count(self, stage: str) -> int:
        """How many blocks (units of work) ``stage`` has."""
        return unit_count(self.n, self.batch_size, entry(stage).per_example)

    def block(self, stage: str, b: int):
        return make_block(self.n, self.batch_size, b, self.seed, per_example=entry(stage).per_example)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        return cls(**d)




def reduced_paths(state_dir: Path, stage: str) -> tuple[Path, Path]:
    d = Path(state_dir) / "stages"
    return d / f"{stage}.json", d / f"{stage}.npz"


def is_reduced(state_dir: Path, stage: str) -> bool:
    j, z = reduced_paths(state_dir, stage)
    return j.exists() and z.exists()


def stage_finished(state_dir: Path, stage: str, plan: Plan) -> bool:
    """Reduced already, or every block present."""
    return is_reduced(state_dir, stage) or len(StageStore(state_dir, stage).done()) >= plan.count(stage)


def other_rank_failed(state_dir: Path, generation: int, rank: int) -> None:
    """Raise :class:`Aborted` if another rank of this attempt reported an error."""
    first = first_error(state_dir, generation, exclude=rank)
    if first is not None:
        r, msg, t = first
        raise Aborted(f"stopped because rank {r} failed: {' '.join(msg.split())}", after=t)


# ------------------------------------------------------------------------------------ the worker
class _Inputs:
    """Per-example arrays of the stages a stage reads, for one block: from the reduced stage when
    it exists (a stage finished in an earlier run), else from that block's file."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.reduced: dict[str, dict[str, np.ndarray]] = {}

    def ready(self, dep: str, b: int) -> bool:
        return is_reduced(self.state_dir, dep) or StageStore(self.state_dir, dep).is_done(b)

    def get(self, dep: str, block) -> dict[str, np.ndarray]:
        if dep not in self.reduced and is_reduced(self.state_dir, dep):
            with np.load(reduced_paths(self.state_dir, dep)[1], allow_pickle=False) as z:
                self.reduced[dep] = {k: z[k] for k in z.files if not k.startswith("gallery_")}
        if dep in self.reduced:
            return {k: v[block.slice] for k, v in self.reduced[dep].items()}
        arrays, _ = StageStore(self.state_dir, dep).load(block.index, len(block))
        return {k: v for k, v in arrays.items() if not k.startswith("gallery_")}


def run_blocks(ctx, plan: Plan, *, on_start: Callable[[str, int], None] | None = None,
               on_done: Callable[[str, int, float], None] | None = None,
               on_wait: Callable[[], None] | None = None, poll_s: float = POLL_S) -> int:
    """Compute blocks of ``plan.todo`` until none is left to claim (the worker's loop; also run in
    process). Returns how many blocks this process computed. Raises :class:`Aborted` when another
    rank of the attempt reported an error."""
    import torch

    from harness.stages import get_stage

    stages = {name: get_stage(name) for name in plan.todo}
    prepared: dict[str, Any] = {}
    inputs = _Inputs(ctx.state_dir)
    computed = 0
    waiting = False
    while True:
        other_rank_failed(ctx.state_dir, plan.generation, ctx.rank)
        unit = None
        open_units = False
        for name in plan.todo:
            store = ctx.store(name)
            done = store.done()
            reads = [d for d in stages[name].reads if d in plan.available]
            for b in range(plan.count(name)):
                if b in done or store.is_claimed(plan.generation, b):
                    continue
                open_units = True
                if all(inputs.ready(d, b) for d in reads) and store.claim(plan.generation, b, ctx.rank):
                    unit = (name, b)
                    break
            if unit is not None:
                break
        if unit is None:
            if not open_units:
                return computed  # every block is done or being computed by another rank
            if on_wait is not None and not waiting:
                on_wait()
            waiting = True
            time.sleep(poll_s)
            continue
        waiting = False
        name, b = unit
        stage = stages[name]
        if on_start is not None:
            on_start(name, b)
        t0 = time.perf_counter()
        started = time.time()
        if name not in prepared:
            prepared[name] = stage.prepare(ctx)
        block = plan.block(name, b)
        for dep in stage.reads:
            if dep in plan.available:
                block.inputs[dep] = inputs.get(dep, block)
        torch.manual_seed(block.seed)  # a random model's own draws, too, depend on the block only
        res = stage.map(ctx, block, prepared[name])
        for key, arr in res.arrays.items():
            if not key.startswith("gallery_") and np.shape(arr)[:1] != (len(block),):
                raise HarnessError(f"internal error: stage {name} returned {key} of shape {np.shape(arr)} "
                                   f"for block {b} of {len(block)} examples")
        seconds = time.perf_counter() - t0
        ctx.store(name).save(b, res.arrays, {"extras": res.extras, "seconds": seconds, "rank": ctx.rank,
                                             "generation": plan.generation, "started": started,
                                             "finished": time.time()})
        computed += 1
        if on_done is not None:
            on_done(name, b, seconds)


# -------------------------------------------------------------------------------- the supervisor
def gather(state_dir: Path, stage: str, plan: Plan) -> tuple[list[dict[str, np.ndarray]], list[dict[str, Any]],
                                                             list[dict[str, Any]]]:
    """Every block of ``stage``, read back as untrusted data: (arrays per block, extras per block,
    meta per block). Raises a one-line error if a block is missing or malformed."""
    store = StageStore(state_dir, stage)
    parts, extras, metas = [], [], []
    for b in range(plan.count(stage)):
        if not store.is_done(b):
            raise HarnessError(f"block {b} of stage {stage} is missing from {state_dir}")
        block = plan.block(stage, b)
        arrays, meta = store.load(b, len(block))
        if not isinstance(meta.get("extras"), dict) or not isinstance(meta.get("seconds"), (int, float)):
            raise HarnessError(f"block {b} of stage {stage} in {state_dir} is malformed; run again with --restart")
        parts.append(arrays)
        extras.append(meta["extras"])
        metas.append(meta)
    return parts, extras, metas


def snapshot(state_dir: Path, plan: Plan) -> tuple[float, dict[str, int]]:
    """(units done, counting the finished share of blocks in progress; blocks done per stage) of
    ``plan.todo``, read from the state folder: what rank 0's progress bar shows."""
    import json

    total = 0.0
    per_stage: dict[str, int] = {}
    for name in plan.todo:
        if is_reduced(state_dir, name):
            per_stage[name] = plan.count(name)
            total += plan.count(name)
            continue
        store = StageStore(state_dir, name)
        done = store.done()
        per_stage[name] = len(done)
        total += len(done)
        if store.blocks_dir.is_dir():
            for p in store.blocks_dir.glob("*.progress.json"):
                b = p.name.split(".", 1)[0]
                if b.isdigit() and int(b) not in done:
                    try:
                        frac = float(json.loads(p.read_text()).get("fraction", 0.0))
                    except (OSError, ValueError, AttributeError, TypeError):
                        continue
                    total += min(max(frac, 0.0), 0.99)
    return total, per_stage
