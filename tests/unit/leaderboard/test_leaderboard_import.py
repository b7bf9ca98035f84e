"""``harness leaderboard import-robustbench``: RobustBench model_info JSON files -> reported.csv.

The fixture is a handful of model_info files written here (the layout of a RobustBench checkout);
the committed reported.csv is cross-checked against the 188-row snapshot when ../shared is there.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.errors import HarnessError
from leaderboard.boards import load_reported
from leaderboard.importers.robustbench import COLUMNS, import_robustbench, input_size, plain_text, read_model_info_dir

REPO = Path(__file__).resolve().parents[3]
SNAPSHOT = REPO.parent / "shared" / "reference" / "robustbench_model_info.csv"

INFO = {
    ("cifar10", "Linf", "Carmon2019Unlabeled"): {
        "link": "https://arxiv.org/abs/1905.13736", "name": "Unlabeled Data Improves Adversarial Robustness",
        "authors": "Yair Carmon, Aditi Raghunathan, Ludwig Schmidt, Percy Liang, John C. Duchi",
        "additional_data": True, "number_forward_passes": 1, "dataset": "cifar10", "venue": "NeurIPS 2019",
        "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69", "reported": "62.5",
        "autoattack_acc": "59.53", "unreliable": False},
    ("cifar10", "Linf", "Zhang2019Theoretically"): {
        "link": "https://arxiv.org/abs/1901.08573", "name": "Theoretically Principled Trade-off between Robustness "
        "and Accuracy", "authors": "Hongyang Zhang et al.", "additional_data": False, "number_forward_passes": 1,
        "dataset": "cifar10", "venue": "ICML 2019", "architecture": "WideResNet-34-10", "eps": "0.031",
        "clean_acc": "84.92", "reported": "56.43", "autoattack_acc": "53.08",
        "footnote": "Uses \\(\\ell_{\\infty} \\) = 0.031 ≈ 7.9/255 instead of 8/255."},
    ("cifar10", "Linf", "Xiao2020Enhancing"): {
        "link": "https://arxiv.org/abs/1905.10510", "name": "Enhancing Adversarial Defense by k-Winners-Take-All",
        "authors": "Chang Xiao, Peilin Zhong, Changxi Zheng", "additional_data": False, "number_forward_passes": 1,
        "dataset": "cifar10", "venue": "ICLR 2020", "architecture": "DenseNet-121", "eps": "0.031",
        "clean_acc": "79.28", "reported": "52.4", "autoattack_acc": "18.50", "external": "7.40",
        "footnote": "Uses \\(\\ell_{\\infty} \\) = 0.031 instead of 8/255.<br>7.40% robust accuracy is due to 1 "
                    "restart of APGD-CE<br>Note: <a href=\"https://arxiv.org/abs/2002.08347\">this adaptive "
                    "evaluation</a> reports 0.16%", "unreliable": False},
    ("imagenet", "Linf", "Wong2020Fast"): {
        "link": "https://arxiv.org/abs/2001.03994", "name": "Fast is better than free: Revisiting adversarial "
        "training", "authors": "Eric Wong, Leslie Rice, J. Zico Kolter", "additional_data": False,
        "number_forward_passes": 1, "dataset": "imagenet", "venue": "ICLR 2020", "architecture": "ResNet-50",
        "eps": "4/255", "clean_acc": "55.62", "reported": "", "autoattack_acc": "26.24",
        "footnote": "Focuses on fast adversarial training."},
    ("cifar10", "L2", "Standard"): {
        "link": "https://github.com/RobustBench/robustbench/", "name": "Standardly trained model", "authors": "",
        "additional_data": False, "number_forward_passes": 1, "dataset": "cifar10", "venue": "N/A",
        "architecture": "WideResNet-28-10", "eps": "0.5", "clean_acc": "94.78", "reported": "0.0",
        "autoattack_acc": "0.0"},
}


def write_checkout(root: Path, info=INFO) -> Path:
    for (ds, tm, rid), data in info.items():
        f = root / "model_info" / ds / tm / f"{rid}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(data, indent=2), encoding="utf-8")
    corr = root / "model_info" / "cifar10" / "corruptions"  # not an eps-ball board: ignored
    corr.mkdir(parents=True, exist_ok=True)
    (corr / "Hendrycks2020AugMix_WRN.json").write_text('{"corruptions_acc": "81.0"}', encoding="utf-8")
    return root


def test_import_a_fixture_checkout_without_counting(tmp_path):
    out = tmp_path / "reported.csv"
    rows = import_robustbench(write_checkout(tmp_path / "rb"), out, count=False)
    assert len(rows) == 5
    with open(out, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        got = {r["robustbench_id"] + "/" + r["norm"] + "/" + r["dataset"]: r for r in reader}
    c = got["Carmon2019Unlabeled/Linf/cifar10"]
    assert c["autoattack_acc_percent"] == "59.53" and c["clean_acc_percent"] == "89.69"
    assert c["extra_data"] == "extra real data" and c["additional_data"] == "True"
    assert c["venue"] == "NeurIPS 2019" and c["year"] == "2019" and c["paper"].startswith("Unlabeled Data")
    assert c["n_test"] == "10000" and c["inference_flops"] == ""
    assert "not counted" in c["compute_source"]
    x = got["Xiao2020Enhancing/Linf/cifar10"]
    # HTML and LaTeX in RobustBench's footnote become plain text; the link target is kept
    assert "<" not in x["note"] and "ℓ∞ = 0.031" in x["note"]
    assert "this adaptive evaluation (https://arxiv.org/abs/2002.08347)" in x["note"]
    assert x["stronger_attack_acc_percent"] == "7.40"
    assert got["Wong2020Fast/Linf/imagenet"]["n_test"] == "5000"
    # the entries load, and the eps-0.031 rows sit on the 8/255 board, marked
    entries = {e.reported["robustbench_id"]: e for e in load_reported(out)}
    z = entries["Zhang2019Theoretically"]
    assert z.eps == pytest.approx(0.031) and z.board_eps == pytest.approx(8 / 255)
    assert any(f.name == "eps 0.031" for f in z.flags)
    assert entries["Xiao2020Enhancing"].best_known == pytest.approx(0.074)
    assert entries["Carmon2019Unlabeled"].board_eps is None


def test_import_counts_new_rows_and_reuses_known_counts(tmp_path):
    info = {k: v for k, v in INFO.items() if k[2] in ("Carmon2019Unlabeled", "Xiao2020Enhancing")}
    out = tmp_path / "reported.csv"
    rows = {r["robustbench_id"]: r for r in import_robustbench(write_checkout(tmp_path / "rb", info), out)}
    # Carmon2019Unlabeled: the zoo's WideResNet-28-10 at 32x32, 5.25 G and 36.5 M (Zagoruyko & Komodakis)
    assert float(rows["Carmon2019Unlabeled"]["inference_flops"]) / 1e9 == pytest.approx(5.25, abs=0.01)
    assert int(rows["Carmon2019Unlabeled"]["params"]) / 1e6 == pytest.approx(36.5, abs=0.05)
    assert rows["Carmon2019Unlabeled"]["input_size"] == "3x32x32"
    # no zoo entry, and DenseNet-121 names no single CIFAR architecture: kept, with the reason
    assert rows["Xiao2020Enhancing"]["inference_flops"] == ""
    assert "DenseNet-121" in rows["Xiao2020Enhancing"]["compute_source"]
    # a second import reuses the count (a marker in the cached row proves it was not recounted)
    text = out.read_text(encoding="utf-8").replace("no weights", "no weights (cached)")
    out.write_text(text, encoding="utf-8")
    again = {r["robustbench_id"]: r for r in import_robustbench(tmp_path / "rb", out)}
    assert "(cached)" in again["Carmon2019Unlabeled"]["compute_source"]


def test_imagenet_resolution_comes_from_robustbench_preprocessing():
    assert input_size("imagenet", "Linf", "Wong2020Fast") == (3, 288, 288)  # 'Crop288'
    assert input_size("imagenet", "Linf", "Salman2020Do_R50") == (3, 224, 224)  # 'Res256Crop224'
    assert input_size("imagenet", "Linf", "Debenedetti2022Light_XCiT-S12") == (3, 224, 224)  # timm's cfg
    assert input_size("cifar100", "Linf", "Rice2020Overfitting") == (3, 32, 32)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(autoattack_acc="150"), "percentage"),
    (lambda d: d.update(autoattack_acc="abc"), "not a number"),
    (lambda d: d.pop("autoattack_acc"), "autoattack_acc is missing"),
    (lambda d: d.update(eps="eight"), "eps"),
    (lambda d: d.update(number_forward_passes=0), "number_forward_passes"),
    (lambda d: d.update(additional_data="maybe"), "additional_data"),
])
def test_bad_model_info_is_refused_with_one_line(tmp_path, edit, match):
    data = json.loads(json.dumps(INFO[("cifar10", "Linf", "Carmon2019Unlabeled")]))
    edit(data)
    root = write_checkout(tmp_path / "rb", {("cifar10", "Linf", "Carmon2019Unlabeled"): data})
    with pytest.raises(HarnessError, match=match) as ei:
        import_robustbench(root, tmp_path / "reported.csv", count=False)
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "reported.csv").exists()  # nothing written


def test_duplicate_json_keys_and_non_json_are_refused(tmp_path):
    root = write_checkout(tmp_path / "rb", {})
    f = root / "model_info" / "cifar10" / "Linf" / "Dup2020.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text('{"eps": "8/255", "autoattack_acc": "50", "autoattack_acc": "99"}', encoding="utf-8")
    with pytest.raises(HarnessError, match="duplicate key 'autoattack_acc'"):
        read_model_info_dir(root)
    f.write_text("{not json", encoding="utf-8")
    with pytest.raises(HarnessError, match="not valid JSON"):
        read_model_info_dir(root)


def test_links_other_than_http_are_dropped_and_text_is_plain(tmp_path):
    data = dict(INFO[("cifar10", "Linf", "Carmon2019Unlabeled")], link="javascript:alert(1)",
                name="<script>alert(1)</script>Title", venue="GitHub,<br>Oct 2019")
    root = write_checkout(tmp_path / "rb", {("cifar10", "Linf", "Carmon2019Unlabeled"): data})
    (row,) = import_robustbench(root, tmp_path / "r.csv", count=False)
    assert row["source_url"] == "" and row["venue"] == "GitHub, Oct 2019" and row["year"] == "2019"
    assert "<" not in row["paper"]
    assert plain_text("a &amp; b <i>c</i>") == "a & b c"


def test_cli_import_robustbench(tmp_path):
    root = write_checkout(tmp_path / "rb")
    out = tmp_path / "reported.csv"
    cmd = [sys.executable, "-m", "harness", "leaderboard", "import-robustbench", str(root), "--out", str(out),
           "--no-count", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 5 reported rows" in proc.stdout
    bad = subprocess.run(cmd[:5] + [str(tmp_path / "nowhere"), "--out", str(out), "--no-count"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# --- the committed table --------------------------------------------------------------------------
def test_committed_reported_csv_has_every_snapshot_row():
    entries = load_reported(REPO / "leaderboard" / "reported.csv")
    assert len(entries) == 188
    from collections import Counter
    boards = Counter((e.dataset, e.norm, round(e.board_eps or e.eps, 6)) for e in entries)
    assert boards == {("cifar10", "Linf", round(8 / 255, 6)): 99, ("cifar10", "L2", 0.5): 21,
                      ("cifar100", "Linf", round(8 / 255, 6)): 38, ("imagenet", "Linf", round(4 / 255, 6)): 30}
    for e in entries:
        # counted, or the reason it is not
        assert (e.inference_flops is not None and e.params is not None) or e.compute_note.startswith("not counted")
    # every row is counted but these three, each with its reason above
    uncounted = {(e.dataset, e.norm, e.reported["robustbench_id"]) for e in entries if e.inference_flops is None}
    assert uncounted == {("cifar10", "Linf", "Kang2021Stable"), ("cifar10", "Linf", "Zhang2020Towards"),
                         ("cifar10", "Linf", "Xiao2020Enhancing")}
    by_id = {(e.dataset, e.norm, e.reported["robustbench_id"]): e for e in entries}
    # ImageNet at the model's own resolution: a ResNet-50 is 4.11 G at 224 and (288/224)^2 times that at 288
    r50 = by_id[("imagenet", "Linf", "Salman2020Do_R50")]
    wong = by_id[("imagenet", "Linf", "Wong2020Fast")]
    assert r50.inference_flops / 1e9 == pytest.approx(4.11, abs=0.02)
    assert wong.inference_flops / r50.inference_flops == pytest.approx((288 / 224) ** 2, rel=0.01)
    # an ensemble counts every member: Chen2020Adversarial is three ResNet-50s (CIFAR stem)
    chen = by_id[("cifar10", "Linf", "Chen2020Adversarial")]
    assert chen.forward_passes == 3
    one = by_id[("cifar10", "L2", "Augustin2020Adversarial")]  # a single ResNet-50 at 32x32
    assert chen.inference_flops / one.inference_flops == pytest.approx(3, rel=0.02)
    # the XCiT rows are counted (robustbench's zoo names a timm model its own module registers differently)
    assert by_id[("cifar10", "Linf", "Debenedetti2022Light_XCiT-S12")].inference_flops is not None


def test_committed_reported_csv_matches_the_snapshot():
    if not SNAPSHOT.is_file():
        pytest.skip(f"{SNAPSHOT} is not beside the checkout")
    with open(SNAPSHOT, newline="", encoding="utf-8") as f:
        snap = {(r["dataset"], r["threat_model"], r["robustbench_id"]): r for r in csv.DictReader(f)}
    entries = load_reported(REPO / "leaderboard" / "reported.csv")
    assert {(e.dataset, e.norm, e.reported["robustbench_id"]) for e in entries} == set(snap)
    for e in entries:
        src = snap[(e.dataset, e.norm, e.reported["robustbench_id"])]
        assert e.robust == pytest.approx(float(src["autoattack_acc"]) / 100)
        assert e.clean == pytest.approx(float(src["clean_acc"]) / 100)
        assert e.url == src["link"]
        assert e.reported["eps"] == src["eps"]
        assert e.forward_passes == int(src["number_forward_passes"])
        assert e.reported["stronger_attack_acc_percent"] == src["external_acc"]
