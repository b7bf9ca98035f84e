"""VNN-LIB 1.0 properties (the verification community's format, https://www.vnnlib.org): a reader.

A property file declares the network's inputs ``X_0 .. X_{n-1}`` and outputs ``Y_0 .. Y_{m-1}``
(``(declare-const X_0 Real)``) and asserts constraints on them; the asserted formula describes
the UNSAFE set: a network satisfies the property ("unsat", "holds") when no input that meets the
input constraints gives an output that meets the output constraints. What is read:

- ``(assert F)`` forms, each F built from ``and``, ``or`` (nested in any way) and the comparisons
  ``<=``, ``>=``, ``<``, ``>``, ``=`` between linear terms (a variable, a number, ``(+ a b ...)``,
  ``(- a b)``, ``(- a)``, ``(* c a)`` with at most one non-constant factor); all asserts are ANDed;
- the formula is brought to disjunctive normal form (at most :data:`MAX_DISJUNCTS` terms). In each
  term the comparisons on inputs must be bounds of single variables (``X_i <= c``, ``c <= X_i``, in
  any order or orientation) that give every input a lower and an upper bound; the comparisons on
  outputs are linear, ``a . y + b <= 0``. A comparison mixing inputs and outputs is refused;
- strict comparisons are read as non-strict: the unsafe set and the input box grow by their
  boundary, so a proof of the closed property proves the strict one (sound, never optimistic);
- the terms are grouped by input box: a :class:`Case` per box holds ``lo``, ``hi`` and the unsafe
  set of :func:`harness.bounds.bab.verify`, a list of conjunctions ``(C, d)`` meaning
  ``{y : C @ y + d <= 0}``. Most files (robustness properties) have one case.

It is a tokenizer and a recursive reader over the S-expressions, never ``eval``. Every malformed
input is a one-line :class:`~harness.errors.HarnessError` naming the line. Sizes are capped
(:data:`MAX_BYTES`, :data:`MAX_DEPTH`, :data:`MAX_DISJUNCTS`, :data:`MAX_VARIABLES`). Written here
because the field's readers (auto_LiRPA's / the VNN-COMP scripts' ``read_vnnlib``) are regular
expression scripts inside verifier packages, not a library we can depend on.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.core.errors import HarnessError, one_line

MAX_BYTES = 256 * 2**20
MAX_DEPTH = 64
MAX_DISJUNCTS = 100_000
MAX_VARIABLES = 50_000_000

_NUMBER = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_VAR = re.compile(r"^([XY])_(0|[1-9][0-9]{0,8})$")
_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_COMPARISONS = ("<=", ">=", "<", ">", "=")


@dataclass
class Case:
    """One input box and the unsafe output set reachable from it (a disjunction of conjunctions)."""

    lo: np.ndarray  # (n_inputs,) float64
    hi: np.ndarray  # (n_inputs,) float64
    unsafe: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # [(C (m, n_out), d (m,))]


@dataclass
class Property:
    n_inputs: int
    n_outputs: int
    cases: list[Case]


class _Tok:
    __slots__ = ("text", "line")

    def __init__(self, text: str, line: int):
        self.text, self.line = text, line


def _tokens(text: str) -> list[_Tok]:
    out = []
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.split(";", 1)[0]
        out.extend(_Tok(m.group(0), lineno) for m in _TOKEN.finditer(line))
    return out


def _sexprs(toks: list[_Tok], where: str) -> list:
    """The top-level S-expressions; a list is ``(line, [items])``, an atom its token."""
    stack: list[tuple[int, list]] = []
    top: list = []
    for t in toks:
        if t.text == "(":
            if len(stack) >= MAX_DEPTH:
                raise HarnessError(f"{where}:{t.line}: nested deeper than {MAX_DEPTH} levels")
            stack.append((t.line, []))
        elif t.text == ")":
            if not stack:
                raise HarnessError(f"{where}:{t.line}: unbalanced ')'")
            done = stack.pop()
            (stack[-1][1] if stack else top).append(done)
        else:
            if not stack:
                raise HarnessError(f"{where}:{t.line}: {one_line(t.text, 40)!r} outside of a form")
            stack[-1][1].append(t)
    if stack:
        raise HarnessError(f"{where}:{stack[-1][0]}: unbalanced '(' (the file ends inside a form)")
    return top


def _line(e) -> int:
    return e.line if isinstance(e, _Tok) else e[0]


def _show(e) -> str:
    if isinstance(e, _Tok):
        return e.text
    return "(" + " ".join(_show(x) for x in e[1][:4]) + (" ..." if len(e[1]) > 4 else "") + ")"


class _Reader:
    def __init__(self, where: str):
        self.where = where
        self.declared: dict[str, int] = {}  # "X_3" -> line

    def fail(self, e, msg: str) -> HarnessError:
        return HarnessError(f"{self.where}:{_line(e)}: {msg}")

    # linear terms: ({var: coef}, const)
    def term(self, e) -> tuple[dict[str, float], float]:
        if isinstance(e, _Tok):
            s = e.text
            if _NUMBER.match(s):
                v = float(s)
                if not math.isfinite(v):
                    raise self.fail(e, f"number {one_line(s, 40)!r} is not finite")
                return {}, v
            if _VAR.match(s):
                if s not in self.declared:
                    raise self.fail(e, f"{s} is used before its declare-const")
                return {s: 1.0}, 0.0
            raise self.fail(e, f"unknown term {one_line(s, 40)!r} (expected X_i, Y_j or a number)")
        items = e[1]
        if not items or not isinstance(items[0], _Tok):
            raise self.fail(e, f"malformed term {one_line(_show(e), 60)}")
        op, args = items[0].text, items[1:]
        parts = [self.term(a) for a in args]
        if op == "+" and parts:
            return _lin_sum(parts, [1.0] * len(parts))
        if op == "-" and len(parts) == 1:
            return _lin_sum(parts, [-1.0])
        if op == "-" and len(parts) >= 2:
            return _lin_sum(parts, [1.0] + [-1.0] * (len(parts) - 1))
        if op == "*" and parts:
            coef, lin = 1.0, None
            for p in parts:
                if p[0]:
                    if lin is not None:
                        raise self.fail(e, "a product of two variables is not linear")
                    lin = p
                else:
                    coef *= p[1]
            if lin is None:
                return {}, coef
            return {k: coef * v for k, v in lin[0].items()}, coef * lin[1]
        raise self.fail(e, f"unsupported term {one_line(_show(e), 60)} (VNN-LIB 1.0 linear terms: +, -, *)")

    # formulas: DNF, a list of terms, each a list of atoms (coefs, const) meaning coefs . v + const <= 0
    def formula(self, e) -> list[list[tuple[dict[str, float], float]]]:
        if isinstance(e, _Tok):
            if e.text == "true":
                return [[]]
            if e.text == "false":
                return []
            raise self.fail(e, f"expected a formula, got {one_line(e.text, 40)!r}")
        items = e[1]
        if not items or not isinstance(items[0], _Tok):
            raise self.fail(e, f"malformed formula {one_line(_show(e), 60)}")
        op, args = items[0].text, items[1:]
        if op == "and":
            out: list[list] = [[]]
            for a in args:
                out = self._product(out, self.formula(a), e)
            return out
        if op == "or":
            out = []
            for a in args:
                out.extend(self.formula(a))
                if len(out) > MAX_DISJUNCTS:
                    raise self.fail(e, f"more than {MAX_DISJUNCTS} disjuncts")
            return out
        if op in _COMPARISONS:
            if len(args) != 2:
                raise self.fail(e, f"{op} takes two terms, got {len(args)}")
            (ca, ka), (cb, kb) = self.term(args[0]), self.term(args[1])
            diff = _lin_sum([(ca, ka), (cb, kb)], [1.0, -1.0])  # a - b
            if op in ("<=", "<"):
                atoms = [diff]
            elif op in (">=", ">"):
                atoms = [_neg(diff)]
            else:
                atoms = [diff, _neg(diff)]
            kinds = {k[0] for a in atoms for k in a[0]}
            if len(kinds) > 1:
                raise self.fail(e, "a comparison mixes inputs (X) and outputs (Y); not VNN-LIB 1.0 box/linear form")
            out = [[]]
            for a in atoms:
                if not a[0]:  # constant: true or false
                    if a[1] > 0:
                        return []
                    continue
                out[0].append(a)
            return out
        raise self.fail(e, f"unsupported operator {one_line(op, 40)!r} (and, or, <=, >=, <, >, =)")

    def _product(self, a: list, b: list, e) -> list:
        if len(a) * len(b) > MAX_DISJUNCTS:
            raise self.fail(e, f"the formula has more than {MAX_DISJUNCTS} disjuncts in normal form")
        if len(a) == 1:
            return [a[0] + t for t in b]
        if len(b) == 1:
            return [t + b[0] for t in a]
        return [s + t for s in a for t in b]


def _lin_sum(parts, weights):
    coefs: dict[str, float] = {}
    const = 0.0
    for (c, k), w in zip(parts, weights, strict=True):
        for var, v in c.items():
            coefs[var] = coefs.get(var, 0.0) + w * v
        const += w * k
    return {k: v for k, v in coefs.items() if v != 0.0}, const


def _neg(a):
    return {k: -v for k, v in a[0].items()}, -a[1]


def parse_vnnlib(text: str, where: str = "<vnnlib>") -> Property:
    """The property in ``text`` (see the module docstring); ``where`` names it in errors."""
    if len(text) > MAX_BYTES:
        raise HarnessError(f"{where}: larger than {MAX_BYTES // 2**20} MiB")
    if "\x00" in text:
        raise HarnessError(f"{where}: not a text file (NUL byte)")
    r = _Reader(where)
    asserts = []
    for form in _sexprs(_tokens(text), where):
        if isinstance(form, _Tok):  # pragma: no cover - _sexprs refuses top-level atoms
            raise r.fail(form, "expected a form")
        items = form[1]
        head = items[0].text if items and isinstance(items[0], _Tok) else None
        if head == "declare-const":
            if len(items) != 3 or not all(isinstance(i, _Tok) for i in items):
                raise r.fail(form, "declare-const takes a name and a sort: (declare-const X_0 Real)")
            name, sort = items[1].text, items[2].text
            if not _VAR.match(name):
                raise r.fail(form, f"variable {one_line(name, 40)!r}: VNN-LIB names inputs X_i and outputs Y_j")
            if sort != "Real":
                raise r.fail(form, f"{name} has sort {one_line(sort, 20)!r}; only Real is supported")
            if name in r.declared:
                raise r.fail(form, f"{name} is declared twice (first on line {r.declared[name]})")
            if len(r.declared) >= MAX_VARIABLES:
                raise r.fail(form, f"more than {MAX_VARIABLES} variables")
            r.declared[name] = form[0]
        elif head == "assert":
            if len(items) != 2:
                raise r.fail(form, "assert takes one formula")
            asserts.append(items[1])
        else:
            raise r.fail(form, f"unsupported command {one_line(head or _show(form), 40)!r} "
                         "(VNN-LIB 1.0: declare-const, assert)")
    n_in, n_out = _count(r, "X"), _count(r, "Y")
    if n_in == 0 or n_out == 0:
        raise HarnessError(f"{where}: declares {n_in} inputs (X_i) and {n_out} outputs (Y_j); both are needed")
    # asserts with one disjunct are shared by every term: kept apart from the product (784 x 2 bounds)
    common: list = []
    terms: list[list] = [[]]
    for a in asserts:
        dnf = r.formula(a)
        if len(dnf) == 1:
            common.extend(dnf[0])
        else:
            terms = r._product(terms, dnf, a)
    cases: dict[bytes, Case] = {}
    base_lo, base_hi = np.full(n_in, -np.inf), np.full(n_in, np.inf)
    base_out = _split(common, base_lo, base_hi, n_out, where)
    for t in terms:
        lo, hi = base_lo.copy(), base_hi.copy()
        rows = base_out + _split(t, lo, hi, n_out, where)
        missing = np.nonzero(~np.isfinite(lo) | ~np.isfinite(hi))[0]
        if missing.size:
            i = int(missing[0])
            side = "lower" if not np.isfinite(lo[i]) else "upper"
            raise HarnessError(f"{where}: input X_{i} has no {side} bound (inputs must lie in a box)")
        if (bad := np.nonzero(lo > hi)[0]).size:
            i = int(bad[0])
            if len(terms) == 1:
                raise HarnessError(f"{where}: the input box is empty: X_{i} >= {lo[i]!r} and <= {hi[i]!r}")
            continue  # an empty term of a disjunction: no input, nothing unsafe
        C = np.zeros((len(rows), n_out))
        d = np.zeros(len(rows))
        for j, (coefs, const) in enumerate(rows):
            for var, v in coefs.items():
                C[j, int(var[2:])] = v
            d[j] = const
        lo, hi = lo + 0.0, hi + 0.0  # no -0.0
        key = lo.tobytes() + hi.tobytes()
        case = cases.setdefault(key, Case(lo, hi))
        case.unsafe.append((C, d))
    if not cases:
        raise HarnessError(f"{where}: every input box of the property is empty")
    return Property(n_in, n_out, list(cases.values()))


def _count(r: _Reader, kind: str) -> int:
    idx = sorted(int(n[2:]) for n in r.declared if n[0] == kind)
    if idx != list(range(len(idx))):
        first = next(i for i, v in enumerate(idx) if v != i)
        raise HarnessError(f"{r.where}: the {kind} variables must be numbered from 0 without gaps; "
                           f"{kind}_{first} is missing")
    return len(idx)


def _split(atoms, lo: np.ndarray, hi: np.ndarray, n_out: int, where: str) -> list:
    """Apply the input bounds of ``atoms`` to ``lo``/``hi``; return the output atoms."""
    out = []
    for coefs, const in atoms:
        (var, v), *rest = coefs.items()
        if var[0] == "Y":
            out.append((coefs, const))
            continue
        if rest:
            raise HarnessError(f"{where}: a constraint couples inputs {', '.join(sorted(coefs)[:3])}; only box "
                               "bounds on single inputs are supported")
        i, bound = int(var[2:]), -const / v  # v x + const <= 0
        if v > 0:
            hi[i] = min(hi[i], bound)
        else:
            lo[i] = max(lo[i], bound)
    return out


def read_vnnlib(path: str | Path) -> Property:
    """The property in the file ``path`` (UTF-8 text; ``.vnnlib`` or any name)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise HarnessError(f"{one_line(p, 200)}: larger than {MAX_BYTES // 2**20} MiB")
        data = p.read_bytes()
    except OSError as e:
        raise HarnessError(f"cannot read {one_line(p, 200)}: {one_line(e.strerror or e, 100)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HarnessError(f"{one_line(p, 200)}: not UTF-8 text")
    return parse_vnnlib(text, one_line(p, 200))
