"""harness attack-check end to end on the bundled MNIST entry mnist-pgd: a PGD attack written here
with torch breaks points that a deliberately weakened AutoAttack record (made here, signed with a
throw-away key) left standing; every kind of bad example is refused in one line with nothing written.

The weakened record: 12 of the points AutoAttack's APGD-CE broke are marked robust (as if APGD-CE
had missed them), with every summary figure recomputed so that the record passes all invariants."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.core.errors import HarnessError
from harness.core.stats import accuracy_with_ci
from harness.record.attack import BOX_ATOL, NORM_ATOL, read_attack_record
from harness.record.signing import generate_key, load_trusted_keys, private_pem, public_pem, sign_record, verify_record
from harness.review.attack_check import attack_check

REPO = Path(__file__).resolve().parents[3]
ENTRY = "mnist-pgd"
N_WEAKENED = 12
YAML = ("authors: [A. Tester]\nmethod: PGD-50, Linf, step 0.02, random start\n"
        "url: https://example.org/pgd\nlicence: MIT\n")


def _weaken(rec_path: Path, npz_path: Path) -> np.ndarray:
    """Mark N_WEAKENED points broken by APGD-CE (broken_by 0) robust; returns their positions."""
    raw = json.loads(rec_path.read_text())
    with np.load(npz_path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    pos = np.nonzero(arrays["autoattack_broken_by"] == 0)[0][:N_WEAKENED]
    arrays["autoattack_robust"][pos] = True
    arrays["autoattack_broken_by"][pos] = -1
    n = raw["n_examples"]
    acc, ci = accuracy_with_ci(arrays["autoattack_robust"])
    raw["robust_accuracy"], raw["robust_accuracy_ci95"] = acc, list(ci)
    aa = raw["autoattack"]
    for a in aa["attacks"]:
        aa["accuracy_after"][a] = round(aa["accuracy_after"][a] * n + N_WEAKENED) / n
    raw["signature"] = None
    if raw.get("diagnostics") and raw["diagnostics"].get("ladder"):
        raw["diagnostics"]["ladder"]["autoattack"] = acc
    np.savez(npz_path, **arrays)
    rec_path.write_text(json.dumps(raw, indent=2) + "\n")
    return pos


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> dict:
    """A repository copy: the entry, its weakened record signed by a throw-away trusted key."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPO / "submissions" / ENTRY, root / "submissions" / ENTRY)
    res = root / "leaderboard" / "results"
    res.mkdir(parents=True)
    for suffix in (".json", ".examples.npz"):
        shutil.copy2(REPO / "leaderboard" / "results" / f"{ENTRY}{suffix}", res / f"{ENTRY}{suffix}")
    pos = _weaken(res / f"{ENTRY}.json", res / f"{ENTRY}.examples.npz")
    key = generate_key()
    (root / "leaderboard" / "keys").mkdir()
    (root / "leaderboard" / "keys" / "test.pub.pem").write_bytes(public_pem(key))
    (root / "test-key.pem").write_bytes(private_pem(key))
    sign_record(res / f"{ENTRY}.json", key)
    return {"root": root, "weakened": pos, "key": key}


def _model_and_data(root: Path):
    from harness.data.loaders import load_test_data
    from harness.models.load import load_model
    from harness.submission.load import load_submission

    sub = load_submission(root / "submissions" / ENTRY / "submission.yaml")
    model = load_model(sub, input_shape=(1, 28, 28), num_classes=10, device=torch.device("cpu")).module.eval()
    return model, load_test_data("mnist", 500)


def pgd(model, x, y, eps, steps=50, alpha=0.02, seed=0):
    """A plain Linf PGD with random start (Madry et al.), written independently of the harness."""
    g = torch.Generator().manual_seed(seed)
    xa = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xa), y)
        (grad,) = torch.autograd.grad(loss, xa)
        xa = (x + (xa.detach() + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    with torch.no_grad():
        return xa, model(xa).argmax(1) != y


def _attack_dir(root: Path, name: str, index, images) -> Path:
    d = root / "submissions" / ENTRY / "attacks" / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    (d / "attack.yaml").write_text(YAML)
    np.savez(d / "adversarial.npz", index=np.asarray(index, dtype=np.int64), images=np.asarray(images))
    return d / "attack.yaml"


@pytest.fixture(scope="module")
def broken(repo) -> dict:
    """PGD on the weakened points: the images that break them (all 12 on this model)."""
    model, data = _model_and_data(repo["root"])
    pos = repo["weakened"]
    x, y = data.floats(pos), data.labels(pos)
    xa, wrong = pgd(model, x, y, 0.3)
    assert wrong.sum() >= 1, "PGD should break points APGD-CE broke"
    keep = wrong.numpy()
    return {"index": pos[keep], "images": xa[keep].numpy(), "clean": x.numpy()[keep], "all_pos": pos, "y": y}


def _snapshot(root: Path) -> dict:
    res = root / "leaderboard" / "results"
    return {p.relative_to(root): p.read_bytes() for p in res.rglob("*") if p.is_file()}


def _refused(repo, yaml, match: str) -> str:
    before = _snapshot(repo["root"])
    out = repo["root"] / "out" / "a.json"
    with pytest.raises(HarnessError) as e:
        attack_check(yaml, out=out, sandbox="none")
    msg = str(e.value)
    assert "\n" not in msg and match in msg, msg
    assert not out.exists() and _snapshot(repo["root"]) == before  # the record is left unchanged
    return msg


@pytest.mark.slow  # the sandboxed worker starts torch: a few seconds
def test_pgd_breaks_points_the_weakened_autoattack_missed_through_the_worker(repo, broken):
    root = repo["root"]
    yaml = _attack_dir(root, "pgd100", broken["index"], broken["images"])
    rec_json = root / "leaderboard" / "results" / f"{ENTRY}.json"
    raw = json.loads(rec_json.read_text())
    with np.load(rec_json.with_name(f"{ENTRY}.examples.npz")) as z:
        robust = z["autoattack_robust"].copy()
    res = attack_check(yaml, sandbox="worker", command="test")
    r = res.record
    assert res.out == root / "leaderboard" / "results" / "local" / "attacks" / ENTRY / "pgd100.json"
    k = len(broken["index"])
    assert r.n_submitted == k and r.broken_index == sorted(int(i) for i in broken["index"])
    assert r.missed_by_autoattack == r.broken_index  # every one was marked robust by the weakened record
    # independent: robust points minus the ones broken, over N
    assert r.best_known_accuracy == pytest.approx((robust.sum() - k) / raw["n_examples"])
    assert r.best_known_accuracy < raw["robust_accuracy"]
    assert r.tolerance.norm_atol == NORM_ATOL and r.tolerance.box_atol == BOX_ATOL
    assert r.provenance.record_signed_by == "test" and r.provenance.sandbox
    # written, readable, signable with the throw-away key, and the signature verifies
    assert read_attack_record(res.out).entry_id == ENTRY
    assert sign_record(res.out, repo["key"]).status == "signed"
    assert verify_record(res.out, load_trusted_keys(root / "leaderboard" / "keys")).key_name == "test"
    # the committed path: leaderboard/results/attacks/<entry>/<name>.json
    committed = root / "leaderboard" / "results" / "attacks" / ENTRY / "pgd100.json"
    committed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(res.out, committed)
    verify_record(committed, load_trusted_keys(root / "leaderboard" / "keys"))
    # one byte of adversarial.npz changed after signing: refused
    npz = yaml.parent / "adversarial.npz"
    data = bytearray(npz.read_bytes())
    data[-30] ^= 1
    npz.write_bytes(bytes(data))
    with pytest.raises(HarnessError, match="changed after the check"):
        verify_record(committed, load_trusted_keys(root / "leaderboard" / "keys"))
    shutil.rmtree(committed.parent.parent)


def test_out_of_ball_is_refused(repo, broken):
    imgs = broken["images"].copy()
    imgs[0] = np.clip(broken["clean"][0] + 0.3 + 0.01, 0, 1)  # 0.31 > eps 0.3 somewhere
    msg = _refused(repo, _attack_dir(repo["root"], "ball", broken["index"], imgs), "outside the Linf ball")
    assert f"index {int(broken['index'][0])}" in msg


def test_out_of_ball_by_less_than_the_tolerance_is_accepted_by_the_ball_check(repo, broken):
    from harness.review.attack_check import check_ball

    x = broken["clean"][:1].astype(np.float32)
    inside = np.clip(x + np.float32(0.3 + NORM_ATOL / 2), 0, 1)
    check_ball("t", np.array([0]), inside, x, norm="Linf", eps=0.3)
    with pytest.raises(HarnessError, match="outside the Linf ball"):
        check_ball("t", np.array([0]), np.clip(x + np.float32(0.3 + 3 * NORM_ATOL), 0, 1), x, norm="Linf", eps=0.3)


def test_out_of_range_pixels_are_refused(repo, broken):
    imgs = broken["images"].copy()
    imgs[1, 0, 0, 0] = 1.01
    _refused(repo, _attack_dir(repo["root"], "range", broken["index"], imgs), "pixels outside [0, 1]")


def test_wrong_index_is_refused(repo, broken):
    index = broken["index"].copy()
    index[0] = 500  # the record evaluated the first 500 points
    _refused(repo, _attack_dir(repo["root"], "idx", index, broken["images"]), "not in the record's evaluated set")


def test_duplicated_index_is_refused(repo, broken):
    index = broken["index"].copy()
    index[1] = index[0]
    _refused(repo, _attack_dir(repo["root"], "dup", index, broken["images"]), "more than once")


def test_correctly_classified_image_is_refused(repo, broken):
    imgs = broken["images"].copy()
    imgs[0] = broken["clean"][0]  # the clean image: the model gets it right (a forged example)
    msg = _refused(repo, _attack_dir(repo["root"], "forged", broken["index"], imgs),
                   "classifies the submitted image correctly")
    assert f"index {int(broken['index'][0])}" in msg


def test_misclassified_clean_point_and_bad_yaml_and_pickles_are_refused(repo, broken):
    with np.load(repo["root"] / "leaderboard" / "results" / f"{ENTRY}.examples.npz") as z:
        wrong = int(np.nonzero(~z["clean_correct"])[0][0])
    _refused(repo, _attack_dir(repo["root"], "clean", [wrong], broken["images"][:1]), "already misclassifies")
    yaml = _attack_dir(repo["root"], "extra", broken["index"], broken["images"])
    yaml.write_text(YAML + "score: 0.1\n")
    assert "score: unknown field" in _refused(repo, yaml, "unknown field")
    yaml = _attack_dir(repo["root"], "pickle", broken["index"], broken["images"])
    np.save(yaml.parent / "adversarial.npz", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (yaml.parent / "adversarial.npz.npy").rename(yaml.parent / "adversarial.npz")
    _refused(repo, yaml, "adversarial.npz")


def test_attack_outside_the_attacks_folder_is_refused(tmp_path):
    p = tmp_path / "attack.yaml"
    p.write_text(YAML)
    with pytest.raises(HarnessError, match="submissions/<entry-id>/attacks/<name>/attack.yaml"):
        attack_check(p, sandbox="none")


def test_adding_an_attack_keeps_the_entry_folder_digest(repo):
    from harness.submission.load import load_submission
    from harness.submission.manifest import check

    sub = load_submission(repo["root"] / "submissions" / ENTRY / "submission.yaml")
    problems, digest = check(sub)
    raw = json.loads((repo["root"] / "leaderboard" / "results" / f"{ENTRY}.json").read_text())
    assert not problems and digest == raw["provenance"]["files_sha256"]
