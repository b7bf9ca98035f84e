"""Training recipes of the reported rows (``leaderboard/training_recipes.csv``) → training FLOPs.

One row per RobustBench entry (``robustbench_id``, ``dataset``, ``threat_model``), with the method
and its attack steps, AWP, epochs, examples per epoch (generated and extra data included), the
real:generated ratio, extra data, batch size, a status (``known``, ``partial``, ``unknown``), the
exact source (a URL plus section or table, or a config file) and a note with the assumptions or
why a number is unknown.

Training FLOPs = forward FLOPs x examples seen x the method's multiplier (+ the FLOPs of another
network per example seen, for a method that trains or runs one), with examples seen = epochs x
examples per epoch and the multiplier from :func:`harness.compute.flops.reported_method_cost` (the one place
each is derived, from :func:`harness.compute.flops.method_multiplier` for the base methods, which the
harness's own records use too). A derivation may be a lower or an upper bound, and the formula
shown on the board says so and why. A recipe that lacks what its method's derivation needs gives no
training FLOPs, and the entry says why; nothing is guessed.

:func:`load_recipes` reads the committed table strictly (the build refuses a malformed row with
one line); :func:`merge_recipe_rows` checks contributed rows for plausibility before they are
merged into it (``scripts/merge_recipes.py``).
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

from harness.compute.training_cost import (
    STEP_METHODS,
    MethodCost,
    RecipeFacts,
    describe_method,
    reported_method_cost,
    train_set_size,
)
from harness.core.errors import HarnessError

RECIPE_COLUMNS = [
    "robustbench_id", "dataset", "threat_model", "method", "attack_steps", "awp", "epochs",
    "examples_per_epoch", "real_generated_ratio", "extra_data", "batch_size", "status", "source", "note",
    "base_models", "excludes",
]
#: columns a contributed table may leave out (empty when absent)
OPTIONAL_COLUMNS = ("base_models", "excludes")
BASE_METHODS = ("standard", "pgd", "trades", "mart", "fgsm", "free")
STATUSES = ("known", "partial", "unknown")
#: the data sets a recipe may name; an epoch shorter than half the training set is doubted
#: unless the note says a subset was used
MIN_EPOCH = {d: train_set_size(d) for d in ("cifar10", "cifar100", "imagenet")}

Key = tuple[str, str, str]  # (dataset, threat model, robustbench id)


@dataclass
class Recipe:
    robustbench_id: str
    dataset: str
    threat_model: str
    method: str            # standard | pgd | ... | other:<name> | unknown
    attack_steps: int | None
    awp: bool | None
    epochs: float | None
    examples_per_epoch: float | None
    real_generated_ratio: str
    extra_data: str
    batch_size: int | None
    status: str
    source: str
    note: str
    where: str = ""
    #: the RobustBench ids (same data set and threat model) of the models this one is built on
    #: (post-training, training-free ensembles): their training FLOPs are added to this row's own
    base_models: tuple[str, ...] = ()
    #: training this row's numbers leave out (a pre-training stage, a base model that is not a row):
    #: when set, the training FLOPs are a lower bound
    excludes: str = ""

    @property
    def key(self) -> Key:
        return (self.dataset, self.threat_model, self.robustbench_id)

    @property
    def examples_seen(self) -> float | None:
        if self.epochs is None or self.examples_per_epoch is None:
            return None
        return self.epochs * self.examples_per_epoch

    @property
    def facts(self) -> RecipeFacts:
        return RecipeFacts(self.dataset, self.attack_steps, self.awp, self.epochs, self.examples_per_epoch)

    @property
    def cost(self) -> MethodCost | str:
        """The cost per example seen (:func:`harness.compute.flops.reported_method_cost`), or why there is none."""
        return reported_method_cost(self.method, self.facts)

    @property
    def multiplier(self) -> float | None:
        cost = self.cost
        return cost.multiplier if isinstance(cost, MethodCost) else None

    def method_label(self) -> str:
        if self.method == "unknown":
            return "unknown"
        if self.method.startswith("other:"):
            short = self.method[len("other:"):].split(" (")[0].strip()
            return short + (" + AWP" if self.awp else "")
        return describe_method(self.method, self.attack_steps, bool(self.awp))


@dataclass
class TrainingCompute:
    value: float | None
    formula: str   # how the value was computed, or why there is none
    source: str    # the recipe's source
    bound: str = "exact"  # or "lower bound" / "upper bound" (harness.compute.flops.MethodCost)


def _num(text: str, where: str, column: str, *, integer: bool = False, positive: bool = True) -> float | int | None:
    t = (text or "").strip().replace("_", "").replace(",", "")
    if t == "" or t.lower() == "unknown":
        return None
    try:
        v = float(t)
    except ValueError:
        raise HarnessError(f"{where}: column {column} is not a number (or 'unknown'): {text!r}")
    if not math.isfinite(v) or (positive and v <= 0) or v < 0:
        raise HarnessError(f"{where}: column {column} must be a positive number, got {text!r}")
    if integer:
        if v != int(v):
            raise HarnessError(f"{where}: column {column} must be a whole number, got {text!r}")
        return int(v)
    return v


def parse_recipe(row: dict[str, str], where: str) -> Recipe:
    """One CSV row → a Recipe; raises HarnessError naming the column on anything malformed."""
    missing = [c for c in RECIPE_COLUMNS if c not in row and c not in OPTIONAL_COLUMNS]
    if missing:
        raise HarnessError(f"{where}: missing columns {', '.join(missing)}")
    g = {k: (row.get(k) or "").strip() for k in RECIPE_COLUMNS}
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}", g["robustbench_id"]):
        raise HarnessError(f"{where}: column robustbench_id is not a RobustBench name: {g['robustbench_id']!r}")
    if g["dataset"] not in MIN_EPOCH:
        raise HarnessError(f"{where}: column dataset must be one of {', '.join(MIN_EPOCH)}, got {g['dataset']!r}")
    if g["threat_model"] not in ("Linf", "L2"):
        raise HarnessError(f"{where}: column threat_model must be Linf or L2, got {g['threat_model']!r}")
    method = g["method"].lower()
    if not (method in BASE_METHODS or method == "unknown" or re.fullmatch(r"other:[^\x00-\x1f\x7f]{1,200}", method)):
        raise HarnessError(f"{where}: column method must be one of {', '.join(BASE_METHODS)}, other:<name> or "
                           f"unknown, got {g['method']!r}")
    steps = _num(g["attack_steps"], where, "attack_steps", integer=True, positive=False)
    if method in STEP_METHODS and steps is not None and steps < 1:
        raise HarnessError(f"{where}: column attack_steps must be >= 1 for method {method}")
    awp_t = g["awp"].lower()
    if awp_t not in ("true", "false", "", "unknown"):
        raise HarnessError(f"{where}: column awp must be true, false or unknown, got {g['awp']!r}")
    ratio = g["real_generated_ratio"]
    if ratio and ratio.lower() != "unknown" and not re.match(r"\d+(\.\d+)?:\d+(\.\d+)?", ratio):
        raise HarnessError(f"{where}: column real_generated_ratio must start like 3:7, got {ratio!r}")
    if g["status"] not in STATUSES:
        raise HarnessError(f"{where}: column status must be one of {', '.join(STATUSES)}, got {g['status']!r}")
    bases = tuple(b.strip() for b in g["base_models"].split("+")) if g["base_models"] else ()
    for b in bases:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", b) or b == g["robustbench_id"]:
            raise HarnessError(f"{where}: column base_models must be '+'-separated RobustBench names other than "
                               f"the row's own, got {g['base_models'][:80]!r}")
    if g["source"] and not re.match(r"https?://", g["source"]):
        raise HarnessError(f"{where}: column source must start with an http(s) URL, got {g['source'][:60]!r}")
    r = Recipe(
        robustbench_id=g["robustbench_id"], dataset=g["dataset"], threat_model=g["threat_model"], method=method,
        attack_steps=steps, awp=None if awp_t in ("", "unknown") else awp_t == "true",
        epochs=_num(g["epochs"], where, "epochs"), examples_per_epoch=_num(g["examples_per_epoch"], where,
                                                                           "examples_per_epoch"),
        real_generated_ratio=ratio, extra_data=g["extra_data"],
        batch_size=_num(g["batch_size"], where, "batch_size", integer=True), status=g["status"],
        source=g["source"], note=g["note"], where=where, base_models=bases, excludes=g["excludes"])
    if r.status == "known":
        need = [("method", r.method != "unknown"), ("awp", r.awp is not None), ("epochs", r.epochs is not None),
                ("examples_per_epoch", r.examples_per_epoch is not None),
                ("attack_steps", r.method not in STEP_METHODS or r.attack_steps is not None), ("source",
                                                                                               bool(r.source))]
        lacking = [n for n, ok in need if not ok]
        if lacking:
            raise HarnessError(f"{where}: status known, but {', '.join(lacking)} "
                               f"{'is' if len(lacking) == 1 else 'are'} not given")
    if r.status != "known" and not r.note:
        raise HarnessError(f"{where}: status {r.status} needs a note saying what is unknown and why")
    return r


def plausibility_problems(r: Recipe) -> list[str]:
    """Reasons to doubt a contributed row (each one sentence); empty when it looks right."""
    out = []
    if r.examples_per_epoch is not None and r.examples_per_epoch < MIN_EPOCH[r.dataset] * 0.5 \
            and "subset" not in r.note.lower():
        out.append(f"examples_per_epoch {r.examples_per_epoch:g} is less than half of the {r.dataset} training set")
    if r.epochs is not None and not (0.5 <= r.epochs <= 20_000):
        out.append(f"epochs {r.epochs:g} is outside [0.5, 20000]")
    if r.attack_steps is not None and r.method in ("pgd", "trades", "mart") and r.attack_steps > 100:
        out.append(f"attack_steps {r.attack_steps} is above 100")
    if r.method == "free" and r.attack_steps is not None and r.attack_steps > 20:
        out.append(f"free training with m = {r.attack_steps} replays is implausible")
    if r.method == "fgsm" and r.attack_steps not in (None, 0, 1):
        out.append(f"FGSM with {r.attack_steps} attack steps: that is PGD")
    if r.batch_size is not None and not (8 <= r.batch_size <= 65_536):
        out.append(f"batch_size {r.batch_size} is outside [8, 65536]")
    if r.status in ("known", "partial") and not r.source:
        out.append("no source")
    return out


def read_recipe_csv(path: Path, *, strict: bool = True) -> list[Recipe]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HarnessError(f"{path}: cannot read: {e}")
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in RECIPE_COLUMNS if c not in (reader.fieldnames or []) and c not in OPTIONAL_COLUMNS]
    if missing:
        raise HarnessError(f"{path}: missing columns {', '.join(missing)}")
    return [parse_recipe(row, f"{path}:{line}") for line, row in enumerate(reader, start=2)]


def load_recipes(path: Path) -> dict[Key, Recipe]:
    """The committed recipe table, one row per key; raises HarnessError on a bad or repeated row."""
    out: dict[Key, Recipe] = {}
    for r in read_recipe_csv(path):
        if r.key in out:
            raise HarnessError(f"{r.where}: a second recipe for {'/'.join(r.key)} (first at {out[r.key].where})")
        out[r.key] = r
    return out


def training_compute(r: Recipe, forward_flops: float | None) -> TrainingCompute:
    """Training FLOPs of one recipe for a model of ``forward_flops`` per example (fvcore): the row's
    own training only (:func:`training_computes` adds its base models'); a lower bound when the
    row's ``excludes`` names training its numbers leave out."""
    own = _own_training_compute(r, forward_flops)
    if own.value is not None and r.excludes:
        why = f"excludes {r.excludes}"
        formula = own.formula if own.bound == "exact" else own.formula.split(": ", 1)[1]
        if own.bound == "upper bound":
            return TrainingCompute(None, f"unknown: an upper bound ({formula}) for a row that also excludes "
                                         f"{r.excludes}", r.source)
        return TrainingCompute(own.value, f"lower bound: {formula}; {why}", r.source, "lower bound")
    return own


def _own_training_compute(r: Recipe, forward_flops: float | None) -> TrainingCompute:
    cost, seen = r.cost, r.examples_seen
    if isinstance(cost, MethodCost) and cost.multiplier == 0 and not cost.extra_flops:
        if not r.base_models:
            return TrainingCompute(None, f"unknown: {r.method_label()} trains no weights, and the row names no "
                                         "base_models whose training it inherits", r.source)
        formula = f"0 ({r.method_label()}: {cost.passes})"
        if cost.bound != "exact":
            formula = f"{cost.bound}: {formula}; {cost.why}"
        return TrainingCompute(0.0, formula, r.source, cost.bound)
    missing = []
    if isinstance(cost, str):
        missing.append(cost)
    if r.epochs is None and "epochs" not in " ".join(missing):
        missing.append("the epochs are unknown")
    if r.examples_per_epoch is None:
        missing.append("the examples per epoch are unknown")
    if forward_flops is None:
        missing.append("the model's forward FLOPs were not counted")
    if missing or not isinstance(cost, MethodCost) or seen is None or forward_flops is None:
        why = "unknown: " + "; ".join(missing)
        if r.note:
            why += f" ({r.note})"
        return TrainingCompute(None, why, r.source)
    value = forward_flops * seen * cost.multiplier + seen * cost.extra_flops
    from .fmt import si
    formula = (f"{si(forward_flops)} forward FLOPs × {si(seen)} examples seen ({r.epochs:g} epochs × "
               f"{si(r.examples_per_epoch)}) × {cost.multiplier:.4g} ({r.method_label()}: {cost.passes})")
    if cost.extra_flops:
        formula += f" + {si(seen)} × {si(cost.extra_flops)} FLOPs of {cost.extra_what}"
    if cost.bound != "exact":
        formula = f"{cost.bound}: {formula}; {cost.why}"
    return TrainingCompute(value, formula, r.source, cost.bound)


def training_computes(recipes: dict[Key, Recipe], forward_flops: dict[Key, float | None]) -> dict[Key, TrainingCompute]:
    """Training FLOPs of every recipe, each row's own (:func:`training_compute`, with its model's
    forward FLOPs) plus those of the models it is built on (``base_models``, each with its own
    forward FLOPs). A row inherits its bases' bounds: a lower bound if any part is one (or the row's
    own part is unknown: a post-training step whose passes were not counted), no value when a base's
    training FLOPs are unknown or an upper and a lower bound would be added. Raises HarnessError for a
    base that has no recipe of the same data set and threat model, or a cycle."""
    from .fmt import si

    out: dict[Key, TrainingCompute] = {}

    def resolve(key: Key, chain: tuple[Key, ...]) -> TrainingCompute:
        if key in out:
            return out[key]
        r = recipes[key]
        own = training_compute(r, forward_flops.get(key))
        if not r.base_models:
            out[key] = own
            return own
        parts, bounds, lacking = [], set(), []
        for b in r.base_models:
            bk = (r.dataset, r.threat_model, b)
            if bk not in recipes:
                raise HarnessError(f"{r.where}: base model {b} has no recipe for {r.dataset}/{r.threat_model}")
            if bk in chain:
                raise HarnessError(f"{r.where}: base models form a cycle: {' -> '.join(k[2] for k in chain + (bk,))}")
            tc = resolve(bk, chain + (bk,))
            if tc.value is None:
                lacking.append(f"base model {b}'s training FLOPs are {tc.formula}")
                continue
            parts.append((f"{b}: {si(tc.value)}" + (f" ({tc.bound})" if tc.bound != "exact" else ""), tc.value))
            bounds.add(tc.bound)
        if lacking:
            res = TrainingCompute(None, "unknown: " + "; ".join(lacking), r.source)
        else:
            value = sum(v for _, v in parts)
            own_text = own.formula if own.bound == "exact" else own.formula.split(": ", 1)[1]
            if own.value is None:
                bounds.add("lower bound")
                why = r.cost if isinstance(r.cost, str) else "its epochs or examples per epoch are unknown"
                own_text = f"this row's own training, not counted ({why})"
            else:
                value += own.value
                bounds.add(own.bound)
            bounds.discard("exact")
            formula = (f"base models' training ({'; '.join(t for t, _ in parts)}) + this row's own: {own_text}")
            if len(bounds) > 1:
                res = TrainingCompute(None, f"unknown: the parts mix lower and upper bounds ({formula})", r.source)
            elif bounds:
                (bound,) = bounds
                res = TrainingCompute(value, f"{bound}: {formula}", r.source, bound)
            else:
                res = TrainingCompute(value, formula, r.source)
        out[key] = res
        return res

    for key in recipes:
        resolve(key, (key,))
    return out


def write_recipes(rows: list[Recipe], path: Path) -> None:
    from harness.core.files import atomic_write_text

    def fmt(v) -> str:
        if v is None:
            return "unknown"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and v == int(v):
            return str(int(v))
        return str(v)

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RECIPE_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: (r.dataset, r.threat_model, r.robustbench_id)):
        w.writerow({
            "robustbench_id": r.robustbench_id, "dataset": r.dataset, "threat_model": r.threat_model,
            "method": r.method, "attack_steps": fmt(r.attack_steps) if r.attack_steps is not None else "",
            "awp": fmt(r.awp), "epochs": fmt(r.epochs), "examples_per_epoch": fmt(r.examples_per_epoch),
            "real_generated_ratio": r.real_generated_ratio, "extra_data": r.extra_data,
            "batch_size": fmt(r.batch_size) if r.batch_size is not None else "", "status": r.status,
            "source": r.source, "note": r.note, "base_models": "+".join(r.base_models), "excludes": r.excludes,
        })
    atomic_write_text(Path(path), buf.getvalue())
