"""The stage interface: every evaluation step is one module with one ``run(ctx)``.

A stage reads the loaded model, the data, the options and the results of earlier stages from an
:class:`EvalContext`, and returns a :class:`StageResult`:

- ``summary``: JSON-serialisable fields that go into the result record *at top level* under the
  names the record defines (:mod:`harness.record`), e.g. ``{"clean_accuracy": ..., ...}``;
- ``arrays``: per-example arrays of length N (keyed by name, aligned with ``ctx.data.index``),
  saved into ``<id>.examples.npz``;
- ``seconds``: wall time, filled in by the pipeline.

A finished stage is cached in the run's state folder, so an interrupted evaluation resumes without
redoing it. A stage that needs finer-grained resumption (AutoAttack: one attack at a time) keeps its
own files under ``ctx.stage_dir(name)``, written atomically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..data import EvalData
from ..models import LoadedModel
from ..submission import LoadedSubmission, Submission


@dataclass
class EvalOptions:
    device: str = "auto"
    batch_size: int | None = None  # None: the submission's evaluation.batch_size
    n_examples: int | None = None  # None: the submission's evaluation.n_examples
    data_dir: Path | None = None
    train_data: Path | None = None  # an .npz of training images, for train/test diagnostics
    progress: bool = True
    #: "worker": model loading and stages run in a sandboxed child process (harness.worker);
    #: "bwrap": the same worker inside a bubblewrap jail; "none": in this process, without limits
    #: (trusted test fixtures and benchmarks only; the CLI never uses it)
    sandbox: str = "worker"
    trust_code: bool = False  # allow TorchScript (it can read and write any file): own models only
    #: maintainer overrides of the submission's evaluation.limits (None: the submission's)
    memory_limit: int | None = None  # bytes; 0 = no limit
    stage_timeout: float | None = None  # wall-clock seconds per stage
    cpu_limit: float | None = None  # CPU seconds per stage


@dataclass
class StageResult:
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    resumed: bool = False


@dataclass
class EvalContext:
    submission: LoadedSubmission
    model: LoadedModel | None  # None in the supervisor, which never loads the model
    data: EvalData
    options: EvalOptions
    state_dir: Path
    results: dict[str, StageResult] = field(default_factory=dict)

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

    def stage_dir(self, name: str) -> Path:
        d = self.state_dir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def array(self, stage: str, name: str) -> np.ndarray | None:
        """A per-example array from an earlier stage, or None if that stage did not run."""
        res = self.results.get(stage)
        return None if res is None else res.arrays.get(name)

    def progress(self, iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it"):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False,
                    disable=not self.options.progress, dynamic_ncols=True)


class Stage(Protocol):
    name: str
    #: stages whose results this one reads when they are selected (they run first)
    reads: tuple[str, ...]

    def run(self, ctx: EvalContext) -> StageResult: ...
