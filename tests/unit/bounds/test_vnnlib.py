"""The VNN-LIB 1.0 reader (harness.bounds.vnnlib): boxes, linear output constraints, DNF, one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

from harness.bounds.vnnlib import parse_vnnlib, read_vnnlib
from harness.core.errors import HarnessError

HEAD = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n" \
       "(declare-const Y_2 Real)\n"
BOX = "(assert (<= X_0 1.0))\n(assert (>= X_0 -0.5))\n(assert (<= 0.25 X_1))\n(assert (< X_1 .75))\n"


def _unsafe_at(prop, y) -> bool:
    """Brute force over the parsed property: is the output y in some unsafe conjunction of case 0?"""
    return any(bool(np.all(C @ y + d <= 0)) for C, d in prop.cases[0].unsafe)


def test_box_and_a_disjunction_of_conjunctions():
    text = HEAD + BOX + """; the unsafe outputs
(assert (or (and (>= Y_0 Y_2) (<= Y_1 3))
            (and (>= (+ Y_1 (* 2 Y_2)) (- Y_0 1)))))
"""
    p = parse_vnnlib(text)
    assert (p.n_inputs, p.n_outputs, len(p.cases)) == (2, 3, 1)
    case = p.cases[0]
    assert case.lo.tolist() == [-0.5, 0.25] and case.hi.tolist() == [1.0, 0.75]  # strict < read as <=
    assert len(case.unsafe) == 2
    # hand-computed rows: y2 - y0 <= 0, y1 - 3 <= 0 | y0 - 1 - y1 - 2 y2 <= 0
    C0, d0 = case.unsafe[0]
    assert C0.tolist() == [[-1, 0, 1], [0, 1, 0]] and d0.tolist() == [0, -3]
    C1, d1 = case.unsafe[1]
    assert C1.tolist() == [[1, -1, -2]] and d1.tolist() == [-1]
    rng = np.random.default_rng(0)
    for y in rng.normal(scale=3, size=(500, 3)):  # the formula itself, evaluated directly
        want = (y[0] >= y[2] and y[1] <= 3) or (y[1] + 2 * y[2] >= y[0] - 1)
        assert _unsafe_at(p, y) == want


def test_nested_and_or_is_brought_to_normal_form():
    # (A or B) and (C or D) -> 4 conjunctions; asserts are ANDed
    text = HEAD + BOX + "(assert (or (<= Y_0 0) (<= Y_1 0)))\n(assert (or (>= Y_2 1) (>= Y_2 Y_0)))\n"
    p = parse_vnnlib(text)
    assert len(p.cases[0].unsafe) == 4
    rng = np.random.default_rng(1)
    for y in rng.normal(size=(500, 3)):
        want = (y[0] <= 0 or y[1] <= 0) and (y[2] >= 1 or y[2] >= y[0])
        assert _unsafe_at(p, y) == want


def test_input_boxes_inside_a_disjunction_become_cases():
    text = HEAD + """(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (>= Y_0 Y_1))
                         (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1) (>= Y_2 Y_1))
                         (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (= Y_2 0))))"""
    p = parse_vnnlib(text)
    assert len(p.cases) == 2
    assert [c.lo.tolist() for c in p.cases] == [[0, 0], [2, 0]]
    assert [len(c.unsafe) for c in p.cases] == [2, 1]
    assert p.cases[0].unsafe[1][0].tolist() == [[0, 0, 1], [0, 0, -1]]  # = as two rows


def test_a_mnistfc_style_file(tmp_path):
    lines = [f"(declare-const X_{i} Real)" for i in range(784)] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i in range(784):
        lines += [f"(assert (<= X_{i} {min(1.0, 0.5 + 0.03)}))", f"(assert (>= X_{i} {0.5 - 0.03}))"]
    lines.append("(assert (or\n" + "\n".join(f"    (and (>= Y_{j} Y_8))" for j in range(10) if j != 8) + "\n))")
    path = tmp_path / "prop.vnnlib"
    path.write_text("\n".join(lines))
    p = read_vnnlib(path)
    assert (p.n_inputs, p.n_outputs, len(p.cases), len(p.cases[0].unsafe)) == (784, 10, 1, 9)
    C, d = p.cases[0].unsafe[3]
    assert C[0, 8] == 1 and C[0, 3] == -1 and d[0] == 0


@pytest.mark.parametrize("text, words", [
    ("(declare-const X_0 Real)", "inputs"),
    (HEAD + "(assert (<= X_0 1))", "no lower bound"),
    (HEAD + BOX + "(assert (<= Y_0 Y_1)", "unbalanced '('"),
    (HEAD + BOX + "(assert (<= Y_0 Y_1)))", "unbalanced ')'"),
    (HEAD + BOX + "(assert (<= (* Y_0 Y_1) 0))", "not linear"),
    (HEAD + BOX + "(assert (<= X_0 Y_1))", "mixes inputs"),
    (HEAD + BOX + "(assert (<= Y_7 0))", "before its declare-const"),
    (HEAD + BOX + "(assert (<= Y_0 nan))", "unknown term"),
    (HEAD + BOX + "(assert (<= Y_0 1e999))", "not finite"),
    (HEAD + BOX + "(assert (exp Y_0))", "unsupported operator"),
    (HEAD + BOX + "(define-fun f () Real 0)", "unsupported command"),
    (HEAD + "(declare-const X_0 Real)", "declared twice"),
    ("(declare-const X_0 Int)", "only Real"),
    ("(declare-const Z_0 Real)", "VNN-LIB names"),
    ("(declare-const X_1 Real)(declare-const Y_0 Real)", "X_0 is missing"),
    (HEAD + "(assert (<= X_0 0))(assert (>= X_0 1))(assert (<= X_1 0))(assert (>= X_1 0))", "empty"),
    (HEAD + BOX + "(assert (<= (+ X_0 X_1) 1))", "couples inputs"),
    ("(" * 100, "nested deeper"),
    (HEAD + "junk", "outside of a form"),
    ("\x00", "NUL"),
])
def test_malformed_properties_are_one_line_errors(text, words):
    with pytest.raises(HarnessError) as e:
        parse_vnnlib(text, "p.vnnlib")
    msg = str(e.value)
    assert words in msg and "\n" not in msg and msg.startswith("p.vnnlib")


def test_unreadable_files(tmp_path):
    with pytest.raises(HarnessError, match="cannot read"):
        read_vnnlib(tmp_path / "missing.vnnlib")
    bad = tmp_path / "latin1.vnnlib"
    bad.write_bytes(b"; caf\xe9\n")
    with pytest.raises(HarnessError, match="not UTF-8"):
        read_vnnlib(bad)
