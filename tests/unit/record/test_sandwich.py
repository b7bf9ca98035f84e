"""certified <= robust <= clean is checked example by example on every run, and a violation fails
loudly (no record is written, the computed stages stay in the run state)."""
from __future__ import annotations

import numpy as np
import pytest

from harness.core.errors import SandwichViolation
from harness.runner.evaluate import check_sandwich
from harness.stages.base import EvalContext, StageResult


def _ctx(**arrays_by_stage) -> EvalContext:
    ctx = EvalContext(submission=None, model=None, data=None, options=None, state_dir=None)  # type: ignore[arg-type]
    for stage, arrays in arrays_by_stage.items():
        ctx.results[stage] = StageResult({}, {k: np.array(v) for k, v in arrays.items()})
    return ctx


def test_consistent_results_pass():
    check_sandwich(_ctx(
        clean={"clean_correct": [1, 1, 1, 0]},
        certify={"certified_ibp": [1, 0, 0, 0], "radius_ibp": [0.3, 0.1, 0, 0]},
        autoattack={"autoattack_robust": [1, 1, 0, 0]},
        diagnostics={"diagnostics_pgd_robust": [1, 1, 1, 0]},
    ))


@pytest.mark.parametrize("stages, needle", [
    (dict(clean={"clean_correct": [1, 1]}, certify={"certified_crown": [1, 0]},
          autoattack={"autoattack_robust": [0, 0]}),
          "certified_crown certifies examples [0] that autoattack/autoattack_robust broke"),
    (dict(clean={"clean_correct": [1, 0]}, certify={"certified_ibp": [0, 1]}), "certifies misclassified examples [1]"),
    (dict(clean={"clean_correct": [1, 0]}, autoattack={"autoattack_robust": [0, 1]}),
     "marks misclassified examples [1] robust"),
    (dict(clean={"clean_correct": [1, 1]}, certify={"certified_ibp": [1, 1]},
          diagnostics={"diagnostics_pgd_robust": [1, 0]}), "that diagnostics/diagnostics_pgd_robust broke"),
])
def test_violations_fail_loudly(stages, needle):
    with pytest.raises(SandwichViolation) as e:
        check_sandwich(_ctx(**stages))
    assert needle in str(e.value)


def test_probabilistic_smoothing_is_not_part_of_the_sandwich():
    # randomized smoothing certifies the smoothed classifier, not the base model that was attacked
    check_sandwich(_ctx(clean={"clean_correct": [1]}, certify={"certified_smoothing": [1]},
                        autoattack={"autoattack_robust": [0]}))


def test_lipschitz_certificates_are_part_of_the_sandwich():
    # lipschitz is a sound certifier in the registry: an example it certifies that an attack broke
    # means a bug in the bound or the attack
    with pytest.raises(SandwichViolation, match=r"certified_lipschitz certifies examples \[1\] that "
                                                r"autoattack/autoattack_robust broke"):
        check_sandwich(_ctx(clean={"clean_correct": [1, 1, 1]},
                            certify={"certified_lipschitz": [0, 1, 0], "radius_lipschitz": [0, 0.7, 0]},
                            autoattack={"autoattack_robust": [1, 0, 0]}))


def test_a_registered_plug_in_certifier_is_part_of_the_sandwich():
    from harness import certifiers
    from harness.certifiers import Certifier

    class Plugin(Certifier):
        name, sound, norms = "test-plugin", True, ("L2",)

    certifiers.register(Plugin())
    try:
        with pytest.raises(SandwichViolation, match="certified_test-plugin certifies misclassified examples"):
            check_sandwich(_ctx(clean={"clean_correct": [1, 0]}, certify={"certified_test-plugin": [0, 1]}))
    finally:
        certifiers.unregister("test-plugin")
    # unregistered, the same array is no certificate the harness knows: not checked
    check_sandwich(_ctx(clean={"clean_correct": [1, 0]}, certify={"certified_test-plugin": [0, 1]}))
