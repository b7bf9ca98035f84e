"""Certifiers: one interface (:mod:`.base`), one registry (:mod:`.registry`), one line each.

>>> from harness import certifiers
>>> certifiers.names()          # the schema's evaluation.certify vocabulary
('ibp', 'crown', 'crown-ibp', 'complete', 'lipschitz', 'smoothing')
>>> certifiers.sound_names()    # the sandwich check and certify-first use these
('ibp', 'crown', 'crown-ibp', 'complete', 'lipschitz')
>>> c = certifiers.get("lipschitz")
>>> prepared = c.prepare(model, (1, 28, 28), device, norm="L2", options={})   # may raise Skip
>>> res = c.run(prepared, x, y, index=idx, eps=0.5, norm="L2", eps_max=1.0, tol=0.025, seed=0)

Importing this package imports neither torch nor numpy: the metadata (name, soundness, norms)
is given in the registration lines below, and each implementation module is imported on the
first ``prepare``/``run``.

To add a certifier: write one module here with one :class:`Certifier` subclass (``name``,
``sound``, ``norms``, ``prepare``, ``run``; see :mod:`.lipschitz` for a complete example)
and add one ``register(lazy(...))`` line in :mod:`.registry` (the only list). A plug-in or a
test registers an instance with ``register(MyCertifier())``; an installed package registers through the
entry-point group ``robust_frontier.certifiers`` (:mod:`harness.core.plugins`). Nothing else changes: the
schema, the certify stage, the record checks, the sandwich check and certify-first all read the registry.
"""
from __future__ import annotations

from .base import NORMS, Certifier, CertResult, Prepared, Skip
from .registry import get, is_sound, lazy, names, register, sound_names, unknown_message, unregister

__all__ = [
    "NORMS", "Certifier", "CertResult", "Prepared", "Skip",
    "get", "is_sound", "lazy", "names", "register", "sound_names", "unknown_message", "unregister",
]
