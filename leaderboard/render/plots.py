"""The board's figures, as SVG (matplotlib, no pyplot, deterministic output), and the gallery PNGs.

Each ``*_plot`` function writes one file and returns True, or returns False when the board has
nothing to draw (e.g. no entry with certified accuracy); the page then says so instead.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from leaderboard import fmt
from leaderboard.boards import Board, Entry
from leaderboard.scaling import PAPER

matplotlib.rcParams["svg.hashsalt"] = "robust-frontier"  # stable ids: the same data give the same file
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text (smaller files, selectable)
# names come from strangers: `$\foo$` in a name must be drawn as it is, never parsed as mathtext
# (a parse error would stop the build); no text of the figures uses mathtext
matplotlib.rcParams["text.parse_math"] = False
SVG_META = {"Date": None}

RE_EVAL = {"marker": "o", "s": 28, "color": "#1f5fa8", "edgecolors": "#0b2f5c", "linewidths": 0.6,
           "label": "re-evaluated", "zorder": 3}
REPORTED = {"marker": "s", "s": 26, "facecolors": "none", "edgecolors": "#7a7a7a", "linewidths": 1.0,
            "label": "reported (not re-evaluated)", "zorder": 2}
#: one marker style per (kind, extra data): extra-data entries are filled orange, whatever their kind
POINT_STYLE = {
    ("reported", False): dict(marker="s", markersize=5.5, markerfacecolor="none", markeredgecolor="#6b6b6b",
                              markeredgewidth=1.0, label="reported"),
    ("reported", True): dict(marker="s", markersize=5.5, markerfacecolor="#f0a030", markeredgecolor="#8a5a00",
                             markeredgewidth=0.8, label="reported, extra training data"),
    ("re-evaluated", False): dict(marker="o", markersize=6, markerfacecolor="#1f5fa8", markeredgecolor="#0b2f5c",
                                  markeredgewidth=0.6, label="re-evaluated"),
    ("re-evaluated", True): dict(marker="o", markersize=6, markerfacecolor="#f0a030", markeredgecolor="#0b2f5c",
                                 markeredgewidth=1.0, label="re-evaluated, extra training data"),
    ("local", False): dict(marker="D", markersize=5.5, markerfacecolor="none", markeredgecolor="#c98a00",
                           markeredgewidth=1.2, label="local (not re-evaluated)"),
    ("local", True): dict(marker="D", markersize=5.5, markerfacecolor="#f0a030", markeredgecolor="#7a4b00",
                          markeredgewidth=1.0, label="local (not re-evaluated), extra training data"),
}
FRONTIER_COLOR = "#c0392b"
MAX_LABELS = 12
MAX_CURVES = 12
#: every text in a figure is at least this many points. The figures are 7 inches wide (504 pt of
#: SVG user space) and the page shows them at least ~590 px wide at 1,280 px, so 9.5 pt is >= 11 px.
FONT = 9.5
LABEL_FONT = 9.5
FIG_W, FIG_H = 7.0, 4.4


def _fig(width: float = FIG_W, height: float = FIG_H, bottom: float = 0.13) -> Figure:
    # fixed margins: a layout engine measures every tick label and costs more than the drawing
    matplotlib.rcParams["text.parse_math"] = False  # again, in case something reset the defaults
    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=bottom)
    return fig


def _style_axes(ax) -> None:
    ax.tick_params(labelsize=FONT)
    ax.xaxis.label.set_size(FONT)
    ax.yaxis.label.set_size(FONT)


def _tip(e: Entry, x_label: str, x: float, y_pct: float, y_label: str) -> str:
    return f"{e.name}: {y_label} {y_pct:.2f}%, {x_label} {fmt.flops(x)}" + (
        f"; extra data: {e.extra_data}" if e.extra_data else "")


def _draw_points(ax, pts: list[tuple[Entry, float, float]], x_label: str, y_label: str,
                 tips: list[str]) -> None:
    """One artist per point (so each gets its own SVG group, hence its own <title> tooltip), styled
    by kind and extra data; one legend entry per style used."""
    used = set()
    for e, x, y in pts:
        key = (e.kind if e.kind in ("reported", "re-evaluated", "local") else "reported", bool(e.extra_data))
        style = dict(POINT_STYLE[key])
        label = style.pop("label")
        n = len(tips)
        tips.append(_tip(e, x_label, x, y, y_label))
        ax.plot([x], [y], ls="none", zorder=3 if key[0] == "re-evaluated" else 2, gid=f"rfpt{n}",
                label=label if key not in used else "_nolegend_", **style)
        used.add(key)


def _place_labels(fig, ax, points: list[tuple[str, float, float]], avoid: tuple = ()) -> int:
    """Name the points without overlaps: for each (in order) try offsets around the point and keep
    the first whose text box stays inside the axes and clear of every label already placed and of
    every labelled point; a label that fits nowhere is left out (the point keeps its tooltip).
    Returns how many were placed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    ax_box = ax.get_window_extent(renderer)
    marks = []
    for _name, x, y in points:
        px, py = ax.transData.transform((x, y))
        marks.append((px - 5, py - 5, px + 5, py + 5))
    placed: list[tuple[float, float, float, float]] = []
    for artist in avoid:  # e.g. a note drawn inside the axes
        bb = artist.get_window_extent(renderer)
        placed.append((bb.x0 - 2, bb.y0 - 2, bb.x1 + 2, bb.y1 + 2))
    # near the point first; farther out, a thin leader line joins label and point
    offsets = [(6, 5, "left"), (6, -14, "left"), (-6, 5, "right"), (-6, -14, "right"), (8, 16, "left"),
               (-8, 16, "right"), (8, -25, "left"), (-8, -25, "right")]
    for dy in (28, -37, 40, -49, 52, -61, 64, -73, 76, -85, 88, -97):
        offsets += [(12, dy, "left"), (-12, dy, "right"), (30, dy, "left"), (-30, dy, "right"),
                    (-60, dy, "right"), (60, dy, "left"), (-90, dy, "right")]

    def clear(b, box):
        return b[2] <= box[0] or box[2] <= b[0] or b[3] <= box[1] or box[3] <= b[1]

    n = 0
    for i, (name, x, y) in enumerate(points):
        for dx, dy, ha in offsets:
            far = abs(dy) > 10 or abs(dx) > 10
            # the full name or none: a label that does not fit is left out (the point keeps its tooltip)
            ann = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points",
                              fontsize=LABEL_FONT, color="#222222", ha=ha, va="bottom", zorder=5,
                              arrowprops=dict(arrowstyle="-", color="#9a9a9a", lw=0.6, shrinkA=1, shrinkB=3)
                              if far else None)
            ann.update_positions(renderer)
            bb = Text.get_window_extent(ann, renderer)  # the text's box alone, not its leader line
            # a margin of 1.5 px and 3% of the width: a browser's fonts are a little wider than Agg's
            pad = 1.5 + 0.03 * bb.width
            box = (bb.x0 - pad, bb.y0 - 1.5, bb.x1 + pad, bb.y1 + 1.5)
            inside = (box[0] >= ax_box.x0 and box[2] <= ax_box.x1 and box[1] >= ax_box.y0 and box[3] <= ax_box.y1)
            if inside and all(clear(b, box) for b in placed) and all(
                    clear(m, box) for j, m in enumerate(marks) if j != i):
                ann.set_gid(f"rflabel{n}")
                placed.append(box)
                n += 1
                break
            ann.remove()
    return n


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


def _save(fig: Figure, path: Path, tips: list[str] | None = None) -> None:
    """Write the SVG; ``tips[n]`` becomes the <title> (the hover tooltip) of the group ``rfpt<n>``."""
    import io

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=SVG_META)
    svg = buf.getvalue()
    if tips:
        svg = re.sub(r'<g id="rfpt(\d+)">',
                     lambda m: f'<g id="rfpt{m.group(1)}">\n   <title>{xml_escape(tips[int(m.group(1))])}</title>', svg)
    path.write_text(svg, encoding="utf-8")


def _fit_bottom(fig: Figure, ax, pad_px: float = 4.0) -> None:
    """Raise the bottom margin until everything under the axes (tick labels, the x label, a legend
    placed below) lies inside the figure, ``pad_px`` from its edge; measured with Agg's renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    for _ in range(6):
        bb = ax.get_tightbbox(renderer)
        for leg in fig.legends:
            bb = type(bb).union([bb, leg.get_window_extent(renderer)])
        if bb.y0 >= pad_px and bb.x0 >= pad_px:
            return
        sp = fig.subplotpars
        if bb.y0 < pad_px:
            bottom = min(0.85, sp.bottom + (pad_px - bb.y0 + 2) / fig.bbox.height)
            fig.subplots_adjust(bottom=bottom, top=max(sp.top, bottom + 0.1))
        if bb.x0 < pad_px:
            fig.subplots_adjust(left=min(0.5, sp.left + (pad_px - bb.x0 + 2) / fig.bbox.width))


#: 12 distinct colours for the certified-vs-ε curves (Paul Tol's "muted" and "bright" qualitative
#: schemes, which stay apart for the common colour-vision deficiencies), and a dash style per method
CURVE_COLORS = ["#332288", "#117733", "#44AA99", "#88CCEE", "#DDCC77", "#CC6677", "#AA4499", "#882255",
                "#4477AA", "#EE7733", "#000000", "#999933"]
METHOD_DASHES = ["-", "--", "-.", ":"]


def _ylim(ax, values_pct: list[float], headroom: float = 0.0) -> None:
    """At least a 10-point window, inside [0, 100] (one point, or all at 0%, otherwise gives odd ticks);
    ``headroom``: extra space above the highest point, as a fraction of the range (for labels)."""
    vals = [v for v in values_pct if v == v]
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    pad = max(2.0, 0.08 * (hi - lo))
    lo, hi = lo - pad, hi + pad + headroom * max(hi - lo, 10.0)
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
    tips: list[str] = []
    ylabel = "certified" if value_attr == "certified" else "best-known robust"
    xname = {"inference_flops": "inference FLOPs", "training_flops": "training FLOPs",
             "params": "parameters"}[cost_attr]
    _draw_points(ax, [(e, float(getattr(e, cost_attr)), 100 * getattr(e, value_attr)) for e in pts],
                 xname, f"{ylabel} accuracy", tips)
    front = sorted((e for e in pts if e.on_frontier.get(key)), key=lambda e: (getattr(e, cost_attr),
                                                                              getattr(e, value_attr)))
    xs_all = [float(getattr(e, cost_attr)) for e in pts]
    _ylim(ax, [100 * getattr(e, value_attr) for e in pts], headroom=0.12)
    _logx(ax, xs_all)
    if front:
        xs = [float(getattr(e, cost_attr)) for e in front]
        ys = [100 * getattr(e, value_attr) for e in front]
        xmax = max(xs_all)
        ax.step(xs + [xmax * 1.5], ys + [ys[-1]], where="post", color=FRONTIER_COLOR, lw=1.4,
                label="frontier", zorder=1)
        # the strongest points first: they get the free space near them
        _place_labels(fig, ax, [(e.name, x, y) for e, x, y in list(zip(front, xs, ys,
                                                                       strict=False))[-MAX_LABELS:]][::-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{ylabel} accuracy (%)")
    ax.set_title(f"{board.title}: {title}", fontsize=FONT + 0.5)
    _style_axes(ax)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=FONT, loc="lower right", framealpha=0.85)
    _save(fig, path, tips)
    return True


def sandwich_plot(board: Board, path: Path) -> bool:
    """certified <= best-known robust <= clean, per entry with a certified accuracy. The x ticks are
    the entries' board ranks (a name would have to be cut short to fit); every entry's column is one
    SVG group whose tooltip gives its full name and its three accuracies."""
    drawn = sandwich_figure(board)
    if drawn is None:
        return False
    fig, tips = drawn
    _save(fig, path, tips)
    return True


def sandwich_figure(board: Board) -> tuple[Figure, list[str]] | None:
    """The figure of :func:`sandwich_plot` and its tooltips, or None when no entry is certified."""
    sel = [e for e in board.entries if e.certified is not None]
    if not sel:
        return None
    sel.sort(key=lambda e: (e.best_known if e.best_known is not None else -1, e.certified))
    fig = _fig(FIG_W, FIG_H + 0.6, bottom=0.15)
    ax = fig.add_subplot()
    tips: list[str] = []
    labels_used: set[str] = set()
    for i, e in enumerate(sel):
        cert = 100 * e.certified
        rob = 100 * e.best_known if e.best_known is not None else np.nan
        clean = 100 * e.clean if e.clean is not None else np.nan
        hi = clean if not np.isnan(clean) else rob
        tips.append(f"{e.name} (rank {e.rank}): clean {fmt.pct(e.clean)}, best-known robust {fmt.pct(e.best_known)}, "
                    f"certified {fmt.pct(e.certified)}")
        g = f"rfpt{i}"
        ax.plot([i, i], [cert, hi], color="#bbbbbb", lw=1.2, zorder=1, gid=f"rfline{i}")
        for y, marker, color, label in ((clean, "^", "#2e8b57", "clean"),
                                        (rob, "o", "#1f5fa8", "best-known robust (empirical)"),
                                        (cert, "v", FRONTIER_COLOR, "certified (best method)")):
            ax.plot([i], [y], ls="none", marker=marker, color=color, markersize=5.5, zorder=3,
                    gid=g if marker == "v" else None,
                    label=label if label not in labels_used else "_nolegend_")
            labels_used.add(label)
    x = np.arange(len(sel))
    if len(sel) <= 40:
        ax.set_xticks(x, [str(e.rank) for e in sel], fontsize=FONT)
    else:
        ax.set_xticks([])
    ax.set_xlabel(f"{len(sel)} entries with a certified accuracy, by best-known robust accuracy\n"
                  "(tick: the entry's rank on the board; hover a point for its name)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{board.title}: certified ≤ best-known robust ≤ clean", fontsize=FONT + 0.5)
    _style_axes(ax)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=FONT, loc="lower right")
    _fit_bottom(fig, ax)
    return fig, tips


def certified_vs_eps_plot(board: Board, path: Path) -> bool:
    """Certified accuracy against ε, one curve per (entry, certification method): each curve has its
    own colour (:data:`CURVE_COLORS`) and its method's dash style; the legend, below the axes, names the
    entry in full and the method of each curve, and each curve's tooltip says the same."""
    drawn = certified_vs_eps_figure(board)
    if drawn is None:
        return False
    fig, tips = drawn
    _save(fig, path, tips)
    return True


def certified_vs_eps_figure(board: Board) -> tuple[Figure, list[str]] | None:
    """The figure of :func:`certified_vs_eps_plot` and its tooltips, or None without curves."""
    import textwrap

    curves: list[tuple[Entry, str, list[tuple[float, float]]]] = []
    for e in board.entries:
        rec = e.record
        if rec is None or not rec.certified:
            continue
        for method, c in sorted(rec.certified.items()):
            if c.curve:
                curves.append((e, method, c.curve))
    if not curves:
        return None
    curves.sort(key=lambda t: (-(t[0].certified or 0), t[0].name, t[1]))
    shown = curves[:MAX_CURVES]
    methods = sorted({m for _, m, _ in shown})
    fig = _fig(FIG_W, FIG_H + 0.25 * len(shown) + 0.4, bottom=0.4)
    ax = fig.add_subplot()
    tips: list[str] = []
    for n, (e, method, curve) in enumerate(shown):
        arr = np.asarray(curve, dtype=float)
        label = f"{e.name}, certified by {method}"
        tips.append(label + f": {fmt.pct(float(arr[0, 1]))} at ε = {arr[0, 0]:.4g} to "
                    f"{fmt.pct(float(arr[-1, 1]))} at ε = {arr[-1, 0]:.4g}")
        ax.plot(arr[:, 0], 100 * arr[:, 1], lw=1.4, color=CURVE_COLORS[n % len(CURVE_COLORS)],
                ls=METHOD_DASHES[methods.index(method) % len(METHOD_DASHES)], gid=f"rfpt{n}",
                label=textwrap.fill(label, 95))
    ax.axvline(board.eps, color="#444444", ls="--", lw=0.9, label=f"ε = {board.eps_label} (the board's)")
    ax.set_xlabel("ε")
    ax.set_ylabel("certified accuracy (%)")
    extra = f" (top {MAX_CURVES} of {len(curves)} curves)" if len(curves) > MAX_CURVES else ""
    ax.set_title(f"{board.title}: certified accuracy vs ε{extra}", fontsize=FONT + 0.5)
    _style_axes(ax)
    ax.grid(True, alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=FONT, loc="lower left", bbox_to_anchor=(0.02, 0.01),
               frameon=False, handlelength=2.6)
    # the axes end above the legend (whose height depends on the curves' number)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    leg_top = fig.legends[0].get_window_extent(renderer).y1 / fig.bbox.height
    fig.subplots_adjust(bottom=min(0.8, leg_top + 0.1))
    _fit_bottom(fig, ax)
    return fig, tips


def scaling_plot(board: Board, path: Path) -> bool:
    pts = [e for e in board.entries if e.training_flops is not None and e.best_known is not None]
    if not pts:
        return False
    fig = _fig()
    ax = fig.add_subplot()
    tips: list[str] = []
    _draw_points(ax, [(e, float(e.training_flops), 100 * e.best_known) for e in pts], "training FLOPs",
                 "best-known robust accuracy", tips)
    fit = board.scaling
    cs = np.array([e.training_flops for e in pts], dtype=float)
    xlims = [float(cs.min()), float(cs.max())]
    if fit is not None and fit.ok:
        grid = np.logspace(np.log10(cs.min()) - 0.5, np.log10(cs.max()) + 1.5, 200)
        xlims = [float(grid[0]), float(grid[-1])]
        ax.plot(grid, 100 * fit.predict(grid), color=FRONTIER_COLOR, lw=1.4,
                label=f"fit: A − B·C^(−α), α = {fit.alpha:.3g}")
        ax.axhline(100 * fit.A, color=FRONTIER_COLOR, ls=":", lw=1.2,
                   label=f"fitted plateau A = {100 * fit.A:.1f}% ± {100 * 1.96 * fit.A_stderr:.1f}")
    avoid = []
    if fit is not None and not fit.ok:
        import textwrap
        avoid.append(ax.text(0.02, 0.97, textwrap.fill("no plateau: " + fit.message, 78), transform=ax.transAxes,
                             fontsize=FONT, color="#8a4b00", va="top"))
    if board.is_paper_board:
        ax.axhline(100 * PAPER["plateau_perfect_synthetic"], color="#555555", ls="--", lw=0.9,
                   label="Bartoldson et al.: plateau 89.65%")
    ylims = [100 * e.best_known for e in pts]
    if fit is not None and fit.ok:
        ylims.append(100 * fit.A)
    if board.is_paper_board:
        ylims.append(100 * PAPER["plateau_perfect_synthetic"])
    _ylim(ax, ylims, headroom=0.25 if avoid else 0.12)
    _logx(ax, list(xlims))
    front = sorted((e for e in pts if e.on_frontier.get("robust_vs_training_flops")),
                   key=lambda e: (e.training_flops, e.best_known))
    _place_labels(fig, ax, [(e.name, float(e.training_flops), 100 * e.best_known) for e in front][-MAX_LABELS:][::-1],
                  avoid=tuple(avoid))
    ax.set_xlabel("training FLOPs (fvcore convention)")
    ax.set_ylabel("best-known robust accuracy (%)")
    ax.set_title(f"{board.title}: robust accuracy vs training compute", fontsize=FONT + 0.5)
    _style_axes(ax)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=FONT - 0.5 if FONT > 9.5 else FONT, loc="lower right", framealpha=0.85)
    _save(fig, path, tips)
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
