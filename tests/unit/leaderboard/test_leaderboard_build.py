"""``build_leaderboard``: the site, leaderboard.md/json, the data checks, all-or-nothing writes."""
from __future__ import annotations

import csv
import filecmp
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from harness.core.errors import HarnessError
from harness.core.files import sha256_file
from harness.core.stats import clopper_pearson
from leaderboard import frontier as fr
from leaderboard.boards import load_reported
from leaderboard.build import MARKER, build_leaderboard, main
from leaderboard.fmt import compute_key
from leaderboard.synthetic import resign, write_synthetic_repo

REPO = Path(__file__).resolve().parents[3]
REPORTED = REPO / "leaderboard" / "reported.csv"


def small_reported(dst: Path, n_rows: int = 6) -> Path:
    """The first rows of the real reported.csv (CIFAR-10 Linf 8/255), to keep builds quick."""
    lines = REPORTED.read_text(encoding="utf-8").splitlines(keepends=True)
    dst.write_text("".join(lines[: n_rows + 1]), encoding="utf-8")
    return dst


def make_repo(root: Path, n: int = 14, *, gallery: int = 2, reported: bool = True) -> Path:
    csv_path = small_reported(root.parent / f"{root.name}-reported.csv") if reported else None
    write_synthetic_repo(root, n, gallery=gallery, reported_csv=csv_path)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = make_repo(tmp_path_factory.mktemp("lb") / "repo")
    # a record whose AutoAttack and FLOP stages did not run, under a name that needs escaping
    _edit_record(root / "leaderboard/results/syn-0004.json", lambda d: d.update(
        name=EVIL, robust_accuracy=None, robust_accuracy_ci95=None, autoattack=None, inference_flops=None,
        stages=["clean"]))
    out = build_leaderboard(root, root / "site-out")
    return root, out


EVIL = "Partial <script>alert(1)</script> & co"


def load_json(out: Path) -> dict:
    return json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
def test_site_files(built):
    root, out = built
    assert out == (root / "site-out").resolve()
    for name in ("index.html", "leaderboard.md", "leaderboard.json", "static/leaderboard.js",
                 "static/leaderboard.css", MARKER):
        assert (out / name).is_file(), name
    data = load_json(out)
    ids = [e["id"] for b in data["boards"] for e in b["entries"]]
    assert len(ids) == len(set(ids)) == 14 + 6
    for b in data["boards"]:
        for e in b["entries"]:
            assert (out / e["page"]).is_file()
    # no temporary folders left beside the site
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_boards_group_by_dataset_threat_model_and_eps(built):
    _, out = built
    data = load_json(out)
    keys = [(b["dataset"], b["threat_model"]["norm"], b["threat_model"]["eps_label"]) for b in data["boards"]]
    assert len(keys) == len(set(keys))
    for b in data["boards"]:
        for e in b["entries"]:
            assert (e["dataset"], e["threat_model"]["norm"]) == (b["dataset"], b["threat_model"]["norm"])
            assert e["threat_model"]["eps"] == pytest.approx(b["threat_model"]["eps"])
    cifar = next(b for b in data["boards"] if keys[data["boards"].index(b)] == ("cifar10", "Linf", "8/255"))
    assert {e["source"] for e in cifar["entries"]} == {"reported", "re-evaluated"}  # 8/255 from yaml == CSV's


def _measurable(v, ci):
    return v is not None and ci is not None and ci[0] > 0


def test_ranking_frontiers_and_efficiency_are_consistent(built):
    """The honest ranking (deliberately changed with issue 10): frontiers and layers only over
    entries whose accuracy is measurably above zero, which rank before every other entry."""
    _, out = built
    for b in load_json(out)["boards"]:
        es = b["entries"]
        costs = [compute_key(e["inference_flops"]) for e in es]
        robust = [e["best_known_robust_accuracy"] if _measurable(e["best_known_robust_accuracy"],
                                                                 e["best_known_robust_accuracy_ci95"]) else None
                  for e in es]
        assert [e["measurably_robust"] for e in es] == [r is not None for r in robust]
        assert [e["frontier_layer"] for e in es] == fr.nondominated_layers(costs, robust)
        # default order (issue 18): by best-known accuracy, tie groups broken by compute
        bks = [e["best_known_robust_accuracy"] for e in es]
        assert [e["rank"] for e in es] == list(range(1, len(es) + 1))
        for i, x in enumerate(es):
            for y in es[i + 1:]:
                if x["best_known_robust_accuracy"] is not None and y["best_known_robust_accuracy"] is not None:
                    lo_x, hi_x = x["best_known_robust_accuracy_ci95"]
                    lo_y, hi_y = y["best_known_robust_accuracy_ci95"]
                    assert not (y["best_known_robust_accuracy"] > x["best_known_robust_accuracy"]
                                and (hi_x < lo_y or hi_y < lo_x))
        for e in es:  # no external attack record here; reported rows: min(AutoAttack, RobustBench's external)
            if e["robust_accuracy"] is not None:
                assert e["best_known_robust_accuracy"] <= e["robust_accuracy"]
                assert e["source"] == "reported" or e["best_known_robust_accuracy"] == e["robust_accuracy"]
        assert bks == [e["best_known_robust_accuracy"] for e in es]
        # every frontier list is exactly the non-dominated set of its two figures (measurable accuracies)
        cert = [e["certified_accuracy"] if _measurable(e["certified_accuracy"], e["certified_accuracy_ci95"]) else None
                for e in es]
        for key, cost, values in (("robust_vs_inference_flops", "inference_flops", robust),
                                  ("robust_vs_training_flops", "training_flops", robust),
                                  ("robust_vs_params", "params", robust),
                                  ("certified_vs_inference_flops", "inference_flops", cert)):
            on = fr.pareto_frontier([compute_key(e[cost]) for e in es], values)
            assert b["frontiers"][key] == [e["id"] for e, f in zip(es, on, strict=False) if f]
        # overhead and gap from the JSON's own figures
        allv = [e["best_known_robust_accuracy"] for e in es]
        assert [e["compute_overhead"] for e in es] == fr.compute_overhead(costs, allv)
        assert [e["robustness_gap"] for e in es] == fr.robustness_gap(costs, allv)
        for e in es:
            s = e["flop_saving"]
            if e["frontier_layer"] is None:
                assert s is None
            elif s is None:  # the most robust entry with inference FLOPs
                assert e["best_known_robust_accuracy"] == max(r for r, c in zip(robust, costs,
                                                                     strict=False) if r is not None and c is not None)
                assert "no other entry" in e["flop_saving_note"]
            elif s > 1:
                assert e["frontier_layer"] == 1


def test_an_entry_without_autoattack_or_flops_comes_last_and_names_are_escaped(built):
    _, out = built
    board = next(b for b in load_json(out)["boards"] if any(e["id"] == "syn-0004" for e in b["entries"]))
    last = board["entries"][-1]
    assert last["id"] == "syn-0004" and last["name"] == EVIL
    assert last["frontier_layer"] is None and last["flop_saving"] is None
    assert not any(last["on_frontier"].values())
    for page in (out / "index.html", out / "entries" / "syn-0004.html"):
        html = page.read_text(encoding="utf-8")
        assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html


def test_reported_rows_are_marked_and_get_binomial_cis(built):
    _, out = built
    rows = [e for b in load_json(out)["boards"] for e in b["entries"] if e["source"] == "reported"]
    assert len(rows) == 6
    for e in rows:
        k = round(e["robust_accuracy"] * 10_000)
        assert e["robust_accuracy_ci95"] == pytest.approx(list(clopper_pearson(k, 10_000)))
        assert "n = 10000" in e["ci_note"]
        assert e["url"].startswith("https://")
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert md.count("reported (not re-evaluated)") == 6
    assert md.count("## ") == len(load_json(out)["boards"])
    page = (out / rows[0]["page"]).read_text(encoding="utf-8")
    assert "Reported, not re-evaluated" in page


def test_index_has_one_sortable_table_per_board_with_all_columns(built):
    _, out = built
    html = (out / "index.html").read_text(encoding="utf-8")
    data = load_json(out)
    assert html.count('<table class="board-table sortable"') == len(data["boards"])
    for key in ("rank", "model", "architecture", "extra", "clean", "robust", "certified", "params",
                "inference_flops", "training_flops", "frontier", "overhead", "gap", "flags"):
        assert html.count(f'data-key="{key}"') == len(data["boards"]), key
    assert "Compute overhead" in html and "How to read this page" in html  # the figures are documented
    assert "Data-separation radius r = 0.4" in html  # the MNIST records carry one
    assert "weak-attack-gap" in html and "autoattack-check" in html  # flags from diagnostics and AutoAttack


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.assets: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img") and a.get("src"):
            self.assets.append(a["src"])
        if tag == "link" and a.get("href"):
            self.assets.append(a["href"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])


def test_every_asset_is_local_and_every_internal_link_resolves(built):
    _, out = built
    pages = sorted(out.rglob("*.html"))
    assert len(pages) > 10
    n_assets = 0
    for page in pages:
        p = _Refs()
        p.feed(page.read_text(encoding="utf-8"))
        for ref in p.assets + [h for h in p.links if not urlparse(h).scheme]:
            parsed = urlparse(ref)
            assert not parsed.scheme and not parsed.netloc, f"{page.name}: external asset {ref}"
            if not parsed.path:
                continue  # same-page anchor
            target = (page.parent / unquote(parsed.path)).resolve()
            assert target.is_file(), f"{page.relative_to(out)}: {ref} does not exist"
            assert out.resolve() in target.parents
        n_assets += len(p.assets)
        assert not [h for h in p.links if urlparse(h).scheme not in ("", "http", "https")]
    assert n_assets > 2 * len(pages)


def test_entry_page_gallery_reproduce_and_metrics(built):
    root, out = built
    page = (out / "entries" / "syn-0000.html").read_text(encoding="utf-8")
    assert "harness eval submissions/syn-0000/submission.yaml --n-examples 1000 --only" in page
    assert "95% CI" in page and "Certified accuracy (ibp)" in page
    assert "apgd-t" in page and "Provenance" in page
    pngs = sorted((out / "gallery").glob("syn-0000-*.png"))
    assert len(pngs) == 8  # 4 pairs
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # an entry without an examples file has no gallery
    assert not list((out / "gallery").glob("syn-0005-*"))
    assert "Gallery" not in (out / "entries" / "syn-0005.html").read_text(encoding="utf-8")


def test_plots_are_svg_and_cover_every_figure(built):
    _, out = built
    svgs = sorted((out / "plots").glob("*.svg"))
    names = {p.name for p in svgs}
    for suffix in ("robust_vs_inference_flops", "robust_vs_training_flops", "robust_vs_params",
                   "certified_vs_inference_flops", "sandwich", "cert_eps", "scaling"):
        assert f"cifar10-Linf-8_255-{suffix}.svg" in names
    for p in svgs:
        text = p.read_text(encoding="utf-8")
        assert text.lstrip().startswith("<?xml") and "<svg" in text
        assert "http://" not in text.replace("http://www.w3.org", "").replace("http://purl.org", "") \
            .replace("http://creativecommons.org", "").replace("http://matplotlib.org", "")


def test_build_is_deterministic_and_replaces_its_previous_site(built, tmp_path):
    root, out = built
    again = tmp_path / "again"
    build_leaderboard(root, again)
    (again / "stale.html").write_text("old", encoding="utf-8")
    build_leaderboard(root, again)  # replaces its own previous site, stale files included
    assert not (again / "stale.html").exists()
    cmp = filecmp.dircmp(out, again)

    def same(c):
        assert not c.left_only and not c.right_only and not c.funny_files
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        assert not mismatch and not errors, mismatch
        for sub in c.subdirs.values():
            same(sub)

    same(cmp)


# ---------------------------------------------------------------------------------------------
# refusals: a clear one-line error, and nothing written
@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / "repo", n=4, gallery=0, reported=False)


def refuse(root: Path, match: str) -> str:
    out = root / "site-out"
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(HarnessError, match=match) as exc:
        build_leaderboard(root, out)
    msg = str(exc.value)
    assert "\n" not in msg
    assert not out.exists()
    assert sorted(p.name for p in root.iterdir()) == before  # no half site, no temporary folder
    return msg


def _edit_record(path: Path, fn, *, sign: bool = True) -> None:
    """Edit a record; ``sign``: sign it again with the fixture's trusted key (as if the trusted
    evaluation had written it), so that the checks after the signature's see the edit."""
    data = json.loads(path.read_text(encoding="utf-8"))
    fn(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    if sign:
        resign(path.parents[2], path)


def test_refuses_a_checkpoint_hash_mismatch(repo):
    _edit_record(repo / "leaderboard/results/syn-0001.json",
                 lambda d: d["provenance"].__setitem__("checkpoint_sha256", "0" * 64))
    msg = refuse(repo, "checkpoint hash mismatch")
    assert "syn-0001.json" in msg


def test_refuses_an_edited_record_that_was_not_signed_again(repo):
    path = repo / "leaderboard/results/syn-0001.json"
    _edit_record(path, lambda d: d.update(inference_flops=1.0), sign=False)
    msg = refuse(repo, "bad signature")
    assert str(path) in msg


def test_refuses_an_unsigned_record(repo):
    path = repo / "leaderboard/results/syn-0002.json"
    _edit_record(path, lambda d: d.pop("signature"), sign=False)
    msg = refuse(repo, "unsigned record")
    assert str(path) in msg


def test_refuses_a_submission_hash_mismatch(repo):
    y = repo / "submissions/syn-0002/submission.yaml"
    y.write_text(y.read_text(encoding="utf-8") + "notes: edited after the evaluation\n", encoding="utf-8")
    refuse(repo, "submission hash mismatch")


def test_refuses_a_duplicate_id(repo):
    shutil.copyfile(repo / "leaderboard/results/syn-0001.json", repo / "leaderboard/results/syn-zz-copy.json")
    refuse(repo, "duplicate id 'syn-0001'")


def test_refuses_a_record_named_after_another_id(repo):
    (repo / "leaderboard/results/syn-0003.json").rename(repo / "leaderboard/results/other.json")
    refuse(repo, "must be named <submission_id>.json")


def test_refuses_another_schema_version(repo):
    _edit_record(repo / "leaderboard/results/syn-0000.json", lambda d: d.__setitem__("schema_version", 2))
    refuse(repo, "schema_version 2 is not the supported 1")


def test_refuses_a_record_without_its_submission(repo):
    shutil.rmtree(repo / "submissions/syn-0002")
    refuse(repo, "does not exist")


def test_refuses_a_reported_row_that_reuses_an_id(repo):
    small_reported(repo / "leaderboard/reported.csv", 2)
    with open(repo / "leaderboard/reported.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows[1]["id"] = rows[0]["id"]
    with open(repo / "leaderboard/reported.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    refuse(repo, "duplicate id")


def test_refuses_a_malformed_reported_row(repo):
    p = small_reported(repo / "leaderboard/reported.csv", 2)
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    rows[0]["autoattack_acc_percent"] = "seventy"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    msg = refuse(repo, "autoattack_acc_percent is not a number")
    assert "reported.csv:2" in msg


def test_a_refused_build_leaves_the_previous_site_untouched(built, tmp_path):
    _, good = built
    out = tmp_path / "site"
    shutil.copytree(good, out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    root = make_repo(tmp_path / "bad", n=3, gallery=0, reported=False)
    _edit_record(root / "leaderboard/results/syn-0000.json",
                 lambda d: d["provenance"].__setitem__("submission_sha256", "f" * 64))
    with pytest.raises(HarnessError):
        build_leaderboard(root, out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert filecmp.cmp(out / "index.html", good / "index.html", shallow=False)


def test_refuses_to_replace_a_folder_it_did_not_build(repo, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(HarnessError, match="refusing to replace"):
        build_leaderboard(repo, out)
    assert (out / "keep.txt").read_text(encoding="utf-8") == "mine"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_main_prints_one_line_errors_and_builds(repo, tmp_path, capsys):
    y = repo / "submissions/syn-0001/submission.yaml"
    original = y.read_bytes()
    y.write_bytes(original + b"# changed\n")
    assert main(["--root", str(repo), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "submission hash mismatch" in err
    assert not (tmp_path / "o").exists()
    y.write_bytes(original)
    recorded = json.loads((repo / "leaderboard/results/syn-0001.json").read_text())
    assert sha256_file(y) == recorded["provenance"]["submission_sha256"]
    assert main(["--root", str(repo), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "index.html").is_file()
    assert "site written to" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
def test_packaged_reported_csv():
    rows = {e.id: e for e in load_reported(REPORTED)}
    assert len(rows) == 188
    b94 = rows["reported-cifar10-Linf-Bartoldson2024Adversarial_WRN-94-16"]
    b82 = rows["reported-cifar10-Linf-Bartoldson2024Adversarial_WRN-82-8"]
    assert b94.robust == pytest.approx(0.7371) and b82.robust == pytest.approx(0.7159)
    # fvcore's count agrees with the scaling-law repository's (2 FLOPs per multiply-add, halved)
    assert b94.inference_flops == pytest.approx(106.5e9 / 2, rel=0.01)
    assert b82.params == pytest.approx(79.1e6, rel=0.01)
    linf = [e for e in rows.values() if (e.dataset, e.norm) == ("cifar10", "Linf")]
    assert sum(abs(e.eps - 8 / 255) < 1e-12 for e in linf) == 93
    assert sum(e.board_eps is not None for e in linf) == 6  # the eps = 0.031 rows, on the 8/255 board
    for e in rows.values():
        assert e.kind == "reported" and e.url and e.url.startswith("http")
        assert e.reported["accuracy_source_url"].startswith("https://github.com/RobustBench/")
        assert e.reported["flops_convention"].startswith("fvcore")
        assert e.robust_ci[0] <= e.robust <= e.robust_ci[1]
        assert e.training_flops is None  # training FLOPs come from training_recipes.csv, not from here


def test_the_repository_itself_builds(repo_site):
    """The committed records, submissions, reported.csv and training_recipes.csv pass every check."""
    data = load_json(repo_site)
    board = next(b for b in data["boards"] if b["id"] == "cifar10-Linf-8_255")
    ids = [e["id"] for e in board["entries"]]
    by_id = {e["id"]: e for e in board["entries"]}
    # issue 18, must show: ranked by best-known accuracy, MeanSparse's AutoAttack 75.28% is 73.10% with
    # RobustBench's external evaluation (APGD with BPDA), below Bartoldson WRN-94-16's 73.71%
    b94 = "reported-cifar10-Linf-Bartoldson2024Adversarial_WRN-94-16"
    ms = "reported-cifar10-Linf-Amini2024MeanSparse_S-WRN-94-16"
    assert ids.index(b94) < ids.index(ms) and by_id[b94]["rank"] == 1
    assert by_id[ms]["best_known_robust_accuracy"] == pytest.approx(0.7310)
    assert by_id[ms]["autoattack_accuracy"] == pytest.approx(0.7528)
    assert by_id[ms]["best_known_source"] == "RobustBench external evaluation"
    # Mustafa2019 (0.28%) ranks below every entry whose best-known accuracy is higher and whose interval
    # does not overlap its own
    mu = by_id["reported-cifar10-Linf-Mustafa2019Adversarial"]
    lo, hi = mu["best_known_robust_accuracy_ci95"]
    above = [e for e in board["entries"] if e["best_known_robust_accuracy"] > mu["best_known_robust_accuracy"]
             and e["best_known_robust_accuracy_ci95"][0] > hi]
    assert len(above) >= 90 and all(e["rank"] < mu["rank"] for e in above)
    # 24 of the 188 rows have an external result below AutoAttack, all carried in
    below = [e for b in data["boards"] for e in b["entries"]
             if e["source"] == "reported" and e["best_known_robust_accuracy"] < e["autoattack_accuracy"]]
    assert len(below) == 24
    assert "reported-cifar10-Linf-Bartoldson2024Adversarial_WRN-82-8" in board["frontiers"]["robust_vs_inference_flops"]
    fit = board["scaling_fit"]
    # the fit takes point estimates only: bounded training FLOPs (>=, <=) stay out of it
    assert fit["n_points"] == sum(e["training_flops"] is not None and e["training_flops_bound"] is None
                                  for e in board["entries"])
    assert any(e["training_flops_bound"] for e in board["entries"])
    html = (repo_site / "index.html").read_text(encoding="utf-8")
    assert "89.65%" in html
    # the undefended ResNet-18: no badge
    r18 = next(e for e in board["entries"] if e["id"] == "cifar10-autoattack-resnet18")
    assert not r18["measurably_robust"] and not any(r18["on_frontier"].values())
    assert sum(b["coverage"]["reported_rows"] for b in data["boards"]) == 188
