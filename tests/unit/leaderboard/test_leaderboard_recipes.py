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

REPO = Path(__file__).resolve().parents[3]
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


#: the CIFAR-10 Linf rows whose training FLOPs the committed recipes give (exactly this set)
CIFAR10_LINF_WITH_TRAINING_FLOPS = {
    "Addepalli2021Towards_RN18", "Addepalli2021Towards_WRN34", "Addepalli2022Efficient_RN18",
    "Addepalli2022Efficient_WRN_34_10", "Amini2024MeanSparse_Ra_WRN_70_16", "Amini2024MeanSparse_S-WRN-94-16",
    "Andriushchenko2020Understanding", "Bai2023Improving_edm", "Bai2024MixedNUTS",
    "Bartoldson2024Adversarial_WRN-82-8", "Bartoldson2024Adversarial_WRN-94-16", "Carmon2019Unlabeled",
    "Chen2020Efficient", "Cui2020Learnable_34_10", "Cui2020Learnable_34_20", "Cui2023Decoupled_WRN-34-10",
    "Dai2021Parameterizing", "Debenedetti2022Light_XCiT-L12", "Debenedetti2022Light_XCiT-M12",
    "Debenedetti2022Light_XCiT-S12", "Ding2020MMA", "Engstrom2019Robustness", "Gowal2020Uncovering_28_10_extra",
    "Gowal2020Uncovering_70_16_extra", "Hendrycks2019Using", "Huang2020Self", "Huang2021Exploring",
    "Huang2021Exploring_ema", "Huang2022Revisiting_WRN-A4", "Madry2018Towards", "Pang2020Bag", "Pang2020Boosting",
    "Pang2020Rethinking", "Pang2022Robustness_WRN28_10", "Peng2023Robust", "Rade2021Helper_R18_ddpm",
    "Rade2021Helper_R18_extra", "Rade2021Helper_ddpm", "Rade2021Helper_extra", "Rebuffi2021Fixing_R18_ddpm",
    "Rice2020Overfitting", "Sehwag2020Hydra", "Sehwag2021Proxy", "Sehwag2021Proxy_R18",
    "Sehwag2021Proxy_ResNest152", "Shafahi2019Adversarial", "Sridhar2021Robust", "Sridhar2021Robust_34_15",
    "Wang2023Better_WRN-70-16", "Wong2020Fast", "Wu2020Adversarial", "Wu2020Adversarial_extra",
    "Xu2023Exploring_WRN-28-10", "Zhang2019Theoretically", "Zhang2019You", "Zhang2020Attacks", "Zhang2020Geometry",
    "ZhangWang2019Defense", "ZhangXu2020Adversarial",
}


def _cifar10_linf():
    return {e.reported["robustbench_id"]: e for e in load_entries(REPO).entries
            if e.reported and (e.dataset, e.norm) == ("cifar10", "Linf")}


def test_cifar10_linf_rows_with_training_flops_are_exactly_these():
    entries = _cifar10_linf()
    got = {i for i, e in entries.items() if e.training_flops is not None}
    assert got == CIFAR10_LINF_WITH_TRAINING_FLOPS
    for i in got:  # each with its source
        assert "recipe source: http" in entries[i].training_flops_source or entries[i].reported["training_flops_source"]
    for i, e in entries.items():  # every other row says why
        if i not in got:
            assert (e.training_flops_source or "").startswith("unknown: "), i


def test_post_training_rows_inherit_their_base_models_training():
    e = _cifar10_linf()
    base, ms = e["Bartoldson2024Adversarial_WRN-94-16"], e["Amini2024MeanSparse_S-WRN-94-16"]
    # the base's TRADES-10 training + one forward of the MeanSparse model over 50,000 images
    assert ms.training_flops == pytest.approx(base.training_flops + ms.inference_flops * 50_000, rel=1e-12)
    assert ms.training_flops_bound == "lower bound" and "threshold search" in ms.training_flops_source
    peng = e["Peng2023Robust"]  # 2000 epochs x >= 50,000 examples x TRADES-10 (27), batch size unknown
    assert peng.training_flops == pytest.approx(peng.inference_flops * 2000 * 50_000 * 27)
    assert peng.training_flops_bound == "lower bound" and "batch size" in peng.training_flops_source
    nuts = e["Bai2024MixedNUTS"]  # training-free: Peng2023Robust's, the BiT ResNet-152 excluded
    assert nuts.training_flops == peng.training_flops and nuts.training_flops_bound == "lower bound"
    assert "BiT ResNet-152" in nuts.training_flops_source
    ra = e["Amini2024MeanSparse_Ra_WRN_70_16"]
    assert ra.training_flops == pytest.approx(peng.training_flops + ra.inference_flops * 50_000)
    bai = e["Bai2023Improving_edm"]  # the mixing network's passes are not counted: the base's only
    assert bai.training_flops == e["Wang2023Better_WRN-70-16"].training_flops and bai.training_flops_bound
    kang = e["Kang2021Stable"]  # its base's epochs are not found: no value, and the reason names the base
    assert kang.training_flops is None and "Rebuffi2021Fixing_70_16_cutmix_extra" in kang.training_flops_source


def test_derived_multipliers_reach_the_board():
    e = _cifar10_linf()
    cases = {"Cui2023Decoupled_WRN-34-10": (200 * 50_000, (9 * 21 + 191 * 27) / 200),
             "Wu2020Adversarial_extra": (200 * 50_176, (9 * 36 + 191 * 45) / 200),
             "Sehwag2021Proxy_ResNest152": (100 * 100_176, 24), "Sehwag2021Proxy": (100 * 100_048, 24)}
    for rb_id, (seen, mult) in cases.items():
        assert e[rb_id].training_flops == pytest.approx(e[rb_id].inference_flops * seen * mult), rb_id
        assert e[rb_id].training_flops_bound is None


def test_excluded_stages_make_a_lower_bound():
    e = _cifar10_linf()["Debenedetti2022Light_XCiT-S12"]  # the CIFAR-10 fine-tuning only
    assert e.training_flops == pytest.approx(e.inference_flops * 20 * 50_000 * 27)
    assert e.training_flops_bound == "lower bound" and "ImageNet-1k adversarial pre-training" in e.training_flops_source
    r = parse_recipe(row(excludes="a pre-training stage"), "x:2")
    tc = training_compute(r, 1e9)
    assert tc.bound == "lower bound" and tc.formula.startswith("lower bound:") and "pre-training" in tc.formula
    upper = parse_recipe(row(method="other:fat-trades", excludes="a pre-training stage"), "x:3")
    assert training_compute(upper, 1e9).value is None  # an upper bound minus an unknown part bounds nothing


def test_base_models_are_checked():
    from leaderboard.recipes import training_computes

    a = parse_recipe(row(robustbench_id="A", base_models="B"), "x:2")
    b = parse_recipe(row(robustbench_id="B", base_models="A"), "x:3")
    with pytest.raises(HarnessError, match="cycle"):
        training_computes({a.key: a, b.key: b}, {a.key: 1e9, b.key: 1e9})
    with pytest.raises(HarnessError, match="base model B has no recipe"):
        training_computes({a.key: a}, {a.key: 1e9})
    with pytest.raises(HarnessError, match="base_models"):
        parse_recipe(row(robustbench_id="A", base_models="A"), "x:4")
    b = parse_recipe(row(robustbench_id="B"), "x:3")
    got = training_computes({a.key: a, b.key: b}, {a.key: 2e9, b.key: 1e9})
    assert got[a.key].value == pytest.approx((2e9 + 1e9) * 200 * 50_000 * 27)
