"""The stage registry: the one list of the evaluation stages.

Every other place that needs the stages derives from :data:`STAGES`: their order
(:data:`STAGE_NAMES`), the record's ``stages`` field and the part of the record each stage writes
(:mod:`harness.record`), the modules the worker imports before its memory limit is set
(:mod:`harness.sandbox.worker`), how a stage splits into blocks (:mod:`harness.runner.schedule`,
:class:`harness.stages.base.Stage`) and the CLI's help. To add a stage: write its class (one module
under ``harness/stages/``), its record part (a sub-model in :mod:`harness.record`, also a base of
``ResultRecord``) and one :class:`StageEntry` here; :func:`check` (run at import) and
tests/unit/stages/test_stage_registry.py refuse an entry that lacks one of them.

This module imports nothing heavy (no torch, no numpy): :mod:`harness.record` and the CLI import it.
Stage classes are loaded lazily by their dotted path.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class StageEntry:
    #: the stage's name, as in ``--only``, the record's ``stages`` and the state folder
    name: str
    #: ``module:Class`` of the :class:`harness.stages.base.Stage` subclass
    stage: str
    #: the name of the stage's part of the record, a class in :mod:`harness.record`
    record_part: str
    #: modules the worker imports before it sets its memory limit (the stage's module first)
    preload: tuple[str, ...]
    #: True: the stage's work is per example, in blocks of ``batch_size`` examples; False: one unit
    #: of work over every example (FLOPs)
    per_example: bool
    #: one line for the CLI's help
    help: str

    @property
    def module(self) -> str:
        return self.stage.partition(":")[0]

    def load(self) -> type:
        """The stage class (imports its module, and with it torch)."""
        module, _, cls = self.stage.partition(":")
        return getattr(importlib.import_module(module), cls)


#: every stage, in the order they run when nothing they read says otherwise (harness.stages.ordered)
STAGES: tuple[StageEntry, ...] = (
    StageEntry("clean", "harness.stages.clean:CleanStage", "CleanPart", ("harness.stages.clean",), True,
               "clean accuracy"),
    StageEntry("flops", "harness.stages.flops:FlopsStage", "FlopsPart", ("harness.stages.flops", "fvcore.nn"), False,
               "parameters, inference and training FLOPs (one unit of work)"),
    StageEntry("certify", "harness.stages.certify:CertifyStage", "CertifyPart", ("harness.stages.certify",), True,
               "certified accuracy of each certifier the submission names"),
    StageEntry("autoattack", "harness.stages.autoattack:AutoAttackStage", "AutoAttackPart",
               ("harness.stages.autoattack", "pyautoattack"), True, "robust accuracy under AutoAttack"),
    StageEntry("diagnostics", "harness.stages.diagnostics:DiagnosticsStage", "DiagnosticsPart",
               ("harness.stages.diagnostics", "harness.diagnostics"), True,
               "trust diagnostics: weaker attacks, gradient masking, local Lipschitz"),
)


def check(entries: tuple[StageEntry, ...]) -> None:
    """Raise ``ValueError`` naming the first entry that is incomplete: a name twice, no stage class
    path, no record part, or no preload (the preload must name the stage's own module)."""
    seen: set[str] = set()
    for e in entries:
        if not _IDENT.match(e.name or "") or e.name in seen:
            raise ValueError(f"stage {e.name!r}: the name is empty, not an identifier, or registered twice")
        seen.add(e.name)
        module, _, cls = (e.stage or "").partition(":")
        if not _MODULE.match(module) or not _IDENT.match(cls):
            raise ValueError(f"stage {e.name!r}: the stage class is not a 'module:Class' path: {e.stage!r}")
        if not _IDENT.match(e.record_part or ""):
            raise ValueError(f"stage {e.name!r}: no record part (a class of harness.record)")
        if not e.preload or not all(isinstance(m, str) and _MODULE.match(m) for m in e.preload):
            raise ValueError(f"stage {e.name!r}: no preload (the modules the worker imports first)")
        if e.preload[0] != module:
            raise ValueError(f"stage {e.name!r}: the preload must start with the stage's module {module}")
        if not isinstance(e.per_example, bool):
            raise ValueError(f"stage {e.name!r}: per_example must be True or False")
        if not (e.help or "").strip():
            raise ValueError(f"stage {e.name!r}: no help line")


check(STAGES)

#: the stage names, in registry order
STAGE_NAMES: tuple[str, ...] = tuple(e.name for e in STAGES)
_BY_NAME = {e.name: e for e in STAGES}


def entry(name: str) -> StageEntry:
    """The registry entry of stage ``name`` (KeyError if there is none)."""
    return _BY_NAME[name]


def help_text() -> str:
    """The stages, one line each, for the CLI's help."""
    return "\n".join(f"  {e.name:<12} {e.help}" for e in STAGES)
