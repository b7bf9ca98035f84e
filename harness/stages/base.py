"""The stage interface: every evaluation step is one module with a ``map`` and a ``reduce``.

The N examples are cut into fixed blocks of ``batch_size`` consecutive indices (:mod:`harness.stages.blocks`).

- ``prepare(ctx)``: done once per worker before its first block of the stage (e.g. building the
  bound graph); returns anything ``map`` needs.
- ``map(ctx, block, prepared) -> BlockResult``: the per-example work on one block, with the loaded
  model: arrays of the block's length (plus a few ``gallery_*`` entries) and JSON extras. Random
  draws use ``block.seed`` (or one seed per example), so a block's result does not depend on which
  process computes it or what it computed before. ``block.inputs`` holds the per-example arrays of
  the stages in ``reads`` for the same block.
- ``reduce(ctx, arrays, extras) -> StageResult``: the summary, computed once from the full-length
  arrays (the blocks concatenated in order) and the list of the blocks' extras, without the model
  (``ctx.model`` is None): it runs in the supervisor. ``ctx.results`` holds the reduced results of the
  stages in ``uses``.

A ``StageResult`` has

- ``summary``: JSON fields of the stage's own part of the result record (:data:`harness.record.STAGE_PARTS`:
  a typed sub-model per stage, so no stage can write another's field);
- ``arrays``: per-example arrays of length N (keyed by name, aligned with ``ctx.data.index``),
  saved into ``<id>.examples.npz``;
- ``seconds``: the work's time (the blocks' seconds added up).

``reads`` and ``uses`` order the stages (:func:`harness.stages.ordered`) and define when a block
can run: block b of a stage waits for block b of every stage it reads that is part of the run.
Finished blocks, and finished stages, are kept in the run's state folder, so an interrupted
evaluation redoes only what was unfinished; a stage that needs finer-grained resumption within a
block (AutoAttack: one attack at a time) keeps ``<state>/<stage>/blocks/<b>.progress.*``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.loaders import EvalData
from harness.models.load import LoadedModel
from harness.stages.blocks import Block, StageStore, make_block, unit_count
from harness.submission.load import LoadedSubmission
from harness.submission.schema import Submission

from .registry import entry


@dataclass
class EvalOptions:
    device: str = "auto"
    batch_size: int | None = None  # None: the submission's evaluation.batch_size
    n_examples: int | None = None  # None: the submission's evaluation.n_examples
    data_dir: Path | None = None
    train_data: Path | None = None  # an .npz of training images, for train/test diagnostics
    progress: bool = True
    #: "worker": model loading and stages run in a sandboxed child process (harness.sandbox.worker);
    #: "bwrap": the same worker inside a bubblewrap jail; "none": in this process, without limits
    #: (trusted test fixtures and benchmarks only; the CLI never uses it)
    sandbox: str = "worker"
    trust_code: bool = False  # allow TorchScript (it can read and write any file): own models only
    #: maintainer overrides of the submission's evaluation.limits (None: the submission's)
    memory_limit: int | None = None  # bytes; 0 = no limit
    stage_timeout: float | None = None  # wall-clock seconds per stage
    cpu_limit: float | None = None  # CPU seconds per stage
    #: maintainer cap on the complete certifier's seconds per example (--certify-budget; None: the
    #: environment's ROBUST_FRONTIER_MAX_CERTIFY_BUDGET_S, else the default, harness.core.settings.certify_budget_cap)
    certify_budget: float | None = None


@dataclass
class StageResult:
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    resumed: bool = False


@dataclass
class BlockResult:
    """What ``map`` returns for one block: per-example arrays of the block's length (keys starting
    with ``gallery_`` may have any length) and JSON-serialisable extras for ``reduce``."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalContext:
    submission: LoadedSubmission
    model: LoadedModel | None  # None in the supervisor, which never loads the model
    data: EvalData
    options: EvalOptions
    state_dir: Path
    results: dict[str, StageResult] = field(default_factory=dict)
    #: torchrun: this process's rank and the number of ranks sharing the work
    rank: int = 0
    world_size: int = 1

    @property
    def spec(self) -> Submission:
        return self.submission.spec

    @property
    def batch_size(self) -> int:
        return self.options.batch_size or self.spec.evaluation.batch_size

    @property
    def seed(self) -> int:
        return self.spec.evaluation.seed

    @property
    def eps(self) -> float:
        return self.spec.threat_model.eps

    @property
    def norm(self) -> str:
        return self.spec.threat_model.norm

    def store(self, name: str) -> StageStore:
        return StageStore(self.state_dir, name)

    def array(self, stage: str, name: str) -> np.ndarray | None:
        """A per-example array from an earlier stage's reduced result, or None if it did not run."""
        res = self.results.get(stage)
        return None if res is None else res.arrays.get(name)

    def progress(self, iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it"):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False,
                    disable=not self.options.progress, dynamic_ncols=True)


class Stage:
    """Base class of the stages (see the module docstring)."""

    #: the stage's name in the registry (harness.stages.registry), which says how it splits into blocks
    name: str = ""
    #: stages whose per-example arrays ``map`` needs for the same block (they come first)
    reads: tuple[str, ...] = ()
    #: stages whose reduced results ``reduce`` uses when they are part of the run (they come first)
    uses: tuple[str, ...] = ()
    @property
    def per_example(self) -> bool:
        """False: the stage is one unit of work, not per example (FLOPs); from the registry."""
        return entry(self.name).per_example

    def blocks(self, n: int, batch_size: int) -> int:
        return unit_count(n, batch_size, self.per_example)

    def prepare(self, ctx: EvalContext) -> Any:
        return None

    def map(self, ctx: EvalContext, block: Block, prepared: Any) -> BlockResult:  # pragma: no cover
        raise NotImplementedError

    def reduce(self, ctx: EvalContext, arrays: dict[str, np.ndarray],
               extras: list[dict[str, Any]]) -> StageResult:  # pragma: no cover
        raise NotImplementedError

    def run(self, ctx: EvalContext) -> StageResult:
        """Map every block in order in this process, then reduce: the same result the scheduler
        (:mod:`harness.runner.schedule`) gets from any number of processes. For tests and trusted
        in-process use; ``ctx.results`` provides the per-example arrays of the stages read."""
        prepared = self.prepare(ctx)
        n, bs = len(ctx.data), ctx.batch_size
        parts: list[dict[str, np.ndarray]] = []
        extras: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        for b in range(self.blocks(n, bs)):
            block = make_block(n, bs, b, ctx.seed, per_example=self.per_example)
            for dep in self.reads:
                if dep in ctx.results:
                    block.inputs[dep] = {k: v[block.slice] for k, v in ctx.results[dep].arrays.items()
                                         if not k.startswith("gallery_")}
            res = self.map(ctx, block, prepared)
            parts.append(res.arrays)
            extras.append(res.extras)
        result = self.reduce(ctx, concat_blocks(parts), extras)
        result.seconds = time.perf_counter() - t0
        return result


def concat_blocks(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The blocks' arrays, concatenated in block order; a key missing from some block is left out
    (a method skipped part of the way, say), and the stage's reduce decides what that means."""
    if not parts:
        return {}
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) if parts[0][k].ndim else parts[0][k]
            for k in keys}
