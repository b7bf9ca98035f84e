"""The stage registry (harness.stages.registry) is the one list of stages: a stage added without its
record part, its preload or its class is refused, and every other place derives from the registry."""
from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import typing

import pytest

from harness.stages import registry
from harness.stages.registry import STAGE_NAMES, STAGES, StageEntry, check

GOOD = StageEntry("toy", "harness.stages.clean:CleanStage", "CleanPart", ("harness.stages.clean",), True, "a toy")


def test_a_complete_entry_passes():
    check((*STAGES, GOOD))


@pytest.mark.parametrize("change, words", [
    ({"record_part": ""}, "no record part"),
    ({"preload": ()}, "no preload"),
    ({"preload": ("fvcore.nn",)}, "must start with the stage's module"),
    ({"stage": "harness.stages.clean"}, "not a 'module:Class' path"),
    ({"name": "clean"}, "registered twice"),
    ({"per_example": 1}, "per_example"),
    ({"help": " "}, "no help line"),
])
def test_an_incomplete_entry_is_refused(change, words):
    with pytest.raises(ValueError, match=words):
        check((*STAGES, dataclasses.replace(GOOD, **change)))


def test_a_stage_without_its_part_in_the_record_is_refused(monkeypatch):
    """record.py builds STAGE_PARTS from the registry and checks ResultRecord has every part."""
    import harness.record.schema as record

    monkeypatch.setattr(registry, "STAGES", (*STAGES, dataclasses.replace(GOOD, record_part="ToyPart")))
    monkeypatch.setattr(record, "STAGES", registry.STAGES)
    with pytest.raises(AssertionError, match="record part ToyPart"):
        record._stage_parts()

    class ToyPart(record._Rec):
        toy_accuracy: float | None = None

    monkeypatch.setattr(record, "ToyPart", ToyPart, raising=False)
    monkeypatch.setattr(record, "STAGE_PARTS", record._stage_parts())
    with pytest.raises(AssertionError, match=r"ResultRecord lacks the record part of stage\(s\) toy \(ToyPart\)"):
        record._check_record_has_parts()


def test_every_registered_stage_is_complete():
    import harness.record.schema as record

    assert [e.name for e in STAGES] == list(STAGE_NAMES)
    for e in STAGES:
        part = getattr(record, e.record_part)
        assert record.STAGE_PARTS[e.name] is part
        assert issubclass(record.ResultRecord, part), e.name
        cls = e.load()
        assert cls.name == e.name and cls().per_example is e.per_example
        for module in e.preload:
            importlib.import_module(module)
    # the record's stages field is exactly the registry's names
    (item,) = typing.get_args(record.RecordHead.model_fields["stages"].annotation)
    assert typing.get_args(item) == STAGE_NAMES
    assert record.RecordHead.model_json_schema()["properties"]["stages"]["items"]["enum"] == list(STAGE_NAMES)


def test_the_per_example_rule_is_the_registrys():
    from harness.runner.schedule import Plan
    from harness.stages import get_stage
    from harness.stages.blocks import unit_count

    plan = Plan(n=10, batch_size=4, seed=0, generation=1, todo=list(STAGE_NAMES), available=list(STAGE_NAMES))
    for e in STAGES:
        want = 3 if e.per_example else 1
        assert plan.count(e.name) == get_stage(e.name).blocks(10, 4) == unit_count(10, 4, e.per_example) == want
        assert len(plan.block(e.name, 0)) == (4 if e.per_example else 10)
    assert not registry.entry("flops").per_example


def test_cli_help_and_errors_name_the_registrys_stages():
    from harness.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["eval"].format_help()
    for e in STAGES:
        assert e.name in help_text and e.help in " ".join(help_text.split())
    assert ",".join(STAGE_NAMES) in " ".join(help_text.split())


def test_the_registry_and_the_record_import_no_torch():
    code = "import sys, harness.stages.registry, harness.record, harness.stages; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
