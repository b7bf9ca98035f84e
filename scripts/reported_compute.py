#!/usr/bin/env python
"""Produce ``leaderboard/reported.csv``: rows from the literature, not re-evaluated by the harness.

Accuracies, venue, paper and link come from the RobustBench model-info table
(``robustbench_model_info.csv`` in the shared reference folder; RobustBench commit 78fcc9e).
Parameters and inference FLOPs are counted here, offline, with fvcore on the RobustBench model-zoo
architecture of each row (built without weights: ``build_architecture("robustbench.zoo:...")``,
one input of shape (3, 32, 32)), in fvcore's convention: 1 FLOP = 1 multiply-add.
Training FLOPs are filled in only where the reference table ``training_compute_cifar10_linf.csv``
knows them; that table counts 2 FLOPs per multiply-add, so its numbers are halved here.

The leaderboard build only reads the CSV this script writes; it never builds a model.
Counts already in the CSV are reused unless ``--recount`` is given (a WideResNet-70-16 takes
several seconds on a CPU; the whole list, from scratch, a few minutes).

    python scripts/reported_compute.py [--reference-dir ../shared/reference] [--recount]
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "leaderboard" / "reported.csv"
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference"
ROBUSTBENCH_COMMIT = "78fcc9e"
N_TEST = {"cifar10": 10_000, "cifar100": 10_000}

#: (dataset, threat model, RobustBench id): single-model rows whose zoo architecture fvcore can count.
#: Ensembles (several forward passes), MeanSparse/BPDA rows and rows at eps 0.031 are left out.
ROWS: list[tuple[str, str, str]] = [
    # CIFAR-10, Linf, 8/255
    ("cifar10", "Linf", "Bartoldson2024Adversarial_WRN-94-16"),
    ("cifar10", "Linf", "Bartoldson2024Adversarial_WRN-82-8"),
    ("cifar10", "Linf", "Peng2023Robust"),
    ("cifar10", "Linf", "Wang2023Better_WRN-70-16"),
    ("cifar10", "Linf", "Wang2023Better_WRN-28-10"),
    ("cifar10", "Linf", "Cui2023Decoupled_WRN-28-10"),
    ("cifar10", "Linf", "Cui2023Decoupled_WRN-34-10"),
    ("cifar10", "Linf", "Rebuffi2021Fixing_70_16_cutmix_extra"),
    ("cifar10", "Linf", "Rebuffi2021Fixing_106_16_cutmix_ddpm"),
    ("cifar10", "Linf", "Rebuffi2021Fixing_28_10_cutmix_ddpm"),
    ("cifar10", "Linf", "Rebuffi2021Fixing_R18_ddpm"),
    ("cifar10", "Linf", "Gowal2021Improving_70_16_ddpm_100m"),
    ("cifar10", "Linf", "Gowal2021Improving_28_10_ddpm_100m"),
    ("cifar10", "Linf", "Gowal2021Improving_R18_ddpm_100m"),
    ("cifar10", "Linf", "Gowal2020Uncovering_70_16_extra"),
    ("cifar10", "Linf", "Gowal2020Uncovering_28_10_extra"),
    ("cifar10", "Linf", "Pang2022Robustness_WRN70_16"),
    ("cifar10", "Linf", "Pang2022Robustness_WRN28_10"),
    ("cifar10", "Linf", "Carmon2019Unlabeled"),
    ("cifar10", "Linf", "Sehwag2021Proxy_R18"),
    ("cifar10", "Linf", "Addepalli2022Efficient_RN18"),
    ("cifar10", "Linf", "Rice2020Overfitting"),
    ("cifar10", "Linf", "Engstrom2019Robustness"),
    ("cifar10", "Linf", "Andriushchenko2020Understanding"),
    # CIFAR-10, L2, 0.5
    ("cifar10", "L2", "Wang2023Better_WRN-70-16"),
    ("cifar10", "L2", "Wang2023Better_WRN-28-10"),
    ("cifar10", "L2", "Rebuffi2021Fixing_70_16_cutmix_extra"),
    ("cifar10", "L2", "Rebuffi2021Fixing_R18_cutmix_ddpm"),
    ("cifar10", "L2", "Sehwag2021Proxy_R18"),
    ("cifar10", "L2", "Engstrom2019Robustness"),
    ("cifar10", "L2", "Rice2020Overfitting"),
    # CIFAR-100, Linf, 8/255
    ("cifar100", "Linf", "Wang2023Better_WRN-70-16"),
    ("cifar100", "Linf", "Wang2023Better_WRN-28-10"),
    ("cifar100", "Linf", "Cui2023Decoupled_WRN-28-10"),
    ("cifar100", "Linf", "Pang2022Robustness_WRN70_16"),
    ("cifar100", "Linf", "Rebuffi2021Fixing_28_10_cutmix_ddpm"),
    ("cifar100", "Linf", "Rebuffi2021Fixing_R18_ddpm"),
    ("cifar100", "Linf", "Addepalli2022Efficient_RN18"),
]

COLUMNS = [
    "id", "dataset", "norm", "eps", "robustbench_id", "name", "architecture",
    "clean_acc_percent", "autoattack_acc_percent", "stronger_attack_acc_percent", "n_test",
    "params", "inference_flops", "training_flops", "flops_convention", "compute_source",
    "training_flops_source", "additional_data", "unreliable", "venue", "paper", "source_url",
    "accuracy_source_url", "note",
]
CONVENTION = "fvcore: 1 FLOP = 1 multiply-add"


def row_id(dataset: str, norm: str, rb_id: str) -> str:
    return f"reported-{dataset}-{norm}-{rb_id}"


def count(dataset: str, norm: str, rb_id: str) -> tuple[int, float, dict[str, int]]:
    import torch

    from harness.architectures import build_architecture
    from harness.flops import count_inference_flops

    torch.manual_seed(0)
    model = build_architecture(f"robustbench.zoo:{dataset}/{norm}/{rb_id}")
    fc = count_inference_flops(model, (3, 32, 32))
    return fc.params, fc.total, fc.skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE)
    ap.add_argument("--recount", action="store_true", help="count params and FLOPs again for every row")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    with open(args.reference_dir / "robustbench_model_info.csv", newline="", encoding="utf-8") as f:
        info = {(r["dataset"], r["threat_model"], r["robustbench_id"]): r for r in csv.DictReader(f)}
    with open(args.reference_dir / "training_compute_cifar10_linf.csv", newline="", encoding="utf-8") as f:
        train = {r["robustbench_id"]: r for r in csv.DictReader(f)}
    cached: dict[str, dict[str, str]] = {}
    if args.out.is_file() and not args.recount:
        with open(args.out, newline="", encoding="utf-8") as f:
            cached = {r["id"]: r for r in csv.DictReader(f)}

    from harness.flops import to_fvcore_convention

    out_rows = []
    for dataset, norm, rb_id in ROWS:
        src = info[(dataset, norm, rb_id)]
        rid = row_id(dataset, norm, rb_id)
        if rid in cached and cached[rid].get("params") and cached[rid].get("inference_flops"):
            params, flops = int(cached[rid]["params"]), float(cached[rid]["inference_flops"])
        else:
            t0 = time.perf_counter()
            params, flops, _skipped = count(dataset, norm, rb_id)
            print(f"counted {rid}: {params / 1e6:.1f} M params, {flops / 1e9:.2f} GFLOPs "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        notes = []
        train_flops = ""
        train_source = ""
        if dataset == "cifar10" and norm == "Linf" and rb_id in train:
            t = train[rb_id]
            tf = to_fvcore_convention(float(t["training_flops"]), t["flop_convention"])
            train_flops = f"{tf:.4g}"
            train_source = (f"{t['source']} ({float(t['training_flops']):.3g} FLOPs at "
                            f"{t['flop_convention']}, halved; {t['method']}; "
                            f"{float(t['examples_seen']):.4g} examples seen)")
            # the paper's profiler counts 2 per multiply-add: compare with our count
            ref_inf = to_fvcore_convention(float(t["inference_flops_per_image"]), t["flop_convention"])
            rel = flops / ref_inf - 1
            notes.append(f"fvcore inference count is {rel:+.1%} vs the scaling-law repository's "
                         f"{ref_inf / 1e9:.4g} G (halved).")
            print(f"  {rb_id}: fvcore {flops / 1e9:.3f} G vs reference {ref_inf / 1e9:.3f} G ({rel:+.2%})",
                  file=sys.stderr)
        if src["footnote"]:
            notes.append(src["footnote"])
        eps = src["eps"]
        out_rows.append({
            "id": rid,
            "dataset": dataset,
            "norm": norm,
            "eps": eps,
            "robustbench_id": rb_id,
            "name": rb_id,
            "architecture": src["architecture"],
            "clean_acc_percent": src["clean_acc"],
            "autoattack_acc_percent": src["autoattack_acc"],
            "stronger_attack_acc_percent": src["external_acc"],
            "n_test": str(N_TEST[dataset]),
            "params": str(params),
            "inference_flops": f"{flops:.6g}",
            "training_flops": train_flops,
            "flops_convention": CONVENTION,
            "compute_source": (f"fvcore count of robustbench.zoo:{dataset}/{norm}/{rb_id}, input (3,32,32), "
                               "scripts/reported_compute.py"),
            "training_flops_source": train_source,
            "additional_data": src["additional_data"],
            "unreliable": src["unreliable"],
            "venue": src["venue"],
            "paper": src["paper"].strip(),
            "source_url": src["link"],
            "accuracy_source_url": (f"https://github.com/RobustBench/robustbench/blob/{ROBUSTBENCH_COMMIT}/"
                                    f"model_info/{dataset}/{norm}/{rb_id}.json"),
            "note": " ".join(notes),
        })

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(out_rows)
    print(f"wrote {len(out_rows)} rows to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
