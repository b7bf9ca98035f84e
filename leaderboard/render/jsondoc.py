"""``leaderboard.json``: every board, entry and computed figure, machine-readable.

Accuracies are fractions; FLOPs follow fvcore's convention (1 per multiply-add); a value that is
unknown is ``null``. The efficiency figure ``flop_saving`` is ``null`` for the most robust entry
(its "infinite" saving) and says so in ``flop_saving_note``.
"""
from __future__ import annotations

import json
import math
from typing import Any

from harness.record.schema import FLOPS_CONVENTION
from leaderboard.boards import FRONTIERS, Board, Entry, Inputs, coverage, worked_example
from leaderboard.fmt import saving_title
from leaderboard.urls import safe_url

JSON_SCHEMA_VERSION = 3  # 3: best-known accuracy, tie groups, external evaluations (issue 18)
EFFICIENCY_DEFINITION = (
    "flop_saving = (inference FLOPs of the cheapest other entry on the board whose AutoAttack accuracy is "
    "at least this entry's) / (this entry's inference FLOPs). Above 1: the entry reaches its robustness "
    "that many times more cheaply than any other entry (it is on the frontier); below 1: another entry is "
    "at least as robust for that fraction of the compute; null with note 'most robust': no other entry is "
    "at least as robust."
)
#: the ranking rule in three sentences (the page, leaderboard.md and leaderboard.json state it; each board adds
#: a worked example generated from its own entries, :func:`leaderboard.boards.worked_example`)
RANKING_RULE = (
    "Entries are ranked by best-known robust accuracy: the lowest accuracy that any accepted attack reached "
    "(AutoAttack, RobustBench's external evaluations, or external attacks checked by harness attack-check). "
    "Walking down that order, entries whose 95% confidence intervals all overlap one another form a statistical "
    "tie group (a maximal run of consecutive entries whose intervals share a common point), so an entry that is "
    "measurably more robust than another, with a disjoint interval, always ranks above it. "
    "Within a tie group the entry with fewer inference FLOPs ranks first, then, among equal inference FLOPs, the "
    "one with fewer training FLOPs when all of them are known exactly, then the one with the higher best-known "
    "accuracy."
)
COMPUTE_DEFINITION = (
    "Frontier membership, compute overhead and robustness gap are facts about the board, shown beside the rank "
    "and sortable, not part of it: an entry is on a frontier when nothing on its board is at least as robust "
    "(best-known accuracy) for less compute; an entry whose best-known accuracy is not measurably above zero "
    "(its 95% interval contains 0) is on no frontier of it. Compute overhead = the entry's inference FLOPs / the "
    "least inference FLOPs of any entry at least as robust (1× = nothing at least as robust is cheaper). "
    "Robustness gap = the highest best-known accuracy reached with at most the entry's inference FLOPs, minus its "
    "own (0 = nothing as cheap is more robust)."
)
RANKING_DEFINITION = RANKING_RULE + " " + COMPUTE_DEFINITION


def _f(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _ci(c) -> list[float] | None:
    return None if c is None else [float(c[0]), float(c[1])]


def _signature(e: Entry) -> dict[str, Any] | None:
    """The signature of the entry's record that the build verified (harness.record.signing.Verified)."""
    v = e.signed_by
    if v is None:
        return None
    return {"key_id": v.key_id, "key_name": v.key_name, "signed_at": v.signed_at,
            "examples_sha256": v.examples_sha256}


def entry_page(e: Entry) -> str:
    return f"entries/{e.slug}.html"


def entry_json(e: Entry) -> dict[str, Any]:
    return {
        "id": e.id,
        "name": e.name,
        "source": e.kind,
        "trust": e.trust or e.kind,
        "signature": _signature(e),
        "page": entry_page(e),
        "url": safe_url(e.url),
        "paper_title": e.paper_title or None,
        "venue": e.venue or None,
        "year": int(e.year) if e.year.isdigit() else None,
        "architecture": e.architecture or None,
        "extra_data": bool(e.extra_data),
        "extra_data_detail": e.extra_data or None,
        "robustbench_additional_data": e.additional_data,
        "training_method": e.training_method or None,
        "dataset": e.dataset,
        "threat_model": {"norm": e.norm, "eps": e.eps},
        "board_eps": e.board_eps,
        "n_examples": e.n_examples,
        "rank": e.rank,
        "tied": e.tied,
        "tie_group": list(e.tie_group) if e.tie_group else None,
        "tie_break": e.tie_break or None,
        "measurably_robust": e.measurably_robust,
        "frontier_layer": e.layer,
        "on_frontier": dict(e.on_frontier),
        "compute_overhead": _f(e.overhead),
        "robustness_gap": _f(e.gap),
        "training_compute_overhead": _f(e.training_overhead),
        "training_robustness_gap": _f(e.training_gap),
        "flop_saving": _f(e.flop_saving),
        "flop_saving_note": saving_title(e.flop_saving),
        "clean_accuracy": e.clean,
        "clean_accuracy_ci95": _ci(e.clean_ci),
        "robust_accuracy": e.robust,
        "robust_accuracy_ci95": _ci(e.robust_ci),
        "best_known_robust_accuracy": e.best_known,
        "best_known_robust_accuracy_ci95": _ci(e.best_known_ci),
        "best_known_source": e.best_known_source or None,
        "best_known_note": e.best_known_note or None,
        "autoattack_accuracy": e.robust,
        "external_evaluations": [external_json(x) for x in e.external],
        "potentially_unreliable": any(f.name == "unreliable" for f in e.flags),
        "ci_note": e.ci_note,
        "certified_accuracy": e.certified,
        "certified_accuracy_ci95": _ci(e.certified_ci),
        "certified_method": e.certified_method,
        "acr": e.acr,
        "params": e.params,
        "inference_flops": _f(e.inference_flops),
        "training_flops": _f(e.training_flops),
        "training_flops_source": e.training_flops_source,
        "training_flops_bound": e.training_flops_bound,
        "forward_passes": e.forward_passes,
        "compute_source": e.compute_note or None,
        "flags": [{"name": f.name, "message": f.message, "severity": f.severity} for f in e.flags],
        "separation": e.separation,
    }


def external_json(x) -> dict[str, Any]:
    """An external attack record as the board shows it (leaderboard.best_known.ExternalEvaluation)."""
    return {
        "attack_name": x.attack_name,
        "record": x.rel_path,
        "trust": x.trust,
        "signature": (None if x.signed_by is None
                      else {"key_id": x.signed_by.key_id, "signed_at": x.signed_by.signed_at}),
        "applied": x.applied,
        "stale": x.stale,
        "authors": list(x.metadata.get("authors") or []),
        "method": x.metadata.get("method") or None,
        "url": safe_url(x.metadata.get("url")),
        "licence": x.metadata.get("licence"),
        "tolerance": x.tolerance,
        "n_submitted": x.n_submitted,
        "n_broken": len(x.broken),
        "missed_by_autoattack": list(x.missed_by_autoattack),
        "accuracy_with_this_attack": x.accuracy_alone,
        "provenance": {k: x.provenance.get(k) for k in ("harness_version", "device", "seed", "started_at",
                                                          "finished_at", "seconds", "attack_yaml_sha256",
                                                          "adversarial_npz_sha256", "command")
                       if k in x.provenance},
    }


def board_json(b: Board) -> dict[str, Any]:
    return {
        "id": b.id,
        "title": b.title,
        "dataset": b.dataset,
        "threat_model": {"norm": b.norm, "eps": b.eps, "eps_label": b.eps_label},
        "separation": b.separation,
        "n_entries": len(b.entries),
        "coverage": coverage(b),
        "ranking_example": worked_example(b),
        "frontiers": {key: [e.id for e in b.entries if e.on_frontier.get(key)] for key, *_ in FRONTIERS},
        "scaling_fit": b.scaling.to_json() if b.scaling is not None else None,
        "entries": [entry_json(e) for e in b.entries],
    }


def site_json(boards: list[Board], inputs: Inputs) -> dict[str, Any]:
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "flops_convention": FLOPS_CONVENTION,
        "ranking": RANKING_DEFINITION,
        "ranking_rule": RANKING_RULE,
        "efficiency_figure": EFFICIENCY_DEFINITION,
        "boards": [board_json(b) for b in boards],
        "pending_submissions": inputs.pending,
        "local_board": inputs.local,
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
