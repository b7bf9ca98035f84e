"""The static site: ``index.html`` (one sortable, filterable table per board, with its figures) and
one page per entry, rendered with Jinja2 from ``leaderboard/templates``; the plain JavaScript and CSS
in ``leaderboard/static`` are copied beside them. No server and no CDN: every asset is a local file
referenced by a relative path, so the site works opened from disk.
"""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

from harness.data import registry as datasets
from harness.record.schema import FLOPS_CONVENTION
from leaderboard import fmt
from leaderboard.boards import FRONTIERS, Board, Entry, Inputs
from leaderboard.render.jsondoc import (
    COMPUTE_DEFINITION,
    EFFICIENCY_DEFINITION,
    RANKING_DEFINITION,
    RANKING_RULE,
    entry_page,
)
from leaderboard.render.plots import write_gallery
from leaderboard.scaling import MIN_POINTS, PAPER
from leaderboard.urls import safe_url

HERE = Path(__file__).resolve().parent.parent  # leaderboard/: its templates/ and static/
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

FRONTIER_SHORT = {
    "robust_vs_inference_flops": ("inf", "on the AutoAttack-accuracy vs inference-FLOPs frontier"),
    "robust_vs_training_flops": ("train", "on the AutoAttack-accuracy vs training-FLOPs frontier"),
    "robust_vs_params": ("params", "on the AutoAttack-accuracy vs parameters frontier"),
    "certified_vs_inference_flops": ("cert", "on the certified-accuracy vs inference-FLOPs frontier"),
}


def wbr(text: object) -> Markup:
    """Escaped text with break opportunities after '_' and '-' (long identifiers in narrow cells);
    <wbr> adds nothing to the text itself, so filtering and copying see the original."""
    return Markup(str(escape(str(text))).replace("_", "_<wbr>").replace("-", "-<wbr>"))


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=fmt.pct, flops=fmt.flops, bounded_flops=fmt.bounded_flops, ci=fmt.ci, si=fmt.si,
                       saving=fmt.saving, saving_title=fmt.saving_title,
                       overhead=fmt.overhead, overhead_title=fmt.overhead_title, gap=fmt.gap, gap_title=fmt.gap_title,
                       num=fmt.num, sortv=fmt.sort_value, safe_url=safe_url, wbr=wbr,
                       tojson_pretty=lambda v: json.dumps(v, indent=2, default=str))
    env.globals.update(FRONTIERS=FRONTIERS, FRONTIER_SHORT=FRONTIER_SHORT, DASH=fmt.DASH)
    return env


def reproduce_command(e: Entry) -> str | None:
    rec = e.record
    if rec is None:
        return None
    cmd = ["harness", "eval", f"submissions/{rec.submission_id}/submission.yaml",
           "--n-examples", str(rec.n_examples), "--only", ",".join(rec.stages)]
    return " ".join(shlex.quote(c) for c in cmd)


def _gallery(e: Entry, out: Path) -> list[dict]:
    rec = e.record
    if rec is None or e.record_path is None:
        return []
    npz = e.record_path.with_name(rec.examples_file or f"{rec.submission_id}.examples.npz")
    if not npz.is_file():
        return []
    try:
        with np.load(npz, allow_pickle=False) as z:
            if "gallery_clean" not in z.files:
                return []
            arrays = {k: z[k] for k in z.files if k.startswith("gallery_") or k in ("index", "label")}
    except (OSError, ValueError):
        return []
    items = write_gallery(arrays, out / "gallery", e.slug)
    spec = datasets.find(rec.dataset)
    names = spec.names() if spec is not None else None
    for it in items:
        for k in ("label", "adv_pred"):
            v = it[k]
            it[k + "_name"] = (names[v] if names and v is not None and 0 <= v < len(names)
                               else (fmt.DASH if v is None else str(v)))
    return items


def render_site(out: Path, boards: list[Board], inputs: Inputs, plots: dict[str, dict[str, Any]]) -> None:
    env = environment()
    (out / "static").mkdir(parents=True, exist_ok=True)
    for f in sorted(STATIC.iterdir()):
        if f.is_file():
            shutil.copyfile(f, out / "static" / f.name)
    common = {"convention": FLOPS_CONVENTION, "ranking": RANKING_DEFINITION, "ranking_rule": RANKING_RULE,
              "compute_definition": COMPUTE_DEFINITION,
              "efficiency": EFFICIENCY_DEFINITION, "paper": PAPER, "min_points": MIN_POINTS}
    entries = [e for b in boards for e in b.entries]
    index = env.get_template("index.html").render(
        boards=boards, plots=plots, pending=inputs.pending, root=".", page=entry_page,
        n_entries=len(entries), page_by_id={e.id: entry_page(e) for e in entries},
        source_rows=sum(e.kind == "reported" for e in entries),
        counted_rows=sum(e.kind == "reported" and e.inference_flops is not None for e in entries),
        trained_rows=sum(e.kind == "reported" and e.training_flops is not None for e in entries),
        n_records=sum(e.kind == "re-evaluated" for e in entries), n_local=sum(e.kind == "local" for e in entries),
        local_board=inputs.local, **common)
    (out / "index.html").write_text(index, encoding="utf-8")

    entry_tpl = env.get_template("entry.html")
    (out / "entries").mkdir(exist_ok=True)
    for b in boards:
        for e in b.entries:
            html = entry_tpl.render(e=e, board=b, root="..", gallery=_gallery(e, out),
                                    reproduce=reproduce_command(e), **common)
            (out / entry_page(e)).write_text(html, encoding="utf-8")
