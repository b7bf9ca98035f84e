"""Build the leaderboard: ``harness leaderboard build [--out DIR] [--local [--trust-key PUB.pem ...]]``
or ``python -m leaderboard.build [--root REPO] [--out DIR] [--local ...]``.

:func:`build_leaderboard` reads ``submissions/*/submission.yaml``, ``leaderboard/results/*.json``
and ``leaderboard/reported.csv`` under the repository root, checks them (see
:func:`leaderboard.boards.load_entries`: every record must carry a signature that verifies against
``leaderboard/keys/``), and writes into ``out_dir`` (default ``<root>/site``):

    index.html        one sortable, filterable table per board, its figures, the scaling view
    entries/<id>.html one page per entry
    plots/*.svg       frontiers, the certified/empirical sandwich, certified accuracy vs ε, scaling
    gallery/*.png     clean and adversarial images from the records' ``.examples.npz``
    static/           leaderboard.js and leaderboard.css
    leaderboard.md    the boards as Markdown tables (tabulate)
    leaderboard.json  everything, machine-readable

All-or-nothing: every check runs before anything is written, the site is built in a temporary
folder beside ``out_dir`` and renamed into place at the end, so a refused or failed build leaves
the previous site (or nothing) behind, never half a site. An existing ``out_dir`` is replaced only
if it is empty or holds a site this function built (it carries a ``.leaderboard-site`` marker).
The output is deterministic: the same inputs give byte-identical files.

``local=True`` builds a researcher's own board: it also shows unsigned records, records signed by
the ``trust_keys`` and the scratch records of ``leaderboard/results/local/``, each marked "local,
unsigned" or "local, signed by <key id>", never re-evaluated, and the pages say it is a local board.
A root that is not a checkout of the project, or a build with no entries at all, is refused.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from harness.core.errors import HarnessError, one_line
from leaderboard.render import plots as rp
from leaderboard.render.html import render_site
from leaderboard.render.jsondoc import dumps, site_json
from leaderboard.render.markdown import render_markdown

from .boards import FRONTIERS, Board, Inputs, load_entries, make_boards

MARKER = ".leaderboard-site"
XLABELS = {
    "inference_flops": "inference FLOPs per image (fvcore: 1 per multiply-add)",
    "training_flops": "training FLOPs (fvcore convention)",
    "params": "parameters",
}


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise HarnessError(f"{out} exists and is not a folder", field="--out")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise HarnessError(f"{out} is not empty and was not built by `harness leaderboard build` "
                           f"(no {MARKER} in it); refusing to replace it", field="--out")


def render_plots(out: Path, boards: list[Board]) -> dict[str, dict[str, str]]:
    plots: dict[str, dict[str, str]] = {}
    for b in boards:
        got: dict[str, str] = {}
        for key, cost, value, title in FRONTIERS:
            rel = f"plots/{b.id}-{key}.svg"
            if rp.frontier_plot(b, key, cost, value, title, XLABELS[cost], out / rel):
                got[key] = rel
        for name, fn in (("sandwich", rp.sandwich_plot), ("cert_eps", rp.certified_vs_eps_plot),
                         ("scaling", rp.scaling_plot)):
            rel = f"plots/{b.id}-{name}.svg"
            if fn(b, out / rel):
                got[name] = rel
        plots[b.id] = got
    return plots


def write_site(out: Path, boards: list[Board], inputs: Inputs) -> None:
    """Write every file of the site into ``out`` (an existing, empty folder)."""
    plots = render_plots(out, boards)
    render_site(out, boards, inputs, plots)
    (out / "leaderboard.md").write_text(render_markdown(boards, inputs), encoding="utf-8")
    (out / "leaderboard.json").write_text(dumps(site_json(boards, inputs)), encoding="utf-8")
    (out / MARKER).write_text("built by harness leaderboard build; this folder is replaced on every build\n",
                              encoding="utf-8")


def build_leaderboard(repo_root: Path, out_dir: Path | None = None, *, local: bool = False,
                      trust_keys: tuple[Path, ...] | list[Path] = ()) -> Path:
    """Build the site; returns the output folder (``index.html`` is in it).

    Raises :class:`HarnessError` (one line) on bad inputs, having written nothing.
    """
    repo_root = Path(repo_root).resolve()
    out = (Path(out_dir) if out_dir is not None else repo_root / "site").resolve()
    inputs = load_entries(repo_root, local=local, trust_keys=trust_keys)  # every check; raises before writing
    if not inputs.entries:
        raise HarnessError(f"{repo_root}: no entries to show (no result record under leaderboard/results/ and no "
                           "row in leaderboard/reported.csv); nothing built")
    boards = make_boards(inputs.entries)
    _check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    old: Path | None = None
    try:
        write_site(tmp, boards, inputs)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "site")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "site").exists() and not out.exists():
            os.rename(old / "site", out)  # put the previous site back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def add_local_arguments(ap: argparse.ArgumentParser) -> None:
    """--local and --trust-key (as ``harness leaderboard build`` has them)."""
    ap.add_argument("--local", action="store_true",
                    help="a local board: also show unsigned records and leaderboard/results/local/*.json, marked "
                    "'local, unsigned' (never re-evaluated)")
    ap.add_argument("--trust-key", action="append", metavar="PUB_PEM",
                    help="with --local: show records signed by this public key as 'local, signed by <key id>' "
                    "(repeatable)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m leaderboard.build", description="build the leaderboard site")
    ap.add_argument("--root", default=".", help="repository root (default: the current folder)")
    ap.add_argument("--out", help="output folder (default: <root>/site)")
    add_local_arguments(ap)
    args = ap.parse_args(argv)
    try:
        out = build_leaderboard(Path(args.root), Path(args.out) if args.out else None, local=args.local,
                                trust_keys=[Path(k) for k in args.trust_key or ()])
    except HarnessError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"site written to {out} (open {out / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
