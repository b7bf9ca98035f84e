"""The evaluation stages, and the order they run in.

Order comes from what a stage reads (:class:`Stage`'s ``reads``: per-example arrays of the same
block, needed by ``map``; ``uses``: reduced results, needed by ``reduce``): ``autoattack`` reads
``clean`` (skips misclassified points) and ``certify`` (skips certified points); ``diagnostics``
uses ``clean`` (its ladder counts only correct points) and ``autoattack`` (the attack gap).
:func:`ordered` sorts stages topologically by those edges, ties broken by :data:`STAGE_ORDER`.
"""
from __future__ import annotations

import importlib

from ..errors import HarnessError
from .base import BlockResult, EvalContext, EvalOptions, Stage, StageResult

STAGE_ORDER = ("clean", "flops", "certify", "autoattack", "diagnostics")
_CLASSES = {
    "clean": ("clean", "CleanStage"),
    "flops": ("flops", "FlopsStage"),
    "certify": ("certify", "CertifyStage"),
    "autoattack": ("autoattack", "AutoAttackStage"),
    "diagnostics": ("diagnostics", "DiagnosticsStage"),
}


def stage_class(name: str) -> type[Stage]:
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


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
