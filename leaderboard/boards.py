"""Records and reported rows → entries → boards, one per (dataset, threat model, ε), ranked.

:func:`load_entries` reads ``submissions/*/submission.yaml``, ``leaderboard/results/*.json`` and
``leaderboard/reported.csv`` and refuses, with a one-line :class:`HarnessError`, anything it cannot
vouch for: a record whose checkpoint or submission hash does not match the submission it claims, a
record for a submission that does not exist, a duplicate id, a record of another schema version, a
malformed reported row. :func:`make_boards` groups the entries and computes frontiers, ranks, ties
and the efficiency figure (with :mod:`leaderboard.frontier`) and the scaling fit
(:mod:`leaderboard.scaling`). Nothing here writes a file.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.errors import HarnessError
from harness.record import ResultRecord, check_against_submission, read_record
from harness.stats import clopper_pearson
from harness.submission import LoadedSubmission, format_eps, parse_eps, parse_submission

from . import frontier as fr
from .fmt import compute_key
from .scaling import PAPER, ScalingFit, fit_saturating_power_law

CI = tuple[float, float]
#: test-set sizes: an evaluation on fewer points is flagged as a subset
FULL_TEST_SET = {"mnist": 10_000, "cifar10": 10_000, "cifar100": 10_000}
DATASET_ORDER = {"mnist": 0, "cifar10": 1, "cifar100": 2}
NORM_ORDER = {"Linf": 0, "L2": 1}
DATASET_TITLES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
REPORTED_CI_NOTE = ("95% Clopper-Pearson interval computed here from the reported accuracy, assuming "
                    "n = {n} test points (the full test set)")

#: (key, cost attribute, value attribute, title) of the four compute-efficiency frontiers
FRONTIERS: list[tuple[str, str, str, str]] = [
    ("robust_vs_inference_flops", "inference_flops", "robust", "AutoAttack accuracy vs inference FLOPs"),
    ("robust_vs_training_flops", "training_flops", "robust", "AutoAttack accuracy vs training FLOPs"),
    ("robust_vs_params", "params", "robust", "AutoAttack accuracy vs parameters"),
    ("certified_vs_inference_flops", "inference_flops", "certified", "Certified accuracy vs inference FLOPs"),
]

REPORTED_COLUMNS = (
    "id", "dataset", "norm", "eps", "robustbench_id", "name", "architecture", "clean_acc_percent",
    "autoattack_acc_percent", "stronger_attack_acc_percent", "n_test", "params", "inference_flops",
    "training_flops", "flops_convention", "compute_source", "training_flops_source", "additional_data",
    "unreliable", "venue", "paper", "source_url", "accuracy_source_url", "note",
)


@dataclass
class Flag:
    name: str
    message: str = ""
    severity: str = "warning"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "message": self.message, "severity": self.severity}


@dataclass
class Entry:
    id: str
    name: str
    kind: Literal["re-evaluated", "reported"]
    dataset: str
    norm: str
    eps: float
    n_examples: int | None = None
    clean: float | None = None
    clean_ci: CI | None = None
    robust: float | None = None
    robust_ci: CI | None = None
    ci_note: str = "95% Clopper-Pearson interval from the record"
    certified: float | None = None
    certified_ci: CI | None = None
    certified_method: str | None = None
    acr: float | None = None
    params: int | None = None
    inference_flops: float | None = None
    training_flops: float | None = None
    training_flops_source: str | None = None
    flags: list[Flag] = field(default_factory=list)
    url: str | None = None
    separation: dict[str, Any] | None = None
    record: ResultRecord | None = None
    record_path: Path | None = None
    submission: LoadedSubmission | None = None
    reported: dict[str, str] | None = None
    # computed on the board
    layer: int | None = None
    rank: int = 0
    tied: bool = False
    on_frontier: dict[str, bool | None] = field(default_factory=dict)
    flop_saving: float | None = None

    @property
    def slug(self) -> str:
        """A file-name-safe form of the id (entry pages, gallery images)."""
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.id)


@dataclass
class Board:
    dataset: str
    norm: str
    eps: float
    entries: list[Entry]  # in the default order
    scaling: ScalingFit | None = None
    separation: dict[str, Any] | None = None

    @property
    def eps_label(self) -> str:
        return format_eps(self.eps)

    @property
    def id(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.dataset}-{self.norm}-{self.eps_label}")

    @property
    def title(self) -> str:
        ds = DATASET_TITLES.get(self.dataset, self.dataset)
        return f"{ds}, {self.norm}, ε = {self.eps_label}"

    @property
    def is_paper_board(self) -> bool:
        d, n, e = PAPER["board"]
        return self.dataset == d and self.norm == n and abs(self.eps - e) < 1e-9


@dataclass
class Inputs:
    entries: list[Entry]
    pending: list[str]  # submissions without a record
    results_dir: Path


# ---------------------------------------------------------------------------------------------
def _pct(text: str, where: str, column: str, *, required: bool) -> float | None:
    text = (text or "").strip()
    if not text:
        if required:
            raise HarnessError(f"{where}: column {column} is empty")
        return None
    try:
        v = float(text)
    except ValueError:
        raise HarnessError(f"{where}: column {column} is not a number: {text!r}")
    if not 0 <= v <= 100:
        raise HarnessError(f"{where}: column {column} must be a percentage in [0, 100], got {v}")
    return v / 100.0


def _num(text: str, where: str, column: str) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        v = float(text)
    except ValueError:
        raise HarnessError(f"{where}: column {column} is not a number: {text!r}")
    if not math.isfinite(v) or v <= 0:
        raise HarnessError(f"{where}: column {column} must be a positive number, got {text!r}")
    return v


def _binomial_ci(acc: float | None, n: int) -> CI | None:
    if acc is None:
        return None
    return clopper_pearson(int(round(acc * n)), n)


def load_reported(path: Path) -> list[Entry]:
    """The rows of ``reported.csv`` as entries (accuracies in the file are percentages)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REPORTED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise HarnessError(f"{path}: missing columns {', '.join(missing)}")
            rows = list(reader)
    except OSError as e:
        raise HarnessError(f"{path}: cannot read: {e}")
    entries = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        rid = (row["id"] or "").strip()
        if not rid:
            raise HarnessError(f"{where}: column id is empty")
        if (row["norm"] or "") not in ("Linf", "L2"):
            raise HarnessError(f"{where}: column norm must be Linf or L2, got {row['norm']!r}")
        try:
            eps = parse_eps(row["eps"])
        except ValueError as e:
            raise HarnessError(f"{where}: column eps: {e}")
        n_text = (row["n_test"] or "").strip()
        if not n_text.isdigit() or int(n_text) <= 0:
            raise HarnessError(f"{where}: column n_test must be a positive integer, got {n_text!r}")
        n = int(n_text)
        clean = _pct(row["clean_acc_percent"], where, "clean_acc_percent", required=False)
        robust = _pct(row["autoattack_acc_percent"], where, "autoattack_acc_percent", required=True)
        stronger = _pct(row["stronger_attack_acc_percent"], where, "stronger_attack_acc_percent", required=False)
        params = _num(row["params"], where, "params")
        flags = []
        if stronger is not None and robust is not None and stronger < robust:
            flags.append(Flag("stronger-attack", f"a stronger attack than AutoAttack reaches {stronger:.2%} "
                                                 "(RobustBench's external evaluation)"))
        if (row["unreliable"] or "").strip().lower() == "true":
            flags.append(Flag("unreliable", "RobustBench marks this evaluation as unreliable", "error"))
        entries.append(Entry(
            id=rid, name=(row["name"] or rid).strip(), kind="reported", dataset=row["dataset"].strip(),
            norm=row["norm"], eps=eps, n_examples=n,
            clean=clean, clean_ci=_binomial_ci(clean, n), robust=robust, robust_ci=_binomial_ci(robust, n),
            ci_note=REPORTED_CI_NOTE.format(n=n),
            params=None if params is None else int(params),
            inference_flops=_num(row["inference_flops"], where, "inference_flops"),
            training_flops=_num(row["training_flops"], where, "training_flops"),
            training_flops_source=(row["training_flops_source"] or "").strip() or None,
            flags=flags, url=(row["source_url"] or "").strip() or None, reported=dict(row),
        ))
    return entries


# ---------------------------------------------------------------------------------------------
def _separation(diagnostics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The data-separation radius recorded by the diagnostics stage (half the minimum distance to a
    differently labelled training point): for the whole test set when recorded
    (``separation.full_test_set``, a property of the data set), else for the evaluated points."""
    if not isinstance(diagnostics, dict) or not isinstance(diagnostics.get("separation"), dict):
        return None
    sep = diagnostics["separation"]
    v = sep.get("full_test_set") if isinstance(sep.get("full_test_set"), dict) else sep
    r = v.get("half_min")
    if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r):
        return None
    out = {"radius": float(r)}
    for k in ("n_test", "n_train", "min", "median"):
        if isinstance(v.get(k), (int, float)):
            out[k] = v[k]
    return out


def _record_flags(rec: ResultRecord) -> list[Flag]:
    flags: list[Flag] = []
    diag = rec.diagnostics if isinstance(rec.diagnostics, dict) else {}
    for f in diag.get("flags") or []:
        if isinstance(f, dict) and f.get("name"):
            flags.append(Flag(str(f["name"]), str(f.get("message") or ""), str(f.get("severity") or "warning")))
        elif isinstance(f, str):
            flags.append(Flag(f))
    if rec.autoattack is not None:
        for msg in rec.autoattack.checks:
            flags.append(Flag("autoattack-check", msg))
    full = FULL_TEST_SET.get(rec.dataset)
    if full is not None and rec.n_examples < full:
        flags.append(Flag("subset", f"evaluated on the first {rec.n_examples} of {full} test points; "
                                    "the confidence intervals are wide accordingly", "info"))
    return flags


def entry_from_record(rec: ResultRecord, path: Path, sub: LoadedSubmission) -> Entry:
    best = None
    if rec.certified:
        best = max(rec.certified.values(), key=lambda c: (c.certified_accuracy, c.acr, c.method))
    dataset = rec.dataset
    if dataset == "custom":  # different custom data sets must not share a board
        dataset = f"custom:{rec.provenance.data_source}"
    spec = sub.spec
    tf = rec.training_flops.value if rec.training_flops is not None else None
    return Entry(
        id=rec.submission_id, name=rec.name, kind="re-evaluated", dataset=dataset,
        norm=rec.threat_model.norm, eps=float(rec.threat_model.eps), n_examples=rec.n_examples,
        clean=rec.clean_accuracy, clean_ci=rec.clean_accuracy_ci95,
        robust=rec.robust_accuracy, robust_ci=rec.robust_accuracy_ci95,
        certified=best.certified_accuracy if best else None,
        certified_ci=best.certified_accuracy_ci95 if best else None,
        certified_method=best.method if best else None, acr=best.acr if best else None,
        params=rec.params, inference_flops=rec.inference_flops,
        training_flops=tf if tf is not None and tf > 0 else None,
        training_flops_source=(f"{rec.training_flops.source}: {rec.training_flops.formula}"
                               if rec.training_flops is not None else None),
        flags=_record_flags(rec), url=spec.paper.url if spec.paper else None,
        separation=_separation(rec.diagnostics), record=rec, record_path=path, submission=sub,
    )


def load_entries(repo_root: Path) -> Inputs:
    """Read and check everything the leaderboard shows; raise HarnessError on the first problem."""
    repo_root = Path(repo_root)
    results_dir = repo_root / "leaderboard" / "results"
    sub_dir = repo_root / "submissions"
    sub_yamls = {p.parent.name: p for p in sorted(sub_dir.glob("*/submission.yaml"))} if sub_dir.is_dir() else {}

    seen: dict[str, str] = {}  # id -> where it came from

    def claim(eid: str, where: str) -> None:
        if eid in seen:
            raise HarnessError(f"duplicate id {eid!r}: in {seen[eid]} and in {where}")
        seen[eid] = where

    entries: list[Entry] = []
    record_paths = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    for path in record_paths:
        rec = read_record(path)  # refuses another schema version, with the path
        claim(rec.submission_id, str(path))
        if path.stem != rec.submission_id:
            raise HarnessError(f"{path}: a record must be named <submission_id>.json, "
                               f"this one claims submission {rec.submission_id!r}")
        yaml_path = sub_yamls.get(rec.submission_id)
        if yaml_path is None:
            raise HarnessError(f"{path}: claims submission {rec.submission_id!r}, but "
                               f"{sub_dir / rec.submission_id / 'submission.yaml'} does not exist")
        sub, problems = parse_submission(yaml_path)
        if sub is None or problems:
            first = problems[0] if problems else "invalid"
            raise HarnessError(f"{yaml_path}: {first} (run `harness validate {yaml_path}`)")
        if sub.spec.id != rec.submission_id:
            raise HarnessError(f"{yaml_path}: id {sub.spec.id!r} differs from its folder name "
                               f"{yaml_path.parent.name!r}")
        want_ck = sub.spec.model.checkpoint.sha256
        if rec.provenance.checkpoint_sha256 != want_ck:
            raise HarnessError(
                f"{path}: checkpoint hash mismatch: the record was made with checkpoint sha256 "
                f"{rec.provenance.checkpoint_sha256}, but {yaml_path} declares {want_ck}; "
                "the checkpoint changed after the evaluation, re-run `harness eval` on it")
        if rec.provenance.submission_sha256 != sub.yaml_sha256:
            raise HarnessError(
                f"{path}: submission hash mismatch: the record was made from a submission.yaml with sha256 "
                f"{rec.provenance.submission_sha256}, but {yaml_path} has sha256 {sub.yaml_sha256}; "
                "the submission changed after the evaluation, re-run `harness eval` on it")
        check_against_submission(rec, path, sub)  # data set, threat model, eps, folder digest (harness.record)
        entries.append(entry_from_record(rec, path, sub))

    reported_csv = repo_root / "leaderboard" / "reported.csv"
    if reported_csv.is_file():
        for line, e in enumerate(load_reported(reported_csv), start=2):
            claim(e.id, f"{reported_csv}:{line}")
            entries.append(e)

    slugs: dict[str, str] = {}
    for e in entries:  # entry pages are named by slug: two ids must not collide there either
        if e.slug.lower() in slugs and slugs[e.slug.lower()] != e.id:
            raise HarnessError(f"ids {slugs[e.slug.lower()]!r} and {e.id!r} map to the same page name {e.slug!r}")
        slugs[e.slug.lower()] = e.id
    with_record = {e.id for e in entries if e.kind == "re-evaluated"}
    pending = sorted(s for s in sub_yamls if s not in with_record)
    return Inputs(entries, pending, results_dir)


# ---------------------------------------------------------------------------------------------
def rank_board(entries: list[Entry]) -> list[Entry]:
    """Frontiers, layers, the efficiency figure and ranks with ties; returns the default order.

    Compute figures enter rounded to the 3 significant digits the tables show (:func:`compute_key`)."""
    for key, cost_attr, value_attr, _ in FRONTIERS:
        on = fr.pareto_frontier([compute_key(getattr(e, cost_attr)) for e in entries],
                                [getattr(e, value_attr) for e in entries])
        for e, f in zip(entries, on):
            e.on_frontier[key] = f
    costs = [compute_key(e.inference_flops) for e in entries]
    values = [e.robust for e in entries]
    layers = fr.nondominated_layers(costs, values)
    saving = fr.flop_saving(costs, values)
    for e, layer, s in zip(entries, layers, saving):
        e.layer, e.flop_saving = layer, s
    order = fr.default_order(layers, values, costs, [e.name for e in entries])
    ranks, tied = fr.ranks_with_ties(order, layers, [e.robust_ci for e in entries])
    for e, r, t in zip(entries, ranks, tied):
        e.rank, e.tied = r, t
    return [entries[i] for i in order]


def _board_key(e: Entry) -> tuple[str, str, float]:
    return (e.dataset, e.norm, round(e.eps, 9))


def make_boards(entries: list[Entry]) -> list[Board]:
    groups: dict[tuple[str, str, float], list[Entry]] = {}
    for e in entries:
        groups.setdefault(_board_key(e), []).append(e)
    boards = []
    for (dataset, norm, _), group in sorted(
            groups.items(), key=lambda kv: (DATASET_ORDER.get(kv[0][0], 9), kv[0][0], NORM_ORDER.get(kv[0][1], 9),
                                            kv[0][2])):
        ordered = rank_board(group)
        board = Board(dataset, norm, group[0].eps, ordered)
        board.scaling = fit_saturating_power_law([e.training_flops for e in ordered], [e.robust for e in ordered])
        seps = [e for e in ordered if e.separation is not None]
        if seps:  # the estimate from the most test points
            best = max(seps, key=lambda e: (e.separation.get("n_test") or e.n_examples or 0, e.id))
            board.separation = dict(best.separation, source=best.id)
        boards.append(board)
    return boards
