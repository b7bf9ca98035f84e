"""Issue 18: flag chips merged per name; plots with full names (tooltips, legends), the method of each
certified-vs-ε curve, distinct colours, and the sandwich plot's labels inside the figure."""
from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.record.schema import Flag
from leaderboard.boards import load_entries, make_boards, merge_flags

REPO = Path(__file__).resolve().parents[3]


def test_duplicate_flags_merge_into_one_chip_with_the_most_severe_level_and_every_message():
    flags = [Flag("weak-attack-gap", "warning", "FGSM beats AutoAttack"), Flag("unreliable", "info", "RB says so"),
             Flag("weak-attack-gap", "error", "PGD-20 beats AutoAttack"),
             Flag("weak-attack-gap", "info", "FGSM beats AutoAttack")]
    chips = merge_flags(flags)
    assert [c.name for c in chips] == ["weak-attack-gap", "unreliable"]
    gap = chips[0]
    assert gap.severity == "error" and gap.count == 3
    assert gap.messages == ("FGSM beats AutoAttack", "PGD-20 beats AutoAttack")  # each distinct message once
    assert gap.message == "FGSM beats AutoAttack\nPGD-20 beats AutoAttack"
    assert chips[1].severity == "info" and chips[1].messages == ("RB says so",)
    # the level never goes down: error then warning stays error
    assert merge_flags([Flag("x", "error", "a"), Flag("x", "warning", "b")])[0].severity == "error"


class _Chips(HTMLParser):
    """(row id, chip class, chip title, chip text) of every flag chip in the index's tables."""

    def __init__(self):
        super().__init__()
        self.row, self.chip, self.out = None, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-id" in a:
            self.row = a["data-id"]
        if tag == "span" and "flag" in (a.get("class") or "").split() and self.row:
            self.chip = [self.row, a.get("class"), a.get("title") or "", ""]

    def handle_data(self, data):
        if self.chip is not None:
            self.chip[3] += data

    def handle_endtag(self, tag):
        if tag == "span" and self.chip is not None:
            self.out.append(tuple(self.chip))
            self.chip = None


def test_the_committed_board_shows_one_chip_per_flag_name(repo_site):
    """mnist-fgsm's record carries two weak-attack-gap flags (PGD-20, an error, and FGSM, a warning):
    the table shows one chip, an error, whose tooltip has both messages."""
    p = _Chips()
    p.feed((repo_site / "index.html").read_text(encoding="utf-8"))
    rows: dict[str, list] = {}
    for row, cls, title, text in p.out:
        rows.setdefault(row, []).append((cls, title, text))
    for row, chips in rows.items():
        names = [t for _, _, t in chips]
        assert len(names) == len(set(names)), (row, names)
    gap = [c for c in rows["mnist-fgsm"] if c[2] == "weak-attack-gap"]
    assert len(gap) == 1
    cls, title, _ = gap[0]
    assert cls == "flag error" and "PGD-20" in title and "FGSM" in title
    page = (repo_site / "entries" / "mnist-fgsm.html").read_text(encoding="utf-8")
    assert page.count(">weak-attack-gap</span>") == 1 and "the most severe of 2 flags" in page


def test_no_figure_text_is_cut_short_and_tooltips_carry_full_names(repo_site):
    import json

    data = json.loads((repo_site / "leaderboard.json").read_text(encoding="utf-8"))
    names = {e["name"] for b in data["boards"] for e in b["entries"]}
    svgs = sorted((repo_site / "plots").glob("*.svg"))
    assert len(svgs) >= 20
    for svg in svgs:
        text = svg.read_text(encoding="utf-8")
        assert "…" not in text, svg.name  # no truncated label, legend entry or tick anywhere
        for title in re.findall(r"<title>(.*?)</title>", text, flags=re.S):
            if title.startswith(("Figure", "clean", "best-known")):
                continue
            assert any(title.startswith(n) for n in names), (svg.name, title)


def _mnist_board():
    (board,) = [b for b in make_boards(load_entries(REPO).entries) if b.dataset == "mnist"]
    return board


def _inside(fig, artist, renderer, pad=1.0):
    bb = artist.get_window_extent(renderer)
    W, H = fig.bbox.width, fig.bbox.height
    return bb.x0 >= -pad and bb.y0 >= -pad and bb.x1 <= W + pad and bb.y1 <= H + pad, (bb.bounds, (W, H))


@pytest.mark.parametrize("n, long", [(0, False), (30, True), (60, True)])
def test_sandwich_axis_labels_stay_inside_the_figure(n, long):
    """The x and y labels and every tick label lie inside the figure, however many entries and however
    long their names (the committed MNIST board, and copies of its certified entries)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from leaderboard.render.plots import sandwich_figure

    board = _mnist_board()
    cert = [e for e in board.entries if e.certified is not None]
    extra = [dataclasses.replace(cert[k % len(cert)], id=f"copy-{k}",
                                 name=("a very long entry name that would never fit under a tick " * 2 if long else "")
                                 + f"copy {k}") for k in range(n)]
    (board,) = make_boards([*board.entries, *extra]) if extra else (board,)
    fig, tips = sandwich_figure(board)
    assert len(tips) == len(cert) + n and all("rank" in t for t in tips)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    (ax,) = fig.axes
    lo, hi = ax.get_ylim()
    yticks = [t for t, v in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True) if lo <= v <= hi]  # drawn ones
    for artist in [ax.xaxis.label, ax.yaxis.label, ax.title, *ax.get_xticklabels(), *yticks]:
        if artist.get_text():
            ok, where = _inside(fig, artist, renderer)
            assert ok, (artist.get_text(), where)
    # ticks are ranks, not cut-down names
    assert all(t.get_text().isdigit() for t in ax.get_xticklabels())


def test_certified_vs_eps_legend_names_entry_and_method_in_distinct_colours():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_hex

    from leaderboard.render.plots import MAX_CURVES, certified_vs_eps_figure

    board = _mnist_board()
    fig, tips = certified_vs_eps_figure(board)
    expected = [(e.name, m) for e in board.entries if e.record is not None and e.record.certified
                for m, c in sorted(e.record.certified.items()) if c.curve]
    assert len(expected) >= 6
    (ax,) = fig.axes
    lines = [ln for ln in ax.get_lines() if ln.get_gid() and ln.get_gid().startswith("rfpt")]
    assert len(lines) == min(len(expected), MAX_CURVES) == len(tips)
    labels = [" ".join(ln.get_label().split()) for ln in lines]
    assert sorted(labels) == sorted(f"{n}, certified by {m}" for n, m in expected[:MAX_CURVES]) or \
        set(labels) <= {f"{n}, certified by {m}" for n, m in expected}
    for (lab, tip) in zip(labels, tips, strict=True):
        assert " ".join(tip.split()).startswith(lab)
    colours = [to_hex(ln.get_color()) for ln in lines]
    assert len(set(colours)) == len(colours)
    (legend,) = fig.legends
    texts = [" ".join(t.get_text().split()) for t in legend.get_texts()]
    assert all(lab in texts for lab in labels)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ok, where = _inside(fig, legend, renderer)
    assert ok, where
    # the legend sits below the axes, not over the curves
    assert legend.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0
