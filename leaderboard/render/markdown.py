"""``leaderboard.md``: one GitHub-flavoured table per board (tabulate).

Every text field comes from strangers (submissions) or from RobustBench, so every field is escaped
(:func:`md_text`): HTML special characters become entities and Markdown's own punctuation is
backslash-escaped, so no field can open a tag, a link or a table cell. Links are written only for
http(s) URLs (:func:`leaderboard.urls.safe_url`).
"""
from __future__ import annotations

import html
import re
from urllib.parse import quote

from tabulate import tabulate

from harness.record.schema import FLOPS_CONVENTION
from leaderboard.boards import FRONTIERS, Board, Entry, Inputs, coverage, worked_example
from leaderboard.fmt import DASH, bounded_flops, flops, gap, overhead, pct, pct_ci, si
from leaderboard.render.jsondoc import COMPUTE_DEFINITION, RANKING_RULE
from leaderboard.urls import safe_url

SHORT = {
    "robust_vs_inference_flops": "inf",
    "robust_vs_training_flops": "train",
    "robust_vs_params": "params",
    "certified_vs_inference_flops": "cert",
}
HEADERS = ["Rank", "Model", "Paper", "Venue", "Architecture", "Extra data", "Source", "Clean",
           "Best known [95% CI]", "Best known from", "AutoAttack", "Certified", "Params", "Inference FLOPs",
           "Training FLOPs", "Layer", "On frontier", "Overhead", "Gap (pts)", "Flags"]

LOCAL_NOTICE = ("A local board, built with --local: rows marked 'local, unsigned' or 'local, signed by <key id>' "
                "are a researcher's own evaluations, not re-evaluated by the trusted evaluation; this is not the "
                "published leaderboard.")

_MD_PUNCT = re.compile(r"([\\`*_\[\]{}()#+!|~])")


def md_text(text: object) -> str:
    """Any text as inert Markdown: HTML-escaped, Markdown punctuation backslash-escaped, one line."""
    s = _MD_PUNCT.sub(r"\\\1", str(text))  # first: the entities below contain '#'
    s = html.escape(s, quote=False)
    return re.sub(r"\s+", " ", s).strip()


def md_link(title: str, url: str | None) -> str:
    """``[title](url)`` when ``url`` is http(s), else the escaped title alone."""
    t = md_text(title) if title else ""
    u = safe_url(url)
    if u is None:
        return t or DASH
    # percent-encode what could end the link target or open HTML
    target = quote(u, safe=":/?#@!$&'*+,;=%-._~")
    return f"[{t or md_text(u)}]({target})"


def source_text(e: Entry) -> str:
    """The Source column: reported, re-evaluated (with the signing key) or local (unsigned, or signed by
    a key of the researcher's own)."""
    if e.kind == "reported":
        return "reported (not re-evaluated)"
    if e.kind == "local":
        return md_text(f"{e.trust} (n={e.n_examples})")
    key = f", signed by {e.signed_by.key_id}" if e.signed_by is not None else ""
    return f"re-evaluated (n={e.n_examples}{key})"


def board_table(b: Board) -> str:
    rows = []
    for e in b.entries:
        on = [SHORT[k] for k, *_ in FRONTIERS if e.on_frontier.get(k)]
        rows.append([
            f"{e.rank}{'≈' if e.tied else ''}",
            md_text(e.name),
            md_link(e.paper_title, e.url) if (e.paper_title or e.url) else DASH,
            md_text(e.venue) or DASH,
            md_text(e.architecture) or DASH,
            md_text(e.extra_data) if e.extra_data else "no",
            source_text(e),
            pct(e.clean),
            pct_ci(e.best_known, e.best_known_ci),
            md_text(e.best_known_source) or DASH,
            pct(e.robust),
            DASH if e.certified is None else f"{pct(e.certified)} ({md_text(e.certified_method)})",
            si(e.params),
            flops(e.inference_flops),
            bounded_flops(e.training_flops, e.training_flops_bound),
            DASH if e.layer is None else str(e.layer),
            ", ".join(on) or DASH,
            overhead(e.overhead),
            gap(e.gap),
            md_text(", ".join(f.name for f in e.flag_chips)) or DASH,
        ])
    return tabulate(rows, headers=HEADERS, tablefmt="github", disable_numparse=True)


def coverage_text(b: Board) -> str:
    c = coverage(b)
    parts = [f"{c['reported_rows']} reported rows from RobustBench"]
    if c["re_evaluated"]:
        parts.append(f"{c['re_evaluated']} re-evaluated by the harness")
    if c["local"]:
        parts.append(f"{c['local']} local (not re-evaluated)")
    s = (f"Coverage: {', '.join(parts)}; inference FLOPs counted for {c['with_inference_flops']} of "
         f"{len(b.entries)}, training FLOPs known for {c['with_training_flops']}.")
    if c["eps_aliases"]:
        s += f" {c['eps_aliases']} rows evaluated at ε = 0.031 are listed here, marked."
    if c["uncounted"]:
        s += " Not counted: " + "; ".join(f"{u['name']} ({u['reason']})" for u in c["uncounted"]) + "."
    return md_text(s)


def render_markdown(boards: list[Board], inputs: Inputs) -> str:
    out = ["# robust-frontier leaderboard" + (" (local board)" if inputs.local else ""), "",
           md_text(f"FLOPs: {FLOPS_CONVENTION}; every compute figure has 3 significant digits and an SI prefix "
                   "(G = 1e9, E = 1e18)."), "",
           md_text(f"Ranking: {RANKING_RULE}"), "", md_text(COMPUTE_DEFINITION), "",
           "Reported rows come from the literature and were not re-evaluated by the harness; their "
           "confidence intervals assume RobustBench's test-set size. `≈` after a rank marks a statistical tie "
           "group. Best known: the lowest robust accuracy any accepted attack reached (AutoAttack's own number "
           "is in its own column). "
           "Re-evaluated rows carry a signature of the trusted evaluation that the build verified.", ""]
    if inputs.local:
        out += [md_text(LOCAL_NOTICE), ""]
    for b in boards:
        out.append(f"## {md_text(b.title)}")
        out.append("")
        out.append(coverage_text(b))
        out.append("")
        for sentence in worked_example(b):
            out.append(md_text("Example: " + sentence))
            out.append("")
        for e in b.entries:
            for x in e.external:
                state = "applied" if x.applied else f"stale, not applied: {x.stale}"
                out.append(md_text(f"External evaluation of {e.name}: {x.attack_name} ({state}; {x.trust}), "
                                   f"{len(x.broken)} of {x.n_submitted} submitted examples misclassified, "
                                   f"{len(x.missed_by_autoattack)} that AutoAttack missed."))
                out.append("")
        if b.separation:
            out.append(md_text(f"Data-separation radius: {b.separation['radius']:.4g} (from "
                               f"{b.separation['source']})."))
            out.append("")
        out.append(board_table(b))
        out.append("")
        if b.scaling is not None:
            out.append(md_text(f"Scaling fit (best-known robust accuracy vs training FLOPs): {b.scaling.message}."))
            out.append("")
    if inputs.pending:
        out.append(md_text("Submissions without a result record yet: " + ", ".join(inputs.pending) + "."))
        out.append("")
    return "\n".join(out)
