"""One Flag type: the diagnostics create it, the record validates it, the leaderboard shows it; and the
CLI's summary table formats numbers as the leaderboard does."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from harness.core.errors import HarnessError
from harness.diagnostics import catastrophic_overfitting_flag, classify_autoattack_messages
from harness.record.read import parse_record_json, validate_record
from harness.record.schema import SEVERITIES, Flag, ResultRecord

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "leaderboard" / "results" / "mnist-fgsm-co.json"


def _raw() -> dict:
    return parse_record_json(COMMITTED.read_bytes(), str(COMMITTED))


def test_committed_flags_read_as_the_flag_type():
    rec = validate_record(_raw(), str(COMMITTED))
    flags = rec.diagnostic_flags()
    assert [(f.name, f.severity) for f in flags] == [("weak-attack-gap", "warning"),
                                                     ("catastrophic-overfitting", "error")]
    assert all(type(f) is Flag and f.severity in SEVERITIES for f in flags)
    assert flags[1].details["pgd_broken"] is True and flags[1].threshold == 0.05
    # what the record holds is exactly what the rule's flag serialises to
    assert rec.diagnostics["flags"] == [f.to_dict() for f in flags]


@pytest.mark.parametrize("edit, field", [
    (lambda f: f.update(severity="fatal"), "severity"),
    (lambda f: f.update(severity="critical"), "severity"),
    (lambda f: f.update(colour="red"), "colour"),
    (lambda f: f.pop("severity"), "severity"),
    (lambda f: f.update(name=""), "name"),
])
def test_the_record_refuses_a_bad_flag(edit, field):
    raw = _raw()
    edit(raw["diagnostics"]["flags"][1])
    with pytest.raises(HarnessError) as e:
        validate_record(raw, "rec.json")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("rec.json: invalid result record: diagnostics")
    assert f"flags[1].{field}" in msg


def test_an_unknown_severity_is_refused_where_a_flag_is_made():
    with pytest.raises(ValueError, match="'info', 'warning' or 'error'"):
        Flag("x", "fatal", "m")
    with pytest.raises(ValueError):
        Flag("x", "warning", "m", value=float("nan"))  # a record holds finite numbers only


def test_the_board_shows_a_diagnostics_flag_as_the_record_holds_it(tmp_path):
    from leaderboard.boards import load_entries
    from leaderboard.build import build_leaderboard
    from leaderboard.synthetic import resign, write_synthetic_repo

    root = tmp_path / "repo"
    (sub_id,) = write_synthetic_repo(root, 1)
    co = catastrophic_overfitting_flag(clean=0.95, fgsm=0.80, pgd=0.01)  # made by the diagnostics rule
    (aa,) = classify_autoattack_messages(["Square Attack has decreased the robust accuracy of 1.00%."])
    path = root / "leaderboard" / "results" / f"{sub_id}.json"
    d = json.loads(path.read_text(encoding="utf-8"))
    d["stages"].append("diagnostics")
    d["diagnostics"] = {"flags": [co.to_dict(), aa.to_dict()]}
    path.write_text(json.dumps(d), encoding="utf-8")
    resign(root, path)  # as the trusted evaluation would have signed it

    entry = next(e for e in load_entries(root).entries if e.id == sub_id)
    assert entry.flags[:2] == [co, aa] and all(type(f) is Flag for f in entry.flags)
    assert [f.name for f in entry.flags[2:]] == ["subset"]  # the board's own flag, after the record's

    out = build_leaderboard(root, tmp_path / "site")
    data = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    shown = next(e for b in data["boards"] for e in b["entries"] if e["id"] == sub_id)["flags"]
    assert shown[:2] == [{"name": "catastrophic-overfitting", "message": co.message, "severity": "error"},
                         {"name": "aa-square-beats-whitebox", "message": aa.message, "severity": "warning"}]
    html = (out / "index.html").read_text(encoding="utf-8")
    assert '<span class="flag error"' in html and ">catastrophic-overfitting</span>" in html
    assert ">aa-square-beats-whitebox</span>" in html
    assert "catastrophic-overfitting" in (out / "leaderboard.md").read_text(encoding="utf-8")


def test_an_autoattack_message_the_diagnostics_classified_is_shown_once():
    """AutoAttack's check messages reach the board as the diagnostics' aa-* flag when the record has
    one for them, and verbatim (``autoattack-check``) only when nothing classified them."""
    from harness.record.read import read_record
    from leaderboard.boards import _record_flags

    rec = read_record(Path(__file__).resolve().parents[3] / "leaderboard" / "results" / "mnist-pgd.json")
    assert rec.autoattack.checks  # the committed record holds AutoAttack's Square message
    names = [f.name for f in _record_flags(rec)]
    assert names.count("aa-square-beats-whitebox") == 1 and "autoattack-check" not in names
    bare = rec.model_copy(update={"diagnostics": None})
    assert [f.name for f in _record_flags(bare)].count("autoattack-check") == len(rec.autoattack.checks)


def test_cli_summary_table_uses_the_leaderboard_number_format():
    from harness.cli import summary_table
    from leaderboard.fmt import pct, pct_ci, si
    from leaderboard.synthetic import BOARDS, synthetic_record

    rec: ResultRecord = synthetic_record("syn-cli", random.Random(1), board=BOARDS[0], submission_sha="a" * 64,
                                         checkpoint_sha="b" * 64, certified=True, flags=True)
    text = summary_table(rec)
    lines = {ln.split("  ")[0].strip(): ln for ln in text.splitlines()}
    assert lines["clean accuracy"].endswith(pct_ci(rec.clean_accuracy, rec.clean_accuracy_ci95))
    assert lines["AutoAttack accuracy (standard)"].endswith(pct_ci(rec.robust_accuracy, rec.robust_accuracy_ci95))
    assert lines["after apgd-ce"].endswith(pct(rec.autoattack.accuracy_after["apgd-ce"]))
    c = rec.certified["ibp"]
    assert lines["certified accuracy, ibp"].endswith(pct_ci(c.certified_accuracy, c.certified_accuracy_ci95))
    assert lines["parameters"].endswith(si(rec.params))
    assert f"{si(rec.inference_flops)} (1 per multiply-add, fvcore)" in lines["inference FLOPs"]
    assert f"{si(rec.training_flops.value)} (estimated)" in lines["training FLOPs"]
    assert lines["diagnostic flags"].endswith("weak-attack-gap (error)")
    # hand-checked forms: 3 significant digits with an SI prefix, percentages with 2 decimals
    assert si(53_300_000_000) == "53.3 G" and si(609_000) == "609 k"
    assert pct_ci(0.5, (0.4, 0.6)) == "50.00% [40.0, 60.0]"
