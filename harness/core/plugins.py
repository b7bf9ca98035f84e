"""Plug-ins: certifiers, datasets, bound operators and architectures from installed packages, through
Python entry points, the way pytest (``pytest11``) and Inspect find theirs.

An installed distribution declares, in its ``pyproject.toml``::

    [project.entry-points."robust_frontier.certifiers"]
    toy = "toy_plugin:register"

The value names a zero-argument function, which registers its entries with the registry's own call
(``harness.certifiers.registry.register(MyCertifier())``, ``harness.data.registry.register(...)``,
``harness.bounds.ops.register_op(...)``, ``harness.models.architectures.register(...)``), or a module,
whose import registers them. Each registry loads its group once, on its first lookup, so the same
plug-ins are there in every process that looks: the supervisor (validate, schema, planning, the
record checks) and the sandboxed worker alike, which finds them on the same ``sys.path`` (the
worker's read-only view covers it, :func:`harness.sandbox.jail.confine`).

Plug-ins are code the maintainer installed on the runner, not code from a submission: a submission
can name a plug-in's certifier or dataset, never bring one. ``ROBUST_FRONTIER_PLUGINS=0`` turns them
all off (a run then uses only the built-in entries).
"""
from __future__ import annotations

import os
from importlib import metadata

from harness.core.errors import HarnessError, one_line

#: kind -> entry-point group
GROUPS = {
    "certifiers": "robust_frontier.certifiers",
    "datasets": "robust_frontier.datasets",
    "operators": "robust_frontier.operators",
    "architectures": "robust_frontier.architectures",
}

_loaded: dict[str, list[str]] = {}  # kind -> "name = value" of each plug-in loaded, in order


def enabled() -> bool:
    return os.environ.get("ROBUST_FRONTIER_PLUGINS", "1") != "0"


def load(kind: str) -> list[str]:
    """Load the plug-ins of ``kind`` (once per process; later calls return the same list). A plug-in
    that fails to load is a one-line error naming it: a run never goes on without an entry the
    maintainer installed."""
    if kind in _loaded:
        return _loaded[kind]
    group = GROUPS[kind]
    done: list[str] = []
    _loaded[kind] = done  # set first: a plug-in's own registration may look the registry up again
    if not enabled():
        return done
    for ep in sorted(metadata.entry_points(group=group), key=lambda e: (e.name, e.value)):
        label = f"{ep.name} = {ep.value}"
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()
        except HarnessError as e:
            raise HarnessError(f"plug-in {one_line(label, 200)} ({group}): {e}") from None
        except Exception as e:  # noqa: BLE001 - any failure of installed code becomes one line naming it
            raise HarnessError(f"plug-in {one_line(label, 200)} ({group}) failed to load: "
                               f"{type(e).__name__}: {one_line(e, 300)}") from None
        done.append(label)
    return done


def installed_groups() -> set[str]:
    """The groups of this project that some installed distribution declares entry points for (reads
    metadata only; imports nothing)."""
    if not enabled():
        return set()
    return {g for g in GROUPS.values() if len(metadata.entry_points(group=g))}


def loaded() -> dict[str, list[str]]:
    """The plug-ins loaded so far in this process, by kind (for the record's provenance)."""
    return {k: list(v) for k, v in _loaded.items() if v}
