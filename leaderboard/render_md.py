"""``leaderboard.md``: one GitHub-flavoured table per board (tabulate)."""
from __future__ import annotations

from tabulate import tabulate

from harness.record import FLOPS_CONVENTION

from .boards import FRONTIERS, Board, Inputs
from .fmt import DASH, flops, num, pct, pct_ci, saving, si
from .render_json import EFFICIENCY_DEFINITION, RANKING_DEFINITION

SHORT = {
    "robust_vs_inference_flops": "inf",
    "robust_vs_training_flops": "train",
    "robust_vs_params": "params",
    "certified_vs_inference_flops": "cert",
}
HEADERS = ["Rank", "Model", "Source", "Clean", "AutoAttack [95% CI]", "Certified", "ACR", "Params",
           "Inference FLOPs", "Training FLOPs", "Layer", "On frontier", "FLOP saving", "Flags"]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def board_table(b: Board) -> str:
    rows = []
    for e in b.entries:
        on = [SHORT[k] for k, *_ in FRONTIERS if e.on_frontier.get(k)]
        rows.append([
            f"{e.rank}{'=' if e.tied else ''}",
            _md(e.name),
            "reported (not re-evaluated)" if e.kind == "reported" else f"re-evaluated (n={e.n_examples})",
            pct(e.clean),
            pct_ci(e.robust, e.robust_ci),
            DASH if e.certified is None else f"{pct(e.certified)} ({e.certified_method})",
            num(e.acr),
            si(e.params),
            flops(e.inference_flops),
            flops(e.training_flops),
            DASH if e.layer is None else str(e.layer),
            ", ".join(on) or DASH,
            saving(e.flop_saving),
            _md(", ".join(f.name for f in e.flags)) or DASH,
        ])
    return tabulate(rows, headers=HEADERS, tablefmt="github", disable_numparse=True)


def render_markdown(boards: list[Board], inputs: Inputs) -> str:
    out = ["# robust-frontier leaderboard", "",
           f"FLOPs: {FLOPS_CONVENTION}.", "",
           f"Ranking: {RANKING_DEFINITION}", "",
           f"Efficiency figure: {EFFICIENCY_DEFINITION}", "",
           "Reported rows come from the literature and were not re-evaluated by the harness; their "
           "confidence intervals assume the full test set. `=` after a rank marks a tie.", ""]
    for b in boards:
        out.append(f"## {b.title}")
        out.append("")
        if b.separation:
            out.append(f"Data-separation radius: {b.separation['radius']:.4g} (from {b.separation['source']}).")
            out.append("")
        out.append(board_table(b))
        out.append("")
        if b.scaling is not None:
            out.append(f"Scaling fit (AutoAttack accuracy vs training FLOPs): {b.scaling.message}.")
            out.append("")
    if inputs.pending:
        out.append("Submissions without a result record yet: " + ", ".join(inputs.pending) + ".")
        out.append("")
    return "\n".join(out)
