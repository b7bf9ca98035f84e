"""Synthetic repositories for the leaderboard's tests and benchmark.

:func:`write_synthetic_repo` writes ``submissions/<id>/submission.yaml`` and matching result records
(``leaderboard/results/<id>.json``, hashes consistent) for ``n`` made-up entries spread over three
boards, with a plausible accuracy-vs-compute trend, certified accuracies and ε curves on some,
trust flags and AutoAttack check messages on a few, a data-separation radius on MNIST records and,
if asked, an ``.examples.npz`` with a gallery. Nothing here is a real measurement.

The records are signed (:mod:`harness.record.signing`) with a throw-away key made for the repository: its
private half in ``<root>/.keys/synthetic-ed25519.pem`` (what the project's ``.gitignore`` ignores),
its public half in ``<root>/leaderboard/keys/``, so the build trusts exactly these records. A test
that edits a record and wants a later check than the signature's to see it calls :func:`resign`.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness.core.files import sha256_file
from harness.core.stats import clopper_pearson
from harness.record.schema import FLOPS_CONVENTION, ResultRecord

BOARDS = [  # dataset, norm, eps, eps as written in the yaml, input shape, weight
    ("cifar10", "Linf", 8 / 255, "8/255", (3, 32, 32), 0.6),
    ("mnist", "Linf", 0.3, 0.3, (1, 28, 28), 0.25),
    ("cifar10", "L2", 0.5, 0.5, (3, 32, 32), 0.15),
]


def _ci(acc: float, n: int) -> tuple[float, float]:
    return clopper_pearson(int(round(acc * n)), n)


def synthetic_record(sub_id: str, rng: random.Random, *, board: tuple, submission_sha: str, checkpoint_sha: str,
                     files_sha: str | None = None, n_examples: int = 1000, certified: bool = False, flags: bool = False,
                     separation: float | None = None, training_flops: bool = True) -> ResultRecord:
    dataset, norm, eps, _, _, _ = board
    log_f = rng.uniform(6.0, 11.0)  # inference FLOPs 1e6 .. 1e11
    flops = float(f"{10 ** log_f:.6g}")
    params = int(flops / rng.uniform(40, 400))
    # robust accuracy rises with compute and saturates, plus noise
    robust = min(0.95, max(0.0, 0.75 - 0.6 * math.exp(-(log_f - 6.0) / 2.5) + rng.gauss(0, 0.04)))
    clean = min(0.999, robust + rng.uniform(0.1, 0.3))
    k = int(round(robust * n_examples))
    robust = k / n_examples
    clean = int(round(clean * n_examples)) / n_examples
    tf = flops * rng.uniform(1e6, 1e9) * 27 if training_flops else None
    aa_checks = (["it seems that the model is not robust to small perturbations (synthetic check message)"]
                 if flags else [])
    cert = None
    if certified:
        c_acc = round(robust * rng.uniform(0.3, 0.95) * n_examples) / n_examples
        grid = np.linspace(0, 2 * eps, 9)
        curve = [(float(e), float(max(0.0, clean * math.exp(-3 * e / eps) if e > 0 else clean))) for e in grid]
        cert = {"ibp": {
            "method": "ibp", "eps": eps, "certified_accuracy": c_acc,
            "certified_accuracy_ci95": _ci(c_acc, n_examples), "acr": eps * c_acc, "acr_percent": 100 * c_acc,
            "eps_max": 2 * eps, "tolerance": eps / 100, "seconds": 1.5, "curve": curve,
        }}
    diagnostics: dict[str, Any] = {}
    if flags:
        diagnostics["flags"] = [{"name": "weak-attack-gap", "severity": "error",
                                 "message": "PGD-20 accuracy exceeds AutoAttack's by 12 points (synthetic)"}]
    if separation is not None:
        diagnostics["separation"] = {"half_min": separation, "min": 2 * separation, "n_test": n_examples,
                                     "n_train": 60000}
    return ResultRecord(
        submission_id=sub_id, name=f"Synthetic model {sub_id}", dataset=dataset,
        threat_model={"norm": norm, "eps": eps}, n_examples=n_examples,
        stages=(["clean", "flops"] + (["certify"] if certified else []) + ["autoattack"]
                + (["diagnostics"] if diagnostics else [])),
        clean_accuracy=clean, clean_accuracy_ci95=_ci(clean, n_examples),
        robust_accuracy=robust, robust_accuracy_ci95=_ci(robust, n_examples),
        autoattack={"version": "standard", "seed": 0, "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"],
                    "accuracy_after": {"clean": clean, "apgd-ce": min(clean,
                                                                      (k + round(0.02 * n_examples)) / n_examples),
                                       "apgd-t": robust,
                                       "fab-t": robust, "square": robust},
                    "checks": aa_checks, "n_attacked": round(clean * n_examples),
                    "n_skipped_misclassified": n_examples - round(clean * n_examples),
                    "n_skipped_certified": 0, "seconds_per_attack": {"apgd-ce": 1.0}, "batch_size": 500},
        params=params, inference_flops=flops, flops_convention=FLOPS_CONVENTION, forward_passes=1,
        training_flops={"value": tf, "source": "estimated" if tf else "unknown", "formula": "synthetic",
                        "convention": FLOPS_CONVENTION},
        certified=cert, diagnostics=diagnostics or None,
        provenance={"harness_version": "0.1.0", "python": "3.11", "packages": {"torch": "2"}, "device": "cpu",
                    "checkpoint_sha256": checkpoint_sha, "submission_sha256": submission_sha,
                    "files_sha256": files_sha,
                    "data_source": "synthetic", "seed": 0, "batch_size": 500,
                    "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00",
                    "stage_seconds": {"clean": 1.0}, "command": f"harness eval submissions/{sub_id}/submission.yaml"},
    )


def write_submission(root: Path, sub_id: str, board: tuple, checkpoint_sha: str, *,
                     paper_url: str | None = None) -> Path:
    dataset, norm, _, eps_text, _, _ = board
    spec: dict[str, Any] = {
        "id": sub_id, "name": f"Synthetic model {sub_id}", "authors": ["synthetic"], "license": "MIT",
        "dataset": dataset, "threat_model": {"norm": norm, "eps": eps_text},
        "model": {"format": "state_dict",
                  "architecture": "cifar_small_cnn" if dataset != "mnist" else "mnist_small_cnn",
                  "checkpoint": {"path": "model.safetensors", "sha256": checkpoint_sha}},
        "training": {"method": "pgd", "attack_steps": 10, "epochs": 10},
        "evaluation": {"n_examples": 1000, "seed": 0},
    }
    if paper_url:
        spec["paper"] = {"title": "A synthetic paper", "url": paper_url}
    folder = root / "submissions" / sub_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "submission.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def example_arrays(rec: ResultRecord, rng: random.Random) -> dict[str, np.ndarray]:
    """Per-example flags that agree with the record's accuracies and nest (certified within robust
    within correct), as ``harness.record.read_examples`` requires."""
    g = np.random.default_rng(rng.randrange(2 ** 31))
    n = rec.n_examples
    order = g.permutation(n)

    def first(acc: float | None) -> np.ndarray:
        flags = np.zeros(n, bool)
        if acc is not None:
            flags[order[: round(acc * n)]] = True  # the same order: smaller accuracies nest in larger ones
        return flags

    arrays = {"index": np.arange(n), "label": g.integers(0, 10, size=n).astype(np.int16),
              "clean_correct": first(rec.clean_accuracy), "autoattack_robust": first(rec.robust_accuracy)}
    for m, c in (rec.certified or {}).items():
        arrays[f"certified_{m}"] = first(c.certified_accuracy)
    return arrays


def gallery_arrays(rng: random.Random, shape: tuple[int, ...], k: int = 4) -> dict[str, np.ndarray]:
    g = np.random.default_rng(rng.randrange(2 ** 31))
    clean = g.integers(0, 256, size=(k, *shape), dtype=np.uint8)
    adv = np.clip(clean.astype(int) + g.integers(-20, 21, size=clean.shape), 0, 255).astype(np.uint8)
    return {"gallery_index": np.arange(k), "gallery_clean": clean, "gallery_adv": adv,
            "gallery_adv_pred": g.integers(0, 10, size=k)}


SYNTHETIC_KEY = "synthetic-ed25519"
SIGNED_AT = "2026-01-01T00:02:00Z"


def synthetic_key(root: Path):
    """The repository's throw-away signing key, made (and its public half trusted) on first use."""
    from harness.record.signing import keygen, load_signing_key

    priv = Path(root) / ".keys" / f"{SYNTHETIC_KEY}.pem"
    if not priv.exists():
        _, pub, _ = keygen(priv.parent, SYNTHETIC_KEY)
        keys = Path(root) / "leaderboard" / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        pub.replace(keys / pub.name)
    return load_signing_key(priv)


def resign(root: Path, *records: Path) -> None:
    """Sign ``records`` again with the repository's key (a test's edit is then signed as if the
    trusted evaluation had written it; the records are not checked first)."""
    from harness.record.signing import sign_record

    key = synthetic_key(root)
    for p in records:
        sign_record(Path(p), key, check=False, signed_at=SIGNED_AT)


def write_synthetic_repo(root: Path, n: int, *, seed: int = 0, gallery: int = 0, reported_csv: Path | None = None,
                         prefix: str = "syn", sign: bool = True) -> list[str]:
    """Write ``n`` synthetic submissions and records under ``root``; returns their ids.

    Every record gets an ``.examples.npz`` whose flags agree with it; ``gallery``: how many of them
    (the first) also get gallery images. Each submission folder holds a small stand-in checkpoint file
    (its hash is the record's, so the folder digest checks out; nothing ever loads it).
    ``reported_csv``: copied to ``root/leaderboard/reported.csv`` when given. ``sign``: sign every
    record with the repository's throw-away key (:func:`synthetic_key`); without, they are unsigned
    (a local board shows them, the published one refuses them).
    """
    from harness.record.write import write_record
    from harness.submission.load import parse_submission, verify_files

    rng = random.Random(seed)
    root = Path(root)
    results = root / "leaderboard" / "results"
    results.mkdir(parents=True, exist_ok=True)
    weights = [b[5] for b in BOARDS]
    ids = []
    for i in range(n):
        board = BOARDS[0] if i == 0 else rng.choices(BOARDS, weights)[0]
        sub_id = f"{prefix}-{i:04d}"
        ck_file = root / "submissions" / sub_id / "model.safetensors"
        ck_file.parent.mkdir(parents=True, exist_ok=True)
        ck_file.write_text(f"synthetic stand-in checkpoint {rng.getrandbits(256):064x}\n", encoding="utf-8")
        ck = sha256_file(ck_file)
        yaml_path = write_submission(root, sub_id, board, ck,
                                     paper_url="https://example.org/paper" if i % 7 == 0 else None)
        sub, _ = parse_submission(yaml_path)
        rec = synthetic_record(
            sub_id, rng, board=board, submission_sha=sha256_file(yaml_path), checkpoint_sha=ck,
            files_sha=verify_files(sub), certified=(i % 3 == 0), flags=(i % 11 == 5),
            separation=0.4 if board[0] == "mnist" else None, training_flops=(i % 4 != 3))
        arrays = example_arrays(rec, rng)
        if i < gallery:
            arrays.update(gallery_arrays(rng, board[4]))
        write_record(rec, arrays, results / f"{sub_id}.json")
        if sign:
            resign(root, results / f"{sub_id}.json")
        ids.append(sub_id)
    if reported_csv is not None:
        (root / "leaderboard" / "reported.csv").write_bytes(Path(reported_csv).read_bytes())
    return ids
