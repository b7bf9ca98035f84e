"""The board's figures, as SVG (matplotlib, no pyplot, deterministic output), and the gallery PNGs.

Each ``*_plot`` function writes one file and returns True, or returns False when the board has
nothing to draw (e.g. no entry with certified accuracy); the page then says so instead.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from . import fmt
from .boards import Board, Entry
from .scaling import PAPER

matplotlib.rcParams["svg.hashsalt"] = "robust-frontier"  # stable ids: the same data give the same file
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text (smaller files, selectable)
SVG_META = {"Date": None}

RE_EVAL = {"marker": "o", "s": 28, "color": "#1f5fa8", "edgecolors": "#0b2f5c", "linewidths": 0.6,
           "label": "re-evaluated", "zorder": 3}
REPORTED = {"marker": "s", "s": 26, "facecolors": "none", "edgecolors": "#7a7a7a", "linewidths": 1.0,
            "label": "reported (not re-evaluated)", "zorder": 2}
FRONTIER_COLOR = "#c0392b"
MAX_LABELS = 12
MAX_CURVES = 12


def _fig(width: float = 6.4, height: float = 4.0, bottom: float = 0.12) -> Figure:
    # fixed margins: a layout engine measures every tick label and costs more than the drawing
    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=bottom)
    return fig


def _logx(ax, xs: list[float]) -> None:
    """Log x axis with plain-text labels (1 G, 10 G): matplotlib's default 10^k labels go through
    mathtext, whose parser dominates the build time; minor ticks are left out for the same reason.
    The limits reach the powers of ten around the data, so even one point gets two labelled ticks."""
    ax.set_xscale("log")
    lo, hi = min(xs), max(xs)
    ax.set_xlim(min(10.0 ** math.floor(math.log10(lo)), lo / 1.5), max(10.0 ** math.ceil(math.log10(hi)), hi * 1.5))
    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: fmt.flops(x).replace(" ", "")))
    ax.xaxis.set_minor_locator(NullLocator())


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata=SVG_META)


def _short(name: str, n: int = 36) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _label(ax, points: list[tuple[str, float, float]], xs: list[float], dy: float = 3) -> None:
    """Name the points; those in the right half (in log x) get their label on the left, so that
    labels stay inside the axes."""
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    for name, x, y in points:
        right = hi > lo and (math.log10(x) - lo) / (hi - lo) > 0.5
        ax.annotate(_short(name), (x, y), xytext=(-4 if right else 4, dy), textcoords="offset points",
                    fontsize=6.5, color="#333333", ha="right" if right else "left")


def _ylim(ax, values_pct: list[float]) -> None:
    """At least a 10-point window, inside [0, 100] (one point, or all at 0%, otherwise gives odd ticks)."""
    vals = [v for v in values_pct if v == v]
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    pad = max(2.0, 0.08 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    if hi - lo < 10:
        mid = (hi + lo) / 2
        lo, hi = mid - 5, mid + 5
    if lo < 0:
        lo, hi = 0.0, max(hi - lo, 10.0)
    if hi > 100:
        lo, hi = max(0.0, lo - (hi - 100)), 100.0
    ax.set_ylim(lo, hi)


def _valid(v) -> bool:
    return v is not None and math.isfinite(float(v))


def frontier_plot(board: Board, key: str, cost_attr: str, value_attr: str, title: str, xlabel: str,
                  path: Path) -> bool:
    pts = [e for e in board.entries
           if _valid(getattr(e, cost_attr)) and float(getattr(e, cost_attr)) > 0 and _valid(getattr(e, value_attr))]
    if not pts:
        return False
    fig = _fig()
    ax = fig.add_subplot()
    for style, kind in ((REPORTED, "reported"), (RE_EVAL, "re-evaluated")):
        sel = [e for e in pts if e.kind == kind]
        if sel:
            ax.scatter([float(getattr(e, cost_attr)) for e in sel], [100 * getattr(e, value_attr) for e in sel], **style)
    front = sorted((e for e in pts if e.on_frontier.get(key)), key=lambda e: (getattr(e, cost_attr), getattr(e, value_attr)))
    if front:
        xs = [float(getattr(e, cost_attr)) for e in front]
        ys = [100 * getattr(e, value_attr) for e in front]
        xmax = max(float(getattr(e, cost_attr)) for e in pts)
        ax.step(xs + [xmax * 1.5], ys + [ys[-1]], where="post", color=FRONTIER_COLOR, lw=1.4,
                label="frontier", zorder=1)
        if len(front) <= MAX_LABELS:
            _label(ax, [(e.name, x, y) for e, x, y in zip(front, xs, ys)], xs)
    _ylim(ax, [100 * getattr(e, value_attr) for e in pts])
    _logx(ax, [float(getattr(e, cost_attr)) for e in pts])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(("certified" if value_attr == "certified" else "AutoAttack") + " accuracy (%)")
    ax.set_title(f"{board.title}: {title}", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)
    return True


def sandwich_plot(board: Board, path: Path) -> bool:
    """certified <= AutoAttack <= clean, per entry with a certified accuracy."""
    sel = [e for e in board.entries if e.certified is not None]
    if not sel:
        return False
    sel.sort(key=lambda e: (e.robust if e.robust is not None else -1, e.certified))
    fig = _fig(6.4, 4.0, bottom=0.25 if len(sel) <= 25 else 0.1)
    ax = fig.add_subplot()
    x = np.arange(len(sel))
    cert = [100 * e.certified for e in sel]
    rob = [100 * e.robust if e.robust is not None else np.nan for e in sel]
    clean = [100 * e.clean if e.clean is not None else np.nan for e in sel]
    lo = [c for c in cert]
    hi = [c if not np.isnan(c) else r for c, r in zip(clean, rob)]
    ax.vlines(x, lo, hi, color="#bbbbbb", lw=1.2, zorder=1)
    ax.scatter(x, clean, marker="^", color="#2e8b57", s=22, label="clean", zorder=3)
    ax.scatter(x, rob, marker="o", color="#1f5fa8", s=22, label="AutoAttack (empirical)", zorder=3)
    ax.scatter(x, cert, marker="v", color=FRONTIER_COLOR, s=22, label="certified (best method)", zorder=3)
    if len(sel) <= 25:
        ax.set_xticks(x, [_short(e.name, 18) for e in sel], rotation=40, ha="right", fontsize=6.5)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(sel)} entries, by AutoAttack accuracy")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{board.title}: certified ≤ AutoAttack ≤ clean", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)
    return True


def certified_vs_eps_plot(board: Board, path: Path) -> bool:
    curves: list[tuple[Entry, str, list[tuple[float, float]]]] = []
    for e in board.entries:
        rec = e.record
        if rec is None or not rec.certified:
            continue
        for method, c in sorted(rec.certified.items()):
            if c.curve:
                curves.append((e, method, c.curve))
    if not curves:
        return False
    curves.sort(key=lambda t: (-(t[0].certified or 0), t[0].name, t[1]))
    shown = curves[:MAX_CURVES]
    fig = _fig()
    ax = fig.add_subplot()
    for e, method, curve in shown:
        arr = np.asarray(curve, dtype=float)
        ax.plot(arr[:, 0], 100 * arr[:, 1], lw=1.2, label=_short(f"{e.name} ({method})", 40))
    ax.axvline(board.eps, color="#444444", ls="--", lw=0.9, label=f"ε = {board.eps_label}")
    ax.set_xlabel("ε")
    ax.set_ylabel("certified accuracy (%)")
    extra = f" (top {MAX_CURVES} of {len(curves)} curves)" if len(curves) > MAX_CURVES else ""
    ax.set_title(f"{board.title}: certified accuracy vs ε{extra}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="upper right")
    _save(fig, path)
    return True


def scaling_plot(board: Board, path: Path) -> bool:
    pts = [e for e in board.entries if e.training_flops is not None and e.robust is not None]
    if not pts:
        return False
    fig = _fig()
    ax = fig.add_subplot()
    for style, kind in ((REPORTED, "reported"), (RE_EVAL, "re-evaluated")):
        sel = [e for e in pts if e.kind == kind]
        if sel:
            ax.scatter([e.training_flops for e in sel], [100 * e.robust for e in sel], **style)
    if len(pts) <= MAX_LABELS:
        _label(ax, [(e.name, e.training_flops, 100 * e.robust) for e in pts],
               [e.training_flops for e in pts], dy=-9)
    fit = board.scaling
    cs = np.array([e.training_flops for e in pts], dtype=float)
    xlims = [float(cs.min()), float(cs.max())]
    if fit is not None and fit.ok:
        grid = np.logspace(np.log10(cs.min()) - 0.5, np.log10(cs.max()) + 1.5, 200)
        xlims = [float(grid[0]), float(grid[-1])]
        ax.plot(grid, 100 * fit.predict(grid), color=FRONTIER_COLOR, lw=1.4,
                label=f"fit: A − B·C^(−α), α = {fit.alpha:.3g}")
        ax.axhline(100 * fit.A, color=FRONTIER_COLOR, ls=":", lw=1.0, label=f"fitted plateau A = {100 * fit.A:.2f}%")
    elif fit is not None:
        ax.text(0.02, 0.97, "no fit: " + fit.message, transform=ax.transAxes, fontsize=7, color="#8a4b00",
                va="top", wrap=True)
    if board.is_paper_board:
        ax.axhline(100 * PAPER["plateau_perfect_synthetic"], color="#555555", ls="--", lw=0.9,
                   label="Bartoldson et al.: plateau 89.65% (perfect synthetic data)")
    ylims = [100 * e.robust for e in pts]
    if fit is not None and fit.ok:
        ylims.append(100 * fit.A)
    if board.is_paper_board:
        ylims.append(100 * PAPER["plateau_perfect_synthetic"])
    _ylim(ax, ylims)
    _logx(ax, list(xlims))
    ax.set_xlabel("training FLOPs (fvcore convention)")
    ax.set_ylabel("AutoAttack accuracy (%)")
    ax.set_title(f"{board.title}: robust accuracy vs training compute", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower right")
    _save(fig, path)
    return True


# ---------------------------------------------------------------------------------------------
def write_gallery(arrays: dict[str, np.ndarray], out_dir: Path, prefix: str, *, limit: int = 8,
                  scale: int = 4) -> list[dict]:
    """PNGs of the clean and adversarial gallery images; returns one dict per pair (file names
    relative to ``out_dir``, index, adversarial prediction). Empty when the arrays are absent."""
    import matplotlib.image as mpimg

    need = ("gallery_index", "gallery_clean", "gallery_adv", "gallery_adv_pred")
    if any(k not in arrays for k in need):
        return []
    idx, clean, adv, pred = (np.asarray(arrays[k]) for k in need)
    if clean.ndim != 4 or clean.shape != adv.shape or len(idx) != len(clean) or len(pred) != len(clean):
        return []
    label = np.asarray(arrays["label"]) if "label" in arrays else None
    index = np.asarray(arrays["index"]) if "index" in arrays else None
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(min(limit, len(idx))):
        pair = {}
        for tag, img in (("clean", clean[k]), ("adv", adv[k])):
            a = np.asarray(img, dtype=np.uint8).transpose(1, 2, 0)  # CHW -> HWC
            a = a.repeat(scale, axis=0).repeat(scale, axis=1)
            name = f"{prefix}-{k}-{tag}.png"
            if a.shape[2] == 1:
                mpimg.imsave(out_dir / name, a[:, :, 0], cmap="gray", vmin=0, vmax=255, format="png")
            else:
                mpimg.imsave(out_dir / name, a[:, :, :3], format="png")
            pair[tag] = name
        true = None
        if label is not None and index is not None:
            hit = np.nonzero(index == idx[k])[0]
            if hit.size:
                true = int(label[hit[0]])
        items.append({"index": int(idx[k]), "clean": pair["clean"], "adv": pair["adv"],
                      "adv_pred": int(pred[k]), "label": true})
    return items
