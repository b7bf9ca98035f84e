#!/usr/bin/env python
"""Upgrade result records made before ``provenance.results_sha256``, in place.

    python scripts/migrate_records.py [--root .] [--check] [RECORD.json ...]

A record ties itself to its submission by ``provenance.results_sha256``, the hash of the submission's
result-relevant fields (:func:`harness.submission.results_sha256`), so that a metadata-only edit of
``submission.yaml`` (a name, the licence, the paper, notes) keeps the record valid. Records made
before that field hold only ``submission_sha256`` (the file's own hash) and the folder digest of
the time (:func:`harness.submission.manifest.legacy_digest`).

For each record (default: ``<root>/leaderboard/results/*.json``) without ``results_sha256``, and
only when the record passes every check of :func:`harness.record.read_record` (its examples file
included), every file of ``submissions/<id>/`` matches its hash, the record's ``submission_sha256``
is the SHA-256 of ``submission.yaml`` as it is now, its ``checkpoint_sha256`` the declared one and
its ``files_sha256`` the folder's legacy digest now (so the record is upgraded only against exactly
the files it was made from, and nothing unverified is blessed), the script adds ``results_sha256``
and replaces ``files_sha256`` by the folder digest of today's definition. Nothing else of the file
changes. A ``signature`` block no longer verifies after the edit and is dropped (re-sign the record
with ``harness sign``). A record that does not qualify is left untouched and named, one line each.

``--check``: change nothing; exit 1 if a record would be upgraded or cannot be.
Exit status: 0 when every record is up to date (or was upgraded), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

from harness.core.errors import HarnessError, one_line  # noqa: E402
from harness.core.files import atomic_write_text, read_bytes_confined  # noqa: E402
from harness.record.read import parse_record_json, read_examples, validate_record  # noqa: E402
from harness.record.schema import MAX_RECORD_BYTES  # noqa: E402
from harness.submission.load import load_submission  # noqa: E402
from harness.submission.manifest import legacy_digest  # noqa: E402


def migrated_text(path: Path, root: Path) -> tuple[str | None, str]:
    """(the upgraded JSON text, or None when nothing is written; what was done, in one line)."""
    text = read_bytes_confined(path, max_bytes=MAX_RECORD_BYTES, what="result record").decode("utf-8")
    raw = parse_record_json(text.encode("utf-8"), str(path))
    signed = raw.pop("signature", None) is not None
    rec = validate_record(raw, str(path))
    read_examples(rec, path)
    prov = rec.provenance
    if prov.results_sha256 is not None:
        return None, "up to date (has results_sha256)"
    yaml_path = root / "submissions" / rec.submission_id / "submission.yaml"
    sub = load_submission(yaml_path)  # every file of the folder checked against its hash
    if prov.submission_sha256 != sub.yaml_sha256:
        raise HarnessError(f"provenance.submission_sha256 {prov.submission_sha256} is not the sha256 of {yaml_path} "
                           f"now ({sub.yaml_sha256}); not upgraded: re-run `harness eval` on it")
    if prov.checkpoint_sha256 != sub.spec.model.checkpoint.sha256:
        raise HarnessError(f"provenance.checkpoint_sha256 differs from the checkpoint {yaml_path} declares; "
                           "not upgraded")
    if prov.files_sha256 is None or prov.files_sha256 != legacy_digest(sub):
        raise HarnessError(f"provenance.files_sha256 is not the digest of {yaml_path.parent.name}/ now; not upgraded: "
                           "a file changed after the evaluation")
    new_files = sub.files_sha256
    assert new_files is not None
    want = dict(raw)
    want["provenance"] = {}
    for k, v in raw["provenance"].items():  # results_sha256 right after submission_sha256, as the schema lists it
        want["provenance"][k] = new_files if k == "files_sha256" else v
        if k == "submission_sha256":
            want["provenance"]["results_sha256"] = sub.results_sha256
    out = None
    if not signed:  # a textual edit of two lines keeps every other byte (number formats included)
        out, n1 = re.subn(r'^(\s*)"submission_sha256": "([0-9a-f]{64})",\n',
                          lambda m: f'{m.group(0)}{m.group(1)}"results_sha256": "{sub.results_sha256}",\n',
                          text, count=1, flags=re.M)
        out, n2 = re.subn(r'^(\s*"files_sha256": )"[0-9a-f]{64}"', lambda m: f'{m.group(1)}"{new_files}"', out,
                          count=1, flags=re.M)
        if n1 != 1 or n2 != 1 or json.loads(out) != want:
            out = None
    if out is None:
        out = json.dumps(want, indent=2, ensure_ascii=False) + "\n"
    validate_record(json.loads(out), str(path))  # still a valid record
    what = f"results_sha256 {sub.results_sha256[:12]}..., files_sha256 {new_files[:12]}..."
    return out, what + ("; its signature was dropped (re-sign it)" if signed else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="*", help="record files (default: <root>/leaderboard/results/*.json)")
    ap.add_argument("--root", default=str(ROOT), help="repository root (default: this checkout)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a record needs upgrading")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    paths = [Path(p) for p in args.records] or sorted((root / "leaderboard" / "results").glob("*.json"))
    if not paths:
        print(f"error: no records under {root / 'leaderboard' / 'results'}", file=sys.stderr)
        return 1
    status = 0
    for path in paths:
        try:
            out, what = migrated_text(path, root)
        except (HarnessError, OSError, UnicodeDecodeError, ValueError) as e:
            print(f"{one_line(path, 300)}: not upgraded: {one_line(e, 500)}", file=sys.stderr)
            status = 1
            continue
        if out is None:
            print(f"{path}: {what}")
        elif args.check:
            print(f"{path}: would be upgraded ({what})")
            status = 1
        else:
            atomic_write_text(path, out)
            print(f"{path}: upgraded ({what})")
    return status


if __name__ == "__main__":
    sys.exit(main())
