"""scripts/compare_records.py: the comparison itself (records and examples files), on hand-made cases.

The script is loaded from its path (it is not part of the package); nothing here runs an evaluation.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "compare_records.py"


@pytest.fixture(scope="module")
def cr():
    spec = importlib.util.spec_from_file_location("compare_records", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


RECORD = {
    "schema_version": 1,
    "submission_id": "toy",
    "n_examples": 4,
    "stages": ["clean", "certify", "autoattack"],
    "clean_accuracy": 0.75,
    "robust_accuracy": 0.5,
    "robust_accuracy_ci95": [0.0676, 0.9324],
    "autoattack": {"n_attacked": 3, "seconds_per_attack": {"apgd-ce": 1.5}, "seconds_saved_by_certify_first": 0.0,
                   "accuracy_after": {"clean": 0.75, "apgd-ce": 0.5}},
    "certified": {"ibp": {"certified_accuracy": 0.25, "seconds": 0.3, "probabilistic": False,
                          "curve": [[0.0, 0.75], [0.1, 0.25]], "acr": float("nan")}},
    "flops_error": None,
    "provenance": {"seed": 0, "started_at": "2026-01-01T00:00:00+00:00", "stage_seconds": {"clean": 0.1},
                   "checkpoint_sha256": "ab" * 32, "command": "harness eval x"},
    "examples_file": "toy.examples.npz",
    "signature": {"algorithm": "ed25519", "value": "AAAA", "signed_at": "2026-01-02T00:00:00Z"},
}

ARRAYS = {
    "index": np.arange(4, dtype=np.int64),
    "clean_correct": np.array([True, True, True, False]),
    "radius_ibp": np.array([0.1, np.nan, 0.0, 0.2], dtype=np.float32),
    "gallery_adv": np.zeros((2, 1, 3, 3), dtype=np.uint8),
}


def rec(**edits):
    r = copy.deepcopy(RECORD)
    for path, value in edits.items():
        *parents, last = path.split("__")
        d = r
        for p in parents:
            d = d[p]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return r


def arrays(**edits):
    a = {k: v.copy() for k, v in ARRAYS.items()}
    a.update(edits)
    return a


def test_identical_records_and_arrays_pass(cr):
    ignored: set[str] = set()
    assert cr.compare_json(rec(), rec(), ignored=ignored) == []
    assert cr.compare_arrays(arrays(), arrays()) == []  # radius_ibp holds a NaN: NaN equals NaN
    assert {"provenance", "signature", "seconds", "seconds_per_attack"} <= ignored


def test_timing_and_provenance_only_changes_pass(cr):
    after = rec(autoattack__seconds_per_attack={"apgd-ce": 99.0, "apgd-t": 3.0},
                autoattack__seconds_saved_by_certify_first=7.0, certified__ibp__seconds=12.0,
                provenance={"seed": 1, "command": "something else", "torch": "9"},
                signature={"value": "BBBB"})
    assert cr.compare_json(rec(), after) == []
    # a timing key present on one side only is skipped too, as are provenance and signature blocks
    assert cr.compare_json(rec(), rec(certified__ibp__seconds=KeyError, provenance=KeyError, signature=KeyError)) == []


@pytest.mark.parametrize("after, needle", [
    (rec(robust_accuracy=0.25), "robust_accuracy: 0.5 -> 0.25"),
    (rec(robust_accuracy=0.5000000000000001), "robust_accuracy"),           # floats compare exactly
    (rec(autoattack__accuracy_after__clean=0.5), "autoattack.accuracy_after.clean"),
    (rec(new_field=1), "new_field: added"),                                  # an added key
    (rec(autoattack__extra={"seconds_x": 1}), "autoattack.extra: added"),   # unlisted names are compared
    (rec(flops_error=KeyError), "flops_error: removed"),
    (rec(n_examples=4.0), "n_examples: int 4 -> float 4.0"),                 # JSON type, not just ==
    (rec(certified__ibp__probabilistic=0), "certified.ibp.probabilistic: bool"),
    (rec(certified__ibp__acr=0.1), "certified.ibp.acr: NaN -> 0.1"),
    (rec(certified__ibp__curve=[[0.0, 0.75]]), "certified.ibp.curve: length 2 -> 1"),
    (rec(stages=["clean", "autoattack", "certify"]), "stages[1]"),
])
def test_record_changes_fail(cr, after, needle):
    diffs = cr.compare_json(rec(), after)
    assert diffs, after
    assert any(needle in d for d in diffs), diffs


def test_provenance_is_ignored_only_at_the_top(cr):
    diffs = cr.compare_json(rec(autoattack__provenance=1), rec(autoattack__provenance=2))
    assert diffs == ["autoattack.provenance: 1 -> 2"]


@pytest.mark.parametrize("after, needle", [
    (arrays(radius_ibp=np.array([0.1, np.nan, 0.0, 0.25], dtype=np.float32)), "npz[radius_ibp]: 1 of 4 values differ"),
    (arrays(radius_ibp=np.array([0.1, 0.5, 0.0, 0.2], dtype=np.float32)), "first at 1"),        # NaN -> number
    (arrays(clean_correct=np.array([True, False, True, False])), "npz[clean_correct]: 1 of 4"),
    (arrays(index=np.arange(4, dtype=np.int32)), "npz[index]: dtype int64 -> int32"),         # same values
    (arrays(radius_ibp=ARRAYS["radius_ibp"].astype(np.float64)), "dtype float32 -> float64"),
    (arrays(index=np.arange(5, dtype=np.int64)), "npz[index]: shape (4,) -> (5,)"),
    (arrays(gallery_adv=np.ones((2, 1, 3, 3), dtype=np.uint8)), "npz[gallery_adv]: 18 of 18"),
    (arrays(extra=np.zeros(4)), "npz[extra]: added"),
    ({k: v for k, v in ARRAYS.items() if k != "index"}, "npz[index]: removed"),
])
def test_array_changes_fail(cr, after, needle):
    diffs = cr.compare_arrays(arrays(), after)
    assert any(needle in d for d in diffs), diffs


def test_compare_outputs_reads_both_files(cr, tmp_path):
    def write(folder, record, arrs):
        folder.mkdir()
        (folder / "toy.json").write_text(json.dumps(record))
        np.savez(folder / "toy.examples.npz", **arrs)
        return folder / "toy.json"

    same_b = write(tmp_path / "b", rec(), arrays())
    same_a = write(tmp_path / "a", rec(certified__ibp__seconds=5.0, provenance={}), arrays())
    diffs, ignored = cr.compare_outputs(same_b, same_a)
    assert diffs == [] and "provenance" in ignored
    changed = write(tmp_path / "c", rec(), arrays(clean_correct=np.array([False, True, True, False])))
    assert cr.compare_outputs(same_b, changed)[0] == ["npz[clean_correct]: 1 of 4 values differ (first at 0: "
                                                      "True -> False)"]
    (tmp_path / "c" / "toy.examples.npz").unlink()
    assert cr.compare_outputs(same_b, changed)[0] == ["examples file: only before wrote one"]
