"""The evaluation stages, and the order they run in.

Order comes from what a stage reads (:class:`Stage`'s ``reads``: per-example arrays of the same
block, needed by ``map``; ``uses``: reduced results, needed by ``reduce``): ``autoattack`` reads
``clean`` (skips misclassified points) and ``certify`` (skips certified points); ``diagnostics``
uses ``clean`` (its ladder counts only correct points) and ``autoattack`` (the attack gap).
:func:`ordered` sorts stages topologically by those edges, ties broken by :data:`STAGE_ORDER`.

The stages themselves are listed once, in :mod:`harness.stages.registry`. Importing this package
imports no torch: the stage interface (:mod:`harness.stages.base`) and the stage classes load on
first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from harness.core.errors import HarnessError

from .registry import STAGE_NAMES, entry

if TYPE_CHECKING:
    from .base import BlockResult, EvalContext, EvalOptions, Stage, StageResult

#: the stages in registry order (harness.stages.registry)
STAGE_ORDER = STAGE_NAMES
_BASE_NAMES = ("BlockResult", "EvalContext", "EvalOptions", "Stage", "StageResult")


def __getattr__(name: str) -> Any:
    if name in _BASE_NAMES:
        return getattr(importlib.import_module(f"{__name__}.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def stage_class(name: str) -> type[Stage]:
    return entry(name).load()


def get_stage(name: str) -> Stage:
    return stage_class(name)()


def depends_on(name: str) -> tuple[str, ...]:
    """The stages ``name`` must come after: those it reads (per block) and uses (reduced)."""
    cls = stage_class(name)
    return tuple(dict.fromkeys(cls.reads + cls.uses))


def ordered(names: list[str] | tuple[str, ...] = STAGE_ORDER) -> list[str]:
    """``names`` in an order where every stage comes after the stages it reads or uses (Kahn's
    algorithm; ties in :data:`STAGE_ORDER` order). Raises on a cycle (a programming error)."""
    todo = [s for s in STAGE_ORDER if s in set(names)]
    out: list[str] = []
    while todo:
        ready = [s for s in todo if not any(d in todo for d in depends_on(s))]
        if not ready:
            raise RuntimeError(f"stages {todo} read each other in a cycle")
        out.append(ready[0])
        todo.remove(ready[0])
    return out


def _parse(value: str | None, flag: str) -> list[str]:
    if value is None:
        return []
    names = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGE_ORDER]
    if unknown:
        raise HarnessError(f"{flag}: unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGE_ORDER)}")
    return names


def select_stages(only: str | None = None, skip: str | None = None) -> list[str]:
    only_l, skip_l = _parse(only, "--only"), _parse(skip, "--skip")
    if only_l and skip_l:
        raise HarnessError("--only and --skip cannot be used together")
    chosen = only_l or [s for s in STAGE_ORDER if s not in skip_l]
    return ordered(chosen)


__all__ = ["BlockResult", "EvalContext", "EvalOptions", "Stage", "StageResult", "STAGE_ORDER", "depends_on",
           "get_stage", "ordered", "select_stages", "stage_class"]
