"""The evaluation stages, in the order they run.

Order matters only through what a stage reads: ``autoattack`` reads ``clean`` (skips misclassified
points) and ``certify`` (skips certified points); ``diagnostics`` reads ``autoattack``.
"""
from __future__ import annotations

import importlib

from ..errors import HarnessError
from .base import EvalContext, EvalOptions, Stage, StageResult

STAGE_ORDER = ("clean", "flops", "certify", "autoattack", "diagnostics")
_CLASSES = {
    "clean": ("clean", "CleanStage"),
    "flops": ("flops", "FlopsStage"),
    "certify": ("certify", "CertifyStage"),
    "autoattack": ("autoattack", "AutoAttackStage"),
    "diagnostics": ("diagnostics", "DiagnosticsStage"),
}


def get_stage(name: str) -> Stage:
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)()


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
    return [s for s in STAGE_ORDER if s in chosen]


__all__ = ["EvalContext", "EvalOptions", "Stage", "StageResult", "STAGE_ORDER", "get_stage", "select_stages"]
