"""Shared by the attack-check tests (tests/unit/review/test_attack_check.py, tests/e2e/test_attack_check_board.py,
tests/unit/review/test_prcheck_attacks.py): a copy
of the bundled MNIST entry mnist-pgd whose record is deliberately weakened and signed by a throw-away
key, and a plain many-restart PGD written here, independently of the harness.

The weakened record: ``N_WEAKENED`` of the points that AutoAttack's APGD-CE broke are marked robust
(as if APGD-CE had missed them), with every summary figure recomputed so that the record passes all
of the harness's invariants. (On the bundled entries AutoAttack misses nothing that PGD finds: 8
restarts x 100 steps of PGD with CE and margin losses broke none of the 205 points AutoAttack left
standing on mnist-fgsm, so a real miss has to be made.)"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from harness.core.stats import accuracy_with_ci
from harness.record.signing import generate_key, private_pem, public_pem, sign_record
from helpers.spec import REPO

ENTRY = "mnist-pgd"
N_WEAKENED = 12
YAML = ("authors: [A. Tester]\nmethod: PGD-50, Linf, step 0.02, random start\n"
        "url: https://example.org/pgd\nlicence: MIT\n")


def weaken(rec_path: Path, npz_path: Path, n: int = N_WEAKENED) -> np.ndarray:
    """Mark ``n`` points broken by APGD-CE (broken_by 0) robust; returns their positions."""
    raw = json.loads(rec_path.read_text())
    with np.load(npz_path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    pos = np.nonzero(arrays["autoattack_broken_by"] == 0)[0][:n]
    arrays["autoattack_robust"][pos] = True
    arrays["autoattack_broken_by"][pos] = -1
    total = raw["n_examples"]
    acc, ci = accuracy_with_ci(arrays["autoattack_robust"])
    raw["robust_accuracy"], raw["robust_accuracy_ci95"] = acc, list(ci)
    aa = raw["autoattack"]
    for a in aa["attacks"]:
        aa["accuracy_after"][a] = round(aa["accuracy_after"][a] * total + n) / total
    raw["signature"] = None
    if raw.get("diagnostics") and raw["diagnostics"].get("ladder"):
        raw["diagnostics"]["ladder"]["autoattack"] = acc
    np.savez(npz_path, **arrays)
    rec_path.write_text(json.dumps(raw, indent=2) + "\n")
    return pos


def weakened_repo(root: Path, key_pem: Path | None = None) -> dict:
    """``root``: the entry's folder and its weakened record, signed by a fresh throw-away key whose
    public half is in ``root/leaderboard/keys/`` (the private half at ``key_pem``, if given)."""
    shutil.copytree(REPO / "submissions" / ENTRY, root / "submissions" / ENTRY)
    res = root / "leaderboard" / "results"
    res.mkdir(parents=True)
    for suffix in (".json", ".examples.npz"):
        shutil.copy2(REPO / "leaderboard" / "results" / f"{ENTRY}{suffix}", res / f"{ENTRY}{suffix}")
    pos = weaken(res / f"{ENTRY}.json", res / f"{ENTRY}.examples.npz")
    key = generate_key()
    (root / "leaderboard" / "keys").mkdir()
    (root / "leaderboard" / "keys" / "test.pub.pem").write_bytes(public_pem(key))
    if key_pem is not None:
        key_pem.write_bytes(private_pem(key))
        key_pem.chmod(0o600)
    sign_record(res / f"{ENTRY}.json", key)
    return {"root": root, "weakened": pos, "key": key}


def model_and_data(root: Path):
    from harness.data.loaders import load_test_data
    from harness.models.load import load_model
    from harness.submission.load import load_submission

    sub = load_submission(root / "submissions" / ENTRY / "submission.yaml")
    model = load_model(sub, input_shape=(1, 28, 28), num_classes=10, device=torch.device("cpu")).module.eval()
    return model, load_test_data("mnist", 500)


def pgd(model, x, y, eps, steps=50, alpha=0.02, seed=0, restarts=1):
    """A plain Linf PGD with random start (Madry et al.), written independently of the harness, with
    ``restarts`` random starts: a point counts as broken if any restart breaks it, and the image
    returned is the first one that did (else the last restart's)."""
    g = torch.Generator().manual_seed(seed)
    best = x.clone()
    wrong = torch.zeros(x.shape[0], dtype=torch.bool)
    for _ in range(restarts):
        xa = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
        for _ in range(steps):
            xa.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(xa), y)
            (grad,) = torch.autograd.grad(loss, xa)
            xa = (x + (xa.detach() + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
        with torch.no_grad():
            now = model(xa).argmax(1) != y
        take = now & ~wrong
        best[take] = xa[take]
        best[~wrong & ~now] = xa[~wrong & ~now]
        wrong |= now
    return best, wrong


def attack_dir(root: Path, name: str, index, images, yaml_text: str = YAML) -> Path:
    """``submissions/<entry>/attacks/<name>/`` with attack.yaml and adversarial.npz; returns the yaml."""
    d = root / "submissions" / ENTRY / "attacks" / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    (d / "attack.yaml").write_text(yaml_text)
    np.savez(d / "adversarial.npz", index=np.asarray(index, dtype=np.int64), images=np.asarray(images))
    return d / "attack.yaml"
