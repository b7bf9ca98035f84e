"""``harness attack-check`` end to end, through the CLI as a user runs it, on the bundled MNIST entry
mnist-pgd: a many-restart PGD (tests/helpers/attack.py, written independently of the harness) breaks
the points that a deliberately weakened AutoAttack record left standing; the attack record is
signed with the throw-away key of the temporary repository (``harness sign``), and the rebuilt board
(``harness leaderboard build``) shows best-known accuracy lowered by exactly the examples broken,
AutoAttack's number beside it, and the entry page lists the evaluation with its provenance and the
examples it broke that AutoAttack missed. Then out-of-ball, out-of-range, wrong-index,
correctly-classified and duplicated examples are each refused with one ``error:`` line, and the
attack record already there, the entry's record and the board inputs stay byte for byte as they were."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers.attack import ENTRY, attack_dir, model_and_data, pgd, weakened_repo

from harness.cli import main

NAME = "pgd-restarts"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _entry(site: Path) -> dict:
    doc = json.loads((site / "leaderboard.json").read_text(encoding="utf-8"))
    rows = [e for b in doc["boards"] for e in b["entries"] if e["id"] == ENTRY]
    assert len(rows) == 1
    return rows[0]


def _snapshot(root: Path) -> dict:
    res = root / "leaderboard"
    return {p.relative_to(root): p.read_bytes() for p in res.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("e2e")
    key = tmp / "throwaway.pem"  # outside the repository copy
    repo = weakened_repo(tmp / "repo", key_pem=key)
    root = repo["root"]
    model, data = model_and_data(root)
    pos = repo["weakened"]
    x, y = data.floats(pos), data.labels(pos)
    adv, wrong = pgd(model, x, y, 0.3, steps=50, restarts=3)
    assert int(wrong.sum()) >= 3, "many-restart PGD breaks points APGD-CE broke"
    keep = wrong.numpy()
    with np.load(root / "leaderboard" / "results" / f"{ENTRY}.examples.npz") as z:
        arrays = {k: z[k] for k in ("index", "clean_correct", "autoattack_robust")}
    return {**repo, "key_pem": key, "index": pos[keep], "adv": adv[keep].numpy(), "clean": x[keep].numpy(),
            "arrays": arrays, "tmp": tmp}


def test_external_pgd_lowers_best_known_on_the_rebuilt_board_and_bad_examples_are_refused(board, capsys):
    root, tmp = board["root"], board["tmp"]
    n = int(board["arrays"]["index"].size)
    robust = board["arrays"]["autoattack_robust"] & board["arrays"]["clean_correct"]
    aa = int(robust.sum()) / n

    code, _, err = _cli(capsys, "leaderboard", "build", "--root", str(root), "--out", str(tmp / "site0"))
    assert code == 0, err
    before = _entry(tmp / "site0")
    assert before["best_known_robust_accuracy"] == pytest.approx(aa) and before["best_known_source"] == "AutoAttack"

    yaml = attack_dir(root, NAME, board["index"], board["adv"])
    published = root / "leaderboard" / "results" / "attacks" / ENTRY / f"{NAME}.json"
    code, out, err = _cli(capsys, "attack-check", str(yaml), "--out", str(published))
    assert code == 0, err
    k = len(board["index"])
    assert f"{k} submitted example(s), all checked and misclassified; {k} of them AutoAttack had missed" in out
    code, out, err = _cli(capsys, "sign", str(published), "--key", str(board["key_pem"]))
    assert code == 0 and "signed by key" in out, err

    code, _, err = _cli(capsys, "leaderboard", "build", "--root", str(root), "--out", str(tmp / "site1"))
    assert code == 0, err
    after = _entry(tmp / "site1")
    # independent: the points AutoAttack left standing minus the ones PGD broke, over N
    still = robust.copy()
    still[np.isin(board["arrays"]["index"], board["index"])] = False
    assert after["best_known_robust_accuracy"] == pytest.approx(int(still.sum()) / n)
    assert after["best_known_robust_accuracy"] == pytest.approx(aa - k / n)
    assert after["best_known_robust_accuracy"] < before["best_known_robust_accuracy"]
    assert after["autoattack_accuracy"] == pytest.approx(aa)  # AutoAttack's own number stays beside it
    assert after["best_known_source"] == f"{NAME} (external)"
    lo, hi = after["best_known_robust_accuracy_ci95"]
    assert lo <= after["best_known_robust_accuracy"] <= hi
    ext = after["external_evaluations"]
    assert [x["attack_name"] for x in ext] == [NAME] and ext[0]["trust"] == "verified"

    # the entry page: the evaluation, its provenance, and the examples it broke that AutoAttack missed
    page = html.unescape((tmp / "site1" / "entries" / f"{ENTRY}.html").read_text(encoding="utf-8"))
    block = page.split(f'id="attack-{NAME}"', 1)[1].split("</table>", 1)[0]
    assert "A. Tester" in block and "PGD-50, Linf, step 0.02, random start" in block
    assert "https://example.org/pgd" in block and "MIT" in block
    rec = json.loads(published.read_text())
    assert rec["provenance"]["attack_yaml_sha256"] in block and rec["provenance"]["adversarial_npz_sha256"] in block
    assert f"harness attack-check {yaml} --out {published}" in block  # the command that checked it
    assert rec["signature"]["key_id"] in block
    missed = re.search(r'<td class="missed">(.*?)</td>', block).group(1)
    assert missed == f"{k}: " + ", ".join(f"#{int(i)}" for i in sorted(board["index"]))

    # each bad example: one error line, the attack record and every record unchanged
    bad = {}
    imgs = board["adv"].copy()
    imgs[0] = np.clip(board["clean"][0] + 0.31, 0, 1)
    bad["outside the Linf ball"] = (board["index"], imgs)
    imgs = board["adv"].copy()
    imgs[1, 0, 0, 0] = 1.01
    bad["pixels outside [0, 1]"] = (board["index"], imgs)
    idx = board["index"].copy()
    idx[0] = n  # the record evaluated the first n points
    bad["not in the record's evaluated set"] = (idx, board["adv"])
    imgs = board["adv"].copy()
    imgs[0] = board["clean"][0]
    bad["classifies the submitted image correctly"] = (board["index"], imgs)
    idx = board["index"].copy()
    idx[1] = idx[0]
    bad["more than once"] = (idx, board["adv"])
    snap = _snapshot(root)
    for i, (what, (index, images)) in enumerate(bad.items()):
        yaml = attack_dir(root, f"bad{i}", index, images)
        code, out, err = _cli(capsys, "attack-check", str(yaml), "--out", str(published))
        assert code == 2 and out == "", what
        assert err.count("\n") == 1 and err.startswith("error: ") and what in err, err
        assert "nothing was written" in err
        assert _snapshot(root) == snap, what
