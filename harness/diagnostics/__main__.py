"""``python -m harness.diagnostics TRAIN.npz TEST.npz [--subset N] [--out FILE]``: the exact
test-to-train data separation (see :func:`harness.diagnostics.separation.main`)."""
from __future__ import annotations

from .separation import main

if __name__ == "__main__":
    raise SystemExit(main())
