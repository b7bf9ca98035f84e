"""Records and reported rows → entries → boards, one per (dataset, threat model, ε), ranked.

:func:`load_entries` reads ``submissions/*/submission.yaml``, ``leaderboard/results/*.json`` and
``leaderboard/reported.csv`` and refuses, with a one-line :class:`HarnessError`, anything it cannot
vouch for: a record whose signature does not verify against a trusted key of ``leaderboard/keys/``
(:mod:`harness.record.signing`; unsigned, an unknown key, changed after signing), a record whose checkpoint
or submission hash does not match the submission it claims, a record for a submission that does not
exist, a duplicate id, a record of another schema version, a malformed reported row. With
``local=True`` (``harness leaderboard build --local``) it also shows a researcher's own evaluations:
unsigned records and records signed by the extra ``trust_keys``, and the scratch records of
``leaderboard/results/local/``, each marked local (never re-evaluated). Two records of the same
checkpoint are both flagged ``duplicate-checkpoint``. :func:`make_boards` groups the entries and
computes frontiers, ranks, ties and the efficiency figure (with :mod:`leaderboard.frontier`) and the
scaling fit (:mod:`leaderboard.scaling`). Nothing here writes a file.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.core.errors import HarnessError, one_line
from harness.core.stats import clopper_pearson
from harness.data import registry as datasets
from harness.record.checks import check_against_submission
from harness.record.read import read_record
from harness.record.schema import Flag, ResultRecord
from harness.record.signing import KEYS_DIR, load_public_key, load_trusted_keys, signature_of, verify_record
from harness.submission.load import LoadedSubmission, parse_submission
from harness.submission.schema import format_eps, parse_eps
from leaderboard.importers.robustbench import COLUMNS as REPORTED_COLUMNS

from . import fmt
from . import frontier as fr
from .best_known import ExternalEvaluation, load_attack_records, record_best_known, reported_best_known
from .fmt import compute_key
from .recipes import load_recipes, training_computes
from .scaling import PAPER, ScalingFit, fit_saturating_power_law

CI = tuple[float, float]
NORM_ORDER = {"Linf": 0, "L2": 1}
#: radii that RobustBench lists on the board of a nearby standard radius, marked (ε = 0.031 rows
#: sit on the 8/255 ≈ 0.03137 board, as on robustbench.github.io)
EPS_ALIASES = {("Linf", 0.031): 8 / 255}
REPORTED_CI_NOTE = ("95% Clopper-Pearson interval computed here from the reported accuracy, assuming "
                    "n = {n} test points (the full test set)")

#: (key, cost attribute, value attribute, title) of the four compute-efficiency frontiers
#: (the keys keep their names; "robust" is the best-known robust accuracy since issue 18)
FRONTIERS: list[tuple[str, str, str, str]] = [
    ("robust_vs_inference_flops", "inference_flops", "best_known", "Best-known robust accuracy vs inference FLOPs"),
    ("robust_vs_training_flops", "training_flops", "best_known", "Best-known robust accuracy vs training FLOPs"),
    ("robust_vs_params", "params", "best_known", "Best-known robust accuracy vs parameters"),
    ("certified_vs_inference_flops", "inference_flops", "certified", "Certified accuracy vs inference FLOPs"),
]



SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}


@dataclass(frozen=True)
class FlagChip:
    """One chip per flag name, as the tables show flags: the most severe level among the entry's flags
    of that name, and every distinct message of them (in order), ``count`` flags merged."""
    name: str
    severity: str
    messages: tuple[str, ...]
    count: int = 1

    @property
    def message(self) -> str:
        return "\n".join(self.messages)


def merge_flags(flags: list[Any]) -> list[FlagChip]:
    """Duplicate flags (the same name, e.g. from a record's diagnostics and from the board) become one
    chip: the most severe level, both messages. Order: each name where it first appears."""
    chips: dict[str, FlagChip] = {}
    for f in flags:
        old = chips.get(f.name)
        msg = (f.message or "").strip()
        if old is None:
            chips[f.name] = FlagChip(f.name, f.severity, (msg,) if msg else ())
            continue
        sev = f.severity if SEVERITY_RANK.get(f.severity, 0) > SEVERITY_RANK.get(old.severity, 0) else old.severity
        msgs = old.messages + ((msg,) if msg and msg not in old.messages else ())
        chips[f.name] = FlagChip(f.name, sev, msgs, old.count + 1)
    return list(chips.values())


@dataclass
class Entry:
    id: str
    name: str
    #: re-evaluated: a record signed by a key of leaderboard/keys/; local: a record shown only on a
    #: local board (--local): unsigned, signed by a --trust-key key, or from leaderboard/results/local/
    kind: Literal["re-evaluated", "reported", "local"]
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
    #: "lower bound" or "upper bound" when the training FLOPs are a bound (harness.compute.flops.MethodCost)
    training_flops_bound: str | None = None
    flags: list[Flag] = field(default_factory=list)
    url: str | None = None
    separation: dict[str, Any] | None = None
    # what a researcher filters on (reported rows: RobustBench's model info; records: the submission)
    architecture: str = ""
    extra_data: str = ""          # "" = none; else what and how much
    additional_data: bool | None = None  # RobustBench's flag: extra *real* training data
    venue: str = ""
    year: str = ""
    paper_title: str = ""
    #: best-known robust accuracy (leaderboard.best_known): the lowest accuracy any accepted attack reached,
    #: AutoAttack's own (``robust``) when nothing beats it; the headline number, ranked on
    best_known: float | None = None
    best_known_ci: CI | None = None
    best_known_source: str = ""      # "AutoAttack", "<attack> (external)" or "RobustBench external evaluation"
    best_known_note: str = ""
    #: external attack records of this entry (leaderboard.best_known.ExternalEvaluation), stale ones included
    external: list[Any] = field(default_factory=list)
    board_eps: float | None = None   # the board's ε when the entry's own differs (ε = 0.031 on 8/255)
    compute_note: str = ""           # how params and FLOPs were counted, or why they were not
    forward_passes: int = 1
    training_method: str = ""        # e.g. "TRADES-10", from the recipe or the submission
    training_recipe: Any = None      # leaderboard.recipes.Recipe of a reported row
    record: ResultRecord | None = None
    record_path: Path | None = None
    submission: LoadedSubmission | None = None
    reported: dict[str, str] | None = None
    #: how far the entry is trusted, as the board shows it: "re-evaluated", "reported", "local, unsigned"
    #: or "local, signed by <key id>"; ``signed_by``: the signature that verified (harness.record.signing.Verified)
    trust: str = ""
    signed_by: Any = None
    # computed on the board
    layer: int | None = None
    rank: int = 0
    tied: bool = False               # in a statistical tie group of two or more entries
    tie_group: tuple[int, int] | None = None  # (first rank, last rank) of its tie group
    #: inside a tie group, the tie-breaker that puts it below the entry above it, as a sentence
    #: (:func:`tie_break_reason`); "" for the first of a group and for untied entries
    tie_break: str = ""
    on_frontier: dict[str, bool | None] = field(default_factory=dict)
    flop_saving: float | None = None
    measurably_robust: bool = False  # the lower end of the robust accuracy's 95% CI is above 0
    overhead: float | None = None    # inference FLOPs / least inference FLOPs of any entry at least as robust
    gap: float | None = None         # most robust accuracy at no more inference FLOPs, minus this entry's
    training_overhead: float | None = None
    training_gap: float | None = None

    def __post_init__(self) -> None:
        # nothing beats AutoAttack until an external evaluation says so (load_reported, attach_best_known)
        if self.best_known is None and self.robust is not None:
            self.best_known, self.best_known_ci, self.best_known_source = self.robust, self.robust_ci, "AutoAttack"

    @property
    def training_flops_frontier(self) -> float | None:
        """The training FLOPs the training-compute frontier and overheads compare: a lower bound
        (the true cost may be higher) proves nothing about dominance and takes no part; an upper
        bound does (the true cost can only make the entry cheaper, so what it dominates it still
        dominates, and a frontier badge it earns stays earned)."""
        return None if self.training_flops_bound == "lower bound" else self.training_flops

    @property
    def training_flops_exact(self) -> float | None:
        """The training FLOPs when they are a point estimate (what the scaling-law fit may use)."""
        return self.training_flops if self.training_flops_bound is None else None

    @property
    def flag_chips(self) -> list[FlagChip]:
        """The flags as the tables show them: one chip per name (:func:`merge_flags`)."""
        return merge_flags(self.flags)

    @property
    def best_known_below(self) -> bool:
        """Does another attack beat AutoAttack on this entry?"""
        return self.best_known is not None and self.robust is not None and self.best_known < self.robust

    @property
    def best_known_label(self) -> str:
        """A short name of the attack that set the best-known accuracy, for a table cell."""
        return "external" if self.best_known_source == "RobustBench external evaluation" else self.best_known_source

    @property
    def has_extra_data(self) -> bool:
        return bool(self.extra_data)

    @property
    def paper_url(self) -> str | None:
        return self.url

    @property
    def search_text(self) -> str:
        """Everything the table's free-text filter matches, also what the page does not show in full."""
        parts = [self.name, self.id, self.architecture, self.extra_data, self.venue, self.year, self.paper_title,
                 self.kind, self.training_method, " ".join(f.name for f in self.flags),
                 "extra data" if self.extra_data else "no extra data"]
        return " ".join(p for p in parts if p)

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
        ds = datasets.title(self.dataset)
        return f"{ds}, {self.norm}, ε = {self.eps_label}"

    @property
    def coverage(self) -> dict[str, Any]:
        return coverage(self)

    @property
    def example(self) -> list[str]:
        return worked_example(self)

    @property
    def is_paper_board(self) -> bool:
        d, n, e = PAPER["board"]
        return self.dataset == d and self.norm == n and abs(self.eps - e) < 1e-9


@dataclass
class Inputs:
    entries: list[Entry]
    pending: list[str]  # submissions without a record
    results_dir: Path
    local: bool = False  # a local board (--local): it may show local, unsigned entries


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


def _board_eps(norm: str, eps: float) -> float | None:
    for (n, e), board in EPS_ALIASES.items():
        if n == norm and abs(eps - e) < 1e-9:
            return board
    return None


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
    except UnicodeDecodeError as e:
        raise HarnessError(f"{path}: not UTF-8 text: {e}")
    entries = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        if None in row or any(v is None for v in row.values()):
            raise HarnessError(f"{where}: wrong number of fields")
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
        fp_text = (row["forward_passes"] or "1").strip()
        if not fp_text.isdigit() or int(fp_text) <= 0:
            raise HarnessError(f"{where}: column forward_passes must be a positive integer, got {fp_text!r}")
        clean = _pct(row["clean_acc_percent"], where, "clean_acc_percent", required=False)
        robust = _pct(row["autoattack_acc_percent"], where, "autoattack_acc_percent", required=True)
        stronger = _pct(row["stronger_attack_acc_percent"], where, "stronger_attack_acc_percent", required=False)
        params = _num(row["params"], where, "params")
        flags = []
        bk = reported_best_known(robust, stronger, n)
        if bk.below_autoattack:
            flags.append(Flag("stronger-attack", "warning", bk.note))
        if (row["unreliable"] or "").strip().lower() == "true":
            flags.append(Flag("unreliable", "error", "RobustBench marks this evaluation as potentially unreliable"))
        board_eps = _board_eps(row["norm"], eps)
        if board_eps is not None:
            flags.append(Flag(f"eps {row['eps'].strip()}", "info",
                              f"evaluated at ε = {row['eps'].strip()}, listed on the ε = {format_eps(board_eps)} "
                              "board as RobustBench does"))
        inference = _num(row["inference_flops"], where, "inference_flops")
        compute_note = (row["compute_source"] or "").strip()
        if inference is None and not compute_note:
            raise HarnessError(f"{where}: inference_flops is empty and compute_source does not say why")
        additional = (row["additional_data"] or "").strip().lower()
        url = (row["source_url"] or "").strip()
        entries.append(Entry(
            id=rid, name=(row["name"] or rid).strip(), kind="reported", trust="reported",
            dataset=row["dataset"].strip(),
            norm=row["norm"], eps=eps, n_examples=n,
            clean=clean, clean_ci=_binomial_ci(clean, n), robust=robust, robust_ci=_binomial_ci(robust, n),
            ci_note=REPORTED_CI_NOTE.format(n=n),
            params=None if params is None else int(params),
            inference_flops=inference,
            training_flops=_num(row["training_flops"], where, "training_flops"),
            training_flops_source=(row["training_flops_source"] or "").strip() or None,
            flags=flags, url=url or None, reported=dict(row),
            architecture=(row["architecture"] or "").strip(), extra_data=(row["extra_data"] or "").strip(),
            additional_data=None if additional not in ("true", "false") else additional == "true",
            venue=(row["venue"] or "").strip(), year=(row["year"] or "").strip(),
            paper_title=(row["paper"] or "").strip(), best_known=bk.value, best_known_ci=bk.ci,
            best_known_source=bk.source, best_known_note=bk.note,
            board_eps=board_eps, compute_note=compute_note, forward_passes=int(fp_text),
        ))
    return entries


def attach_recipes(entries: list[Entry], path: Path) -> None:
    """Training FLOPs of the reported rows from ``training_recipes.csv`` (forward FLOPs x examples
    seen x the method's multiplier; see :mod:`leaderboard.recipes`)."""
    recipes = load_recipes(path)
    by_key = {(e.dataset, e.norm, e.reported["robustbench_id"]): e for e in entries if e.reported}
    for key, r in recipes.items():
        if key not in by_key:
            raise HarnessError(f"{r.where}: a recipe for {'/'.join(key)}, which is not a row of reported.csv")
    computed = training_computes(recipes, {k: by_key[k].inference_flops for k in recipes})
    for key, r in recipes.items():
        e, tc = by_key[key], computed[key]
        e.training_recipe = r
        e.training_method = r.method_label()
        if tc.value is not None and e.training_flops is not None:
            raise HarnessError(f"{r.where}: training FLOPs for {e.id} are given twice: in reported.csv and "
                               "by this recipe; keep one")
        if tc.value is not None:
            e.training_flops = tc.value
            e.training_flops_bound = None if tc.bound == "exact" else tc.bound
            first = tc.source.split(" ; ")[0].strip()
            more = " (and more)" if " ; " in tc.source else ""
            e.training_flops_source = f"{tc.formula}; recipe source: {first}{more}"
        elif e.training_flops is None:
            e.training_flops_source = tc.formula


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
    """The record's diagnostics flags as recorded (the record schema validated them), then the board's
    own: AutoAttack's check messages verbatim, and an evaluation on a subset of the test set."""
    flags = rec.diagnostic_flags()
    if rec.autoattack is not None:
        # a message the diagnostics already classified (an aa-* flag keeps its texts) is not repeated
        classified = {m for f in flags for m in ((f.details or {}).get("messages") or ()) if isinstance(m, str)}
        for msg in rec.autoattack.checks:
            if msg not in classified:
                flags.append(Flag("autoattack-check", "warning", msg))
    # the size of the dataset's standard evaluation subset: an evaluation on fewer points is flagged
    spec = datasets.find(rec.dataset)
    full = None if spec is None or spec.custom else spec.n_test
    if full is not None and rec.n_examples < full:
        flags.append(Flag("subset", "info", f"evaluated on the first {rec.n_examples} of {full} test points; "
                                            "the confidence intervals are wide accordingly"))
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
        id=rec.submission_id, name=rec.name, kind="re-evaluated", trust="re-evaluated", dataset=dataset,
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
        architecture=spec.model.architecture or spec.model.format,
        extra_data=(f"{spec.training.extra_data:,} extra images" if spec.training and spec.training.extra_data else ""),
        venue=(spec.paper.venue or "") if spec.paper else "",
        year=str(spec.paper.year) if spec.paper and spec.paper.year else "",
        paper_title=spec.paper.title if spec.paper else "",
        compute_note=(f"fvcore count by the harness ({rec.forward_passes or 1} forward pass"
                      f"{'' if (rec.forward_passes or 1) == 1 else 'es'} per prediction)"
                      if rec.inference_flops else (rec.flops_error or "FLOPs not counted")),
        forward_passes=rec.forward_passes or 1,
        training_method=_record_method(spec),
    )


def _record_method(spec) -> str:
    from harness.compute.training_cost import describe_method
    t = spec.training
    if t is None:
        return ""
    return describe_method(t.method, t.attack_steps, bool(getattr(t, "awp", False)))


LOCAL_DIR = "local"  # leaderboard/results/local/: scratch records of `harness eval`, git-ignored


def check_root(repo_root: Path) -> None:
    """The folder is a checkout of the project: one-line HarnessError otherwise."""
    try:
        ok = repo_root.is_dir()
        parts = ok and ((repo_root / "submissions").is_dir() or (repo_root / "leaderboard").is_dir())
    except (OSError, ValueError):
        ok = parts = False
    if not ok:
        raise HarnessError(f"--root {one_line(repo_root, 300)}: no such folder")
    if not parts:
        raise HarnessError(f"--root {one_line(repo_root, 300)}: not a robust-frontier repository (it has neither "
                           "submissions/ nor leaderboard/)")


def _record_trust(path: Path, keys: dict, extra: dict, *, local: bool, scratch: bool):
    """(kind, trust, Verified or None) of a record file; raises HarnessError when the board must
    refuse it: on the published board, anything but a signature that verifies against
    ``leaderboard/keys/``; on a local board, a signature that does not verify against those keys or
    the ``--trust-key`` keys (an unsigned record is shown, marked "local, unsigned")."""
    if not local:
        v = verify_record(path, keys)
        return "re-evaluated", "re-evaluated", v
    if signature_of(path) is None:
        return "local", "local, unsigned", None
    v = verify_record(path, {**extra, **keys}, keys_from="leaderboard/keys/ or --trust-key")
    if v.key_id in keys and not scratch:
        return "re-evaluated", "re-evaluated", v
    return "local", f"local, signed by {v.key_id}", v


def attach_best_known(entries: list[Entry], attacks: dict[str, list[ExternalEvaluation]]) -> None:
    """Best-known accuracy of every record entry (leaderboard.best_known), from its examples file and
    the external attack records of it; an attack record for an id that is no record on the board is
    refused (reported rows carry RobustBench's external number instead)."""
    from harness.core.files import sha256_file
    from harness.record.read import read_examples

    by_id = {e.id: e for e in entries}
    for eid, evals in sorted(attacks.items()):
        if eid not in by_id:
            raise HarnessError(f"{evals[0].path}: an attack record for entry {eid!r}, which is no re-evaluated "
                               "entry (no leaderboard/results/<id>.json)")
    for e in entries:
        rec, evals = e.record, attacks.get(e.id, [])
        e.external = evals
        if rec is None or e.record_path is None:
            continue
        if rec.robust_accuracy is None:
            for ev in evals:
                ev.stale = "the entry has no AutoAttack result to combine it with"
            continue
        arrays = read_examples(rec, e.record_path)
        npz = e.record_path.with_name(rec.examples_file)
        sha = e.signed_by.examples_sha256 if e.signed_by is not None else sha256_file(npz)
        bk = record_best_known(
            n=rec.n_examples, index=arrays["index"],
            clean_correct=arrays.get("clean_correct", arrays["autoattack_robust"]),
            autoattack_robust=arrays["autoattack_robust"], autoattack=rec.robust_accuracy, examples_sha256=sha,
            results_sha256=rec.provenance.results_sha256, dataset=rec.dataset, norm=rec.threat_model.norm,
            eps=float(rec.threat_model.eps), evaluations=evals)
        e.best_known, e.best_known_ci, e.best_known_source, e.best_known_note = bk.value, bk.ci, bk.source, bk.note
        if bk.n_extra:
            e.flags.append(Flag("stronger-attack", "warning", bk.note))
        for ev in evals:
            if ev.stale:
                e.flags.append(Flag("stale-attack", "info",
                                    f"external attack {ev.attack_name} not applied: {ev.stale}"))
            elif ev.trust != "verified":
                e.flags.append(Flag("local-attack", "info", f"external attack {ev.attack_name} applied on this local "
                                                            f"board only ({ev.trust})"))


def duplicate_checkpoint_flags(entries: list[Entry]) -> None:
    """Two or more records of the same checkpoint (provenance.checkpoint_sha256): each gets a
    ``duplicate-checkpoint`` flag naming the others."""
    by_sha: dict[str, list[Entry]] = {}
    for e in entries:
        if e.record is not None:
            by_sha.setdefault(e.record.provenance.checkpoint_sha256, []).append(e)
    for sha, group in by_sha.items():
        if len(group) < 2:
            continue
        for e in group:
            others = sorted(o.id for o in group if o is not e)
            here = sorted(o.id for o in group if o is not e and _board_key(o) == _board_key(e))
            where = (f"; {', '.join(here)} on this board, where one model should have one entry" if here
                     else ", on another board")
            e.flags.append(Flag(
                "duplicate-checkpoint", "warning",
                f"the same checkpoint (sha256 {sha[:16]}...) is also entry {', '.join(others)}{where}",
                details={"checkpoint_sha256": sha, "others": others}))


def load_entries(repo_root: Path, *, local: bool = False, trust_keys: tuple[Path, ...] | list[Path] = ()) -> Inputs:
    """Read and check everything the leaderboard shows; raise HarnessError on the first problem.

    ``local``: a researcher's board (see the module docstring); ``trust_keys``: extra public key
    files whose signatures a local board shows as "local, signed by <key id>"."""
    repo_root = Path(repo_root)
    check_root(repo_root)
    if trust_keys and not local:
        raise HarnessError("--trust-key applies to a local board only; add --local")
    keys = load_trusted_keys(repo_root / KEYS_DIR)
    extra = {k.key_id: k for k in (load_public_key(Path(p)) for p in trust_keys)}
    results_dir = repo_root / "leaderboard" / "results"
    sub_dir = repo_root / "submissions"
    sub_yamls = {p.parent.name: p for p in sorted(sub_dir.glob("*/submission.yaml"))} if sub_dir.is_dir() else {}

    seen: dict[str, str] = {}  # id -> where it came from

    def claim(eid: str, where: str) -> None:
        if eid in seen:
            raise HarnessError(f"duplicate id {eid!r}: in {seen[eid]} and in {where}")
        seen[eid] = where

    entries: list[Entry] = []
    local_dir = results_dir / LOCAL_DIR
    scratch = sorted(local_dir.glob("*.json")) if local and local_dir.is_dir() else []
    replaced = {p.stem for p in scratch}  # a local board shows the scratch record in place of the published one
    record_paths = [p for p in (sorted(results_dir.glob("*.json")) if results_dir.is_dir() else [])
                    if p.stem not in replaced]
    for path in record_paths + scratch:
        rec = read_record(path)  # refuses another schema version, with the path
        claim(rec.submission_id, str(path))
        if path.stem != rec.submission_id:
            raise HarnessError(f"{path}: a record must be named <submission_id>.json, "
                               f"this one claims submission {rec.submission_id!r}")
        kind, trust, signed_by = _record_trust(path, keys, extra, local=local, scratch=path.parent == local_dir)
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
        from harness.record.checks import submission_hash_problem  # results_sha256: a metadata edit keeps the record

        if (why := submission_hash_problem(rec, sub)) is not None:
            raise HarnessError(f"{path}: {why}")
        check_against_submission(rec, path, sub)  # data set, threat model, eps, folder digest (harness.record)
        entry = entry_from_record(rec, path, sub)
        entry.kind, entry.trust, entry.signed_by = kind, trust, signed_by
        entries.append(entry)
    duplicate_checkpoint_flags(entries)
    attach_best_known(entries, load_attack_records(repo_root, keys, extra, local=local))

    reported_csv = repo_root / "leaderboard" / "reported.csv"
    if reported_csv.is_file():
        reported = load_reported(reported_csv)
        for line, e in enumerate(reported, start=2):
            claim(e.id, f"{reported_csv}:{line}")
            entries.append(e)
        recipes_csv = repo_root / "leaderboard" / "training_recipes.csv"
        if recipes_csv.is_file():
            attach_recipes(reported, recipes_csv)

    slugs: dict[str, str] = {}
    for e in entries:  # entry pages are named by slug: two ids must not collide there either
        if e.slug.lower() in slugs and slugs[e.slug.lower()] != e.id:
            raise HarnessError(f"ids {slugs[e.slug.lower()]!r} and {e.id!r} map to the same page name {e.slug!r}")
        slugs[e.slug.lower()] = e.id
    with_record = {e.id for e in entries if e.record is not None}
    pending = sorted(s for s in sub_yamls if s not in with_record)
    return Inputs(entries, pending, results_dir, local=local)


# ---------------------------------------------------------------------------------------------
def measurably_above_zero(value: float | None, ci: CI | None) -> bool:
    """Is an accuracy measurably above zero: the lower end of its 95% CI above 0 (without a CI:
    the value itself)?"""
    if value is None or not math.isfinite(value):
        return False
    if ci is not None:
        return ci[0] > 0
    return value > 0


def rank_board(entries: list[Entry]) -> list[Entry]:
    """Frontiers, layers, overhead and gap, the FLOP saving, the default order and ranks; returns
    the entries in the default order.

    Every figure uses the best-known robust accuracy (:mod:`leaderboard.best_known`). The default
    order (:func:`leaderboard.frontier.best_known_order`): by best-known accuracy; a statistical tie
    group (a maximal run of consecutive entries whose 95% intervals all overlap one another) is
    ordered by inference FLOPs (cheaper first), then training FLOPs where all of the tied figures
    are exact, then best-known accuracy. Ranks are positions (1, 2, 3, ...); entries of one tie
    group are marked tied, with the group's first and last rank. An entry whose best-known accuracy
    is not measurably above zero (its 95% CI contains 0) is on no frontier of it. Compute figures
    enter rounded to the 3 significant digits the tables show (:func:`compute_key`)."""
    for e in entries:
        e.measurably_robust = measurably_above_zero(e.best_known, e.best_known_ci)
    robust_vals = [e.best_known if e.measurably_robust else None for e in entries]
    cert_vals = [e.certified if measurably_above_zero(e.certified, e.certified_ci) else None for e in entries]
    for key, cost_attr, value_attr, _ in FRONTIERS:
        values = cert_vals if value_attr == "certified" else robust_vals
        if cost_attr == "training_flops":  # bounded figures: see Entry.training_flops_frontier
            cost_attr = "training_flops_frontier"
        on = fr.pareto_frontier([compute_key(getattr(e, cost_attr)) for e in entries], values)
        for e, f, v in zip(entries, on, values, strict=False):
            # an accuracy that is not measurably above zero: False (no badge), not None (no figure)
            e.on_frontier[key] = False if (f is None and v is None and getattr(e, value_attr) is not None
                                           and compute_key(getattr(e, cost_attr)) is not None) else f
    costs = [compute_key(e.inference_flops) for e in entries]
    layers = fr.nondominated_layers(costs, robust_vals)
    saving = fr.flop_saving(costs, robust_vals)
    all_vals = [e.best_known for e in entries]
    overhead = fr.compute_overhead(costs, all_vals)
    gap = fr.robustness_gap(costs, all_vals)
    tcosts = [compute_key(e.training_flops_frontier) for e in entries]
    t_overhead = fr.compute_overhead(tcosts, all_vals)
    t_gap = fr.robustness_gap(tcosts, all_vals)
    for i, e in enumerate(entries):
        e.layer, e.flop_saving = layers[i], saving[i]
        e.overhead, e.gap = overhead[i], gap[i]
        e.training_overhead, e.training_gap = t_overhead[i], t_gap[i]
    order, groups = fr.best_known_order(all_vals, [e.best_known_ci for e in entries], costs,
                                        [compute_key(e.training_flops_exact) for e in entries],
                                        [e.name + "\0" + e.id for e in entries])
    pos = {i: p for p, i in enumerate(order, start=1)}
    for g in groups:
        first, last = pos[g[0]], pos[g[-1]]
        for i in g:
            e = entries[i]
            e.rank = pos[i]
            e.tied = len(g) > 1 and e.best_known is not None
            e.tie_group = (first, last) if e.tied else None
            e.tie_break = ""
        if len(g) > 1 and all(entries[i].best_known is not None for i in g):
            members = [entries[i] for i in g]
            for a, b in zip(members, members[1:], strict=False):
                b.tie_break = tie_break_reason(a, b, members)
    return [entries[i] for i in order]


def tie_break_reason(a: Entry, b: Entry, group: list[Entry]) -> str:
    """Why ``b`` ranks right below ``a`` in their tie group (:func:`leaderboard.frontier.order_within_group`:
    inference FLOPs, then training FLOPs when every entry of that inference count has an exact figure,
    then best-known accuracy, then name)."""
    ca, cb = compute_key(a.inference_flops), compute_key(b.inference_flops)
    if ca != cb:
        if cb is None:
            return (f"its inference FLOPs are unknown, so it ranks after {a.name} ({fmt.flops(ca)}): nothing "
                    "shows that it is cheaper")
        return f"{a.name} needs fewer inference FLOPs ({fmt.flops(ca)} against {fmt.flops(cb)})"
    same = [e for e in group if compute_key(e.inference_flops) == ca]
    what = (f"the same inference FLOPs as {a.name} ({fmt.flops(ca)})" if ca is not None
            else f"inference FLOPs unknown, as {a.name}'s")
    ta, tb = compute_key(a.training_flops_exact), compute_key(b.training_flops_exact)
    inexact = [e for e in same if compute_key(e.training_flops_exact) is None]
    if not inexact and ta != tb:
        return f"{what}; {a.name} needs fewer training FLOPs ({fmt.flops(ta)} against {fmt.flops(tb)})"
    if inexact:
        why = ", ".join(f"{e.name} ({'a ' + e.training_flops_bound if e.training_flops_bound else 'unknown'})"
                        for e in inexact)
        train = f"the training FLOPs are not all known exactly ({why}), so they do not decide"
    else:
        train = "the same training FLOPs"
    if a.best_known != b.best_known:
        return (f"{what}; {train}; {a.name} has the higher best-known accuracy "
                f"({fmt.pct(a.best_known)} against {fmt.pct(b.best_known)})")
    return f"{what}; {train}; the same best-known accuracy: by name"


def _board_key(e: Entry) -> tuple[str, str, float]:
    return (e.dataset, e.norm, round(e.board_eps if e.board_eps is not None else e.eps, 9))


def make_boards(entries: list[Entry]) -> list[Board]:
    groups: dict[tuple[str, str, float], list[Entry]] = {}
    for e in entries:
        groups.setdefault(_board_key(e), []).append(e)
    boards = []
    for (dataset, norm, _eps), group in sorted(
            groups.items(), key=lambda kv: (datasets.order(kv[0][0]), kv[0][0], NORM_ORDER.get(kv[0][1], 9),
                                            kv[0][2])):
        ordered = rank_board(group)
        board = Board(dataset, norm, next((e.board_eps for e in group if e.board_eps is not None), group[0].eps),
                      ordered)
        board.scaling = fit_saturating_power_law([e.training_flops_exact for e in ordered],
                                                 [e.best_known for e in ordered])  # best-known accuracy
        seps = [e for e in ordered if e.separation is not None]
        if seps:  # the estimate from the most test points
            best = max(seps, key=lambda e: (e.separation.get("n_test") or e.n_examples or 0, e.id))
            board.separation = dict(best.separation, source=best.id)
        boards.append(board)
    return boards


# ---------------------------------------------------------------------------------------------
def coverage(board: Board) -> dict[str, Any]:
    """What the board holds of its sources: reported rows (RobustBench) and re-evaluated records,
    how many have counted inference FLOPs and training FLOPs, and why the others have none."""
    rep = [e for e in board.entries if e.kind == "reported"]
    rec = [e for e in board.entries if e.kind == "re-evaluated"]
    local = [e for e in board.entries if e.kind == "local"]
    uncounted = [{"id": e.id, "name": e.name, "reason": e.compute_note or "not counted"}
                 for e in board.entries if e.inference_flops is None]
    return {
        "reported_rows": len(rep),
        "re_evaluated": len(rec),
        "local": len(local),
        "with_inference_flops": sum(e.inference_flops is not None for e in board.entries),
        "with_training_flops": sum(e.training_flops is not None for e in board.entries),
        "reported_with_inference_flops": sum(e.inference_flops is not None for e in rep),
        "reported_with_training_flops": sum(e.training_flops is not None for e in rep),
        "eps_aliases": sum(e.board_eps is not None for e in board.entries),
        "not_measurably_robust": [e.id for e in board.entries if e.robust is not None and not e.measurably_robust],
        "uncounted": uncounted,
    }


def _pc(v: float) -> str:
    return f"{100 * v:.2f}%"


def _ci_text(ci: CI | None) -> str:
    return f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci is not None else "no interval"


def worked_example(board: Board) -> list[str]:
    """Sentences that apply the ranking rule to entries of this board, generated from its data (for
    the page, the Markdown and the JSON): a tie group whose order the compute tie-breaker decided,
    a cheap entry that ranks below a measurably more robust one, and a dominated entry's compute
    overhead and robustness gap."""
    from .fmt import flops as fflops

    out = []
    ranked = [e for e in board.entries if e.best_known is not None]
    # 1. the tie-breaker at work: the first pair of one tie group ranked against best-known order
    pair = None
    for a in ranked:
        if not a.tied:
            continue
        for b in ranked:
            if b.rank > a.rank and b.tie_group == a.tie_group and b.best_known > a.best_known:
                pair = (a, b)
                break
        if pair:
            break
    if pair:
        a, b = pair
        first, last = a.tie_group
        why = (f"needs fewer inference FLOPs ({fflops(a.inference_flops)} against {fflops(b.inference_flops)})"
               if compute_key(a.inference_flops) != compute_key(b.inference_flops) else
               f"needs the same inference FLOPs ({fflops(a.inference_flops)}) and fewer training FLOPs "
               f"({fflops(a.training_flops)} against {fflops(b.training_flops)})")
        out.append(f"{b.name} has the higher best-known accuracy ({_pc(b.best_known)}, 95% CI "
                   f"{_ci_text(b.best_known_ci)}) than {a.name} ({_pc(a.best_known)}, {_ci_text(a.best_known_ci)}), "
                   f"but both are in the statistical tie group of ranks {first} to {last}, whose intervals all "
                   f"overlap, and {a.name} {why}, so {a.name} ranks {a.rank} and {b.name} {b.rank}.")
    # 2. compute never lifts an entry over one that is measurably more robust
    top = ranked[0] if ranked else None
    if top is not None and top.inference_flops is not None:
        below = [e for e in ranked if e.tie_group is None or e.tie_group != top.tie_group]
        below = [e for e in below if e.inference_flops is not None and e.best_known_ci is not None
                 and top.best_known_ci is not None and e.best_known_ci[1] < top.best_known_ci[0]
                 and compute_key(e.inference_flops) < compute_key(top.inference_flops)]
        if below:
            c = min(below, key=lambda e: (compute_key(e.inference_flops), e.rank))
            ratio = top.inference_flops / c.inference_flops
            times = f"{ratio:,.0f}" if ratio >= 100 else f"{ratio:.3g}"
            out.append(f"{c.name} needs {times}× fewer inference FLOPs "
                       f"({fflops(c.inference_flops)}) than {top.name} ({fflops(top.inference_flops)}), but its "
                       f"best-known accuracy, {_pc(c.best_known)} ({_ci_text(c.best_known_ci)}), is measurably "
                       f"below {top.name}'s {_pc(top.best_known)} ({_ci_text(top.best_known_ci)}): the intervals do "
                       f"not overlap, so it ranks {c.rank}, below it.")
    # 3. frontier facts stay beside the rank: a dominated entry's overhead and gap
    robust = [e for e in ranked if e.measurably_robust]
    dominated = [e for e in robust if e.layer is not None and e.layer > 1 and e.overhead and e.overhead > 1
                 and e.gap is not None and e.gap > 0]
    if dominated:
        d = min(dominated, key=lambda e: (e.rank, e.id))
        key_d = compute_key(d.inference_flops)
        cheaper = min((e for e in ranked
                       if e.best_known >= d.best_known and compute_key(e.inference_flops) is not None),
                      key=lambda e: (compute_key(e.inference_flops), -e.best_known, e.id))
        better = max((e for e in ranked if compute_key(e.inference_flops) is not None
                      and compute_key(e.inference_flops) <= key_d),
                     key=lambda e: (e.best_known, -compute_key(e.inference_flops), e.id))
        out.append(f"{d.name} reaches {_pc(d.best_known)} with {fflops(d.inference_flops)} inference FLOPs. "
                   f"{cheaper.name} is at least as robust ({_pc(cheaper.best_known)}) with "
                   f"{fflops(cheaper.inference_flops)}, so {d.name}'s compute overhead is {d.overhead:.3g}×; "
                   f"with no more compute, {better.name} reaches {_pc(better.best_known)}, so its robustness gap "
                   f"is {100 * d.gap:.2f} points. It ranks {d.rank}, in frontier layer {d.layer}.")
    return out
