"""Number formatting shared by the Markdown, JSON and HTML renderers."""
from __future__ import annotations

import math

DASH = "–"


def pct(v: float | None, digits: int = 2) -> str:
    return DASH if v is None else f"{100 * v:.{digits}f}%"


def ci(c: tuple[float, float] | None, digits: int = 1) -> str:
    return "" if c is None else f"[{100 * c[0]:.{digits}f}, {100 * c[1]:.{digits}f}]"


def pct_ci(v: float | None, c: tuple[float, float] | None) -> str:
    return pct(v) if c is None or v is None else f"{pct(v)} {ci(c)}"


def si(v: float | int | None, unit: str = "") -> str:
    """3 significant digits with an SI prefix: 38.8 G, 266 M, 609 k."""
    if v is None:
        return DASH
    v = float(v)
    if v == 0:
        return f"0{unit}"
    for p, s in ((1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= p * 0.9995:  # 999.7 M reads 1 G (3 significant digits)
            m = f"{v / p:.3g}"
            return f"{m} {s}{unit}"
    return f"{v:.3g}{unit}"


def flops(v: float | None) -> str:
    """FLOPs, like every compute figure on the board: 3 significant digits with an SI prefix
    (53.3 G per image, 735 E for a training run)."""
    return si(v)


def bounded_flops(v: float | None, bound: str | None) -> str:
    """A compute figure that may be a bound: "≥ 1.2 E" (lower bound), "≤ 3.4 E" (upper bound)."""
    mark = {"lower bound": "≥ ", "upper bound": "≤ "}.get(bound or "", "") if v is not None else ""
    return mark + flops(v)


def overhead(v: float | None) -> str:
    """Compute overhead: this entry's FLOPs over the least FLOPs of any entry at least as robust."""
    if v is None:
        return DASH
    return "1×" if v == 1 else f"{v:.3g}×"


def overhead_title(v: float | None) -> str:
    if v is None:
        return "needs AutoAttack accuracy and the compute figure"
    if v == 1:
        return "no entry at least as robust needs less compute"
    return f"an entry at least as robust needs {1 / v:.3g}× this entry's compute ({v:.3g}× less)"


def gap(v: float | None) -> str:
    """Robustness gap, in percentage points."""
    if v is None:
        return DASH
    return "0" if v == 0 else f"{100 * v:.2f}"


def gap_title(v: float | None) -> str:
    if v is None:
        return "needs AutoAttack accuracy and the compute figure"
    if v == 0:
        return "no entry with at most this compute is more robust"
    return f"an entry with at most this compute is {100 * v:.2f} points more robust"


def compute_key(v: float | int | None) -> float | None:
    """A compute figure rounded to the 3 significant digits the tables show. Frontiers and the
    efficiency figure compare these: counts that agree to 3 digits (e.g. a ResNet-18 and a
    PreActResNet-18, 0.02% apart) count as equal, as they read on the page."""
    if v is None:
        return None
    v = float(v)
    if not math.isfinite(v) or v <= 0:
        return None
    return float(f"{v:.3g}")


def saving(s: float | None) -> str:
    if s is None:
        return DASH
    if math.isinf(s):
        return "most robust"
    return f"{s:.3g}×"


def saving_title(s: float | None) -> str:
    if s is None:
        return "needs AutoAttack accuracy and inference FLOPs"
    if math.isinf(s):
        return "no other entry on this board is at least as robust"
    if s > 1:
        return (f"every other entry at least as robust needs at least {s:.3g}× this entry's inference FLOPs")
    if s == 1:
        return "another entry is at least as robust for the same inference FLOPs"
    return (f"another entry is at least as robust with {s:.3g}× this entry's inference FLOPs "
            f"(this entry spends {1 / s:.3g}× more)")


def num(v: float | None, digits: int = 4) -> str:
    return DASH if v is None else f"{v:.{digits}g}"


def sort_value(v: float | int | None) -> str:
    """``data-sort`` for a number: missing values sort last in both directions (see leaderboard.js)."""
    if v is None:
        return ""
    v = float(v)
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return repr(v)
