"""``leaderboard/training_recipes.csv``: strict reading, training FLOPs from recipes, and the
cross-check against the scaling-law paper's published training compute."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from harness.compute.training_cost import to_fvcore_convention
from harness.core.errors import HarnessError
from leaderboard.boards import load_entries
from leaderboard.recipes import RECIPE_COLUMNS, load_recipes, parse_recipe, training_compute

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "leaderboard" / "training_recipes.csv"
REFERENCE = REPO.parent / "shared" / "reference" / "training_compute_cifar10_linf.csv"

#: Bartoldson et al. (ICML 2024) and the configurations of their repository: training FLOPs at
#: 2 FLOPs per multiply-add (the shared reference table holds the same numbers)
PUBLISHED = {
    "Bartoldson2024Adversarial_WRN-94-16": 1.47e21,
    "Bartoldson2024Adversarial_WRN-82-8": 2.17e20,
    "Wang2023Better_WRN-70-16": 2.14e20,
}


def row(**over) -> dict[str, str]:
    r = {"robustbench_id": "Foo2020Bar", "dataset": "cifar10", "threat_model": "Linf", "method": "trades",
         "attack_steps": "10", "awp": "false", "epochs": "200", "examples_per_epoch": "50000",
         "real_generated_ratio": "1:0", "extra_data": "", "batch_size": "128", "status": "known",
         "source": "https://arxiv.org/abs/0000.00000 Section 4", "note": ""}
    r.update(over)
    return r


def test_training_compute_is_forward_times_examples_times_multiplier():
    r = parse_recipe(row(), "x:2")
    tc = training_compute(r, 5.25e9)
    assert tc.value == pytest.approx(5.25e9 * 200 * 50_000 * 27)  # TRADES-10: 27
    assert "27" in tc.formula and "TRADES-10" in tc.formula
    free = parse_recipe(row(method="free", attack_steps="8", epochs="25"), "x:3")
    assert training_compute(free, 1e9).value == pytest.approx(1e9 * 25 * 50_000 * 24)
    awp = parse_recipe(row(method="pgd", attack_steps="10", awp="true"), "x:4")
    assert training_compute(awp, 1e9).value == pytest.approx(1e9 * 200 * 50_000 * 26)
    # a loss-only variant of TRADES costs what TRADES costs
    score = parse_recipe(row(method="other:score (TRADES with squared error)"), "x:5")
    assert training_compute(score, 1e9).value == pytest.approx(1e9 * 200 * 50_000 * 27)


@pytest.mark.parametrize("over, why", [
    ({"method": "unknown", "status": "partial", "note": "method not stated"}, "training method is unknown"),
    ({"epochs": "unknown", "status": "partial", "note": "epochs not stated"}, "epochs are unknown"),
    ({"method": "other:las-at", "status": "partial", "note": "variant not identified"}, "no multiplier for las-at"),
    ({"awp": "unknown", "status": "partial", "note": "AWP not stated"}, "whether AWP was used is unknown"),
])
def test_unknowns_stay_unknown_with_the_reason(over, why):
    tc = training_compute(parse_recipe(row(**over), "x:2"), 1e9)
    assert tc.value is None and why in tc.formula and over["note"] in tc.formula


@pytest.mark.parametrize("over, match", [
    ({"method": "adversarial"}, "column method"),
    ({"attack_steps": "ten"}, "column attack_steps"),
    ({"epochs": "-3"}, "column epochs"),
    ({"awp": "yes"}, "column awp"),
    ({"status": "maybe"}, "column status"),
    ({"source": "javascript:alert(1)"}, "column source"),
    ({"real_generated_ratio": "most"}, "real_generated_ratio"),
    ({"epochs": ""}, "status known, but epochs is not given"),
    ({"status": "partial", "note": ""}, "needs a note"),
])
def test_malformed_recipes_are_refused_with_one_line(over, match):
    with pytest.raises(HarnessError, match=match) as ei:
        parse_recipe(row(**over), "training_recipes.csv:7")
    assert str(ei.value).startswith("training_recipes.csv:7") and "\n" not in str(ei.value)


def test_committed_table_has_one_recipe_per_reported_row():
    recipes = load_recipes(RECIPES)
    with open(REPO / "leaderboard" / "reported.csv", newline="", encoding="utf-8") as f:
        reported = {(r["dataset"], r["norm"], r["robustbench_id"]) for r in csv.DictReader(f)}
    assert set(recipes) == reported
    for r in recipes.values():
        assert r.status != "known" or r.source.startswith("http")
        assert r.status == "known" or r.note


def test_scaling_law_rows_reproduce_the_published_training_flops():
    """Forward FLOPs (fvcore) x examples seen x the TRADES-10 multiplier, from the recipes, within 5%
    of the paper's figures (halved from 2 FLOPs per multiply-add)."""
    entries = {e.reported["robustbench_id"]: e for e in load_entries(REPO).entries
               if e.reported and (e.dataset, e.norm) == ("cifar10", "Linf")}
    published = dict(PUBLISHED)
    if REFERENCE.is_file():  # the shared reference table, when it is beside the checkout, must agree
        with open(REFERENCE, newline="", encoding="utf-8") as f:
            ref = {r["robustbench_id"]: float(r["training_flops"]) for r in csv.DictReader(f)}
        assert ref == pytest.approx(published)
    for rb_id, flops_2 in published.items():
        e = entries[rb_id]
        assert e.training_flops is not None, e.training_flops_source
        assert e.training_flops == pytest.approx(to_fvcore_convention(flops_2, "2 per multiply-add"), rel=0.05)


def test_build_refuses_a_recipe_for_a_row_that_does_not_exist(tmp_path):
    from leaderboard.build import build_leaderboard
    from leaderboard.synthetic import write_synthetic_repo

    root = tmp_path / "repo"
    lines = (REPO / "leaderboard" / "reported.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "r.csv").write_text("".join(lines[:3]), encoding="utf-8")
    write_synthetic_repo(root, 2, reported_csv=tmp_path / "r.csv")
    with open(root / "leaderboard" / "training_recipes.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=RECIPE_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerow(row(robustbench_id="Nobody2099"))
    with pytest.raises(HarnessError, match="Nobody2099, which is not a row of reported.csv"):
        build_leaderboard(root, tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_bounds_and_extra_networks_are_shown():
    from harness.compute.training_cost import lbgat_teacher_flops
    from leaderboard.fmt import bounded_flops

    hat = parse_recipe(row(method="other:hat (helper-based TRADES)", epochs="400", examples_per_epoch="50176"), "x:2")
    tc = training_compute(hat, 1e9)
    assert tc.value == pytest.approx(1e9 * 400 * 50_176 * 30)  # TRADES-10 (27) + the helper example (3)
    assert tc.bound == "lower bound" and tc.formula.startswith("lower bound:") and "helper model" in tc.formula
    lbgat = parse_recipe(row(method="other:lbgat", epochs="100"), "x:3")
    tc = training_compute(lbgat, 1e9)  # 3K + 6 robust-model forwards + the teacher's forward/backward
    assert tc.value == pytest.approx(100 * 50_000 * (36 * 1e9 + 3 * lbgat_teacher_flops(10)))
    assert tc.bound == "exact" and "teacher" in tc.formula
    assert bounded_flops(2.5e18, "lower bound") == "≥ 2.5 E" and bounded_flops(2.5e18, "upper bound") == "≤ 2.5 E"
    assert bounded_flops(2.5e18, None) == "2.5 E" and bounded_flops(None, "lower bound") == "–"


def test_the_board_marks_bounded_training_flops():
    entries = [e for e in load_entries(REPO).entries if e.training_recipe is not None]
    bounded = [e for e in entries if e.training_flops_bound]
    assert {e.training_flops_bound for e in bounded} == {"lower bound", "upper bound"}
    for e in entries:  # the table's "≥"/"≤" and the hover text agree
        src = e.training_flops_source or ""
        if e.training_flops is None:
            assert e.training_flops_bound is None
        elif e.training_flops_bound:
            assert src.startswith(e.training_flops_bound + ":")
        else:
            assert not src.startswith(("lower bound", "upper bound"))
