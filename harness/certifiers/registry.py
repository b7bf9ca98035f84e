"""The certifier registry: ``register``, ``get``, ``names``, ``sound_names``. No torch.

Two kinds of entries:

- a :class:`Certifier` instance, already imported (a plug-in, a test's toy certifier):
  ``register(ToyCertifier())``;
- a lazy entry, :func:`lazy`, for the built-in certifiers: its name, soundness and norms are
  given in the registration line, and the implementation module (which imports torch) is
  imported on the first ``prepare``/``run``. So the schema (:mod:`harness.submission`), the
  record checks and the leaderboard read the metadata without importing torch; the
  implementation's own ``name``/``sound``/``norms`` must agree with the line (checked on load).
"""
from __future__ import annotations

import importlib
import re
from typing import Any, Mapping, Optional, Sequence

from harness.core import plugins
from harness.core.errors import HarnessError

from .base import NORMS, Certifier, CertResult, Prepared

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_REGISTRY: dict[str, Certifier] = {}


class LazyCertifier(Certifier):
    """A registered certifier whose implementation, ``"package.module:Class"``, is imported on
    first use. Its metadata comes from the registration line."""

    def __init__(self, name: str, target: str, *, sound: bool, norms: Sequence[str], title: str = ""):
        self.name, self.target = name, target
        self.sound, self.norms, self.title = bool(sound), tuple(norms), title
        self._impl: Optional[Certifier] = None

    def load(self) -> Certifier:
        if self._impl is None:
            module, _, cls = self.target.partition(":")
            impl = getattr(importlib.import_module(module), cls)()
            for attr in ("name", "sound", "norms"):
                if getattr(impl, attr) != getattr(self, attr):
                    raise HarnessError(f"certifier {self.name}: its implementation {self.target} "
                                       f"declares {attr}={getattr(impl, attr)!r}, the registry "
                                       f"{getattr(self, attr)!r}")
            self._impl = impl
        return self._impl

    def prepare(self, model, input_shape, device, *, norm: str,
                options: Optional[Mapping[str, Any]] = None) -> Prepared:
        return self.load().prepare(model, input_shape, device, norm=norm, options=options)

    def run(self, prepared: Prepared, x, y, **kwargs) -> CertResult:
        return self.load().run(prepared, x, y, **kwargs)

    def details(self, prepared: Prepared, result: CertResult) -> dict:
        return self.load().details(prepared, result)


def lazy(name: str, target: str, *, sound: bool, norms: Sequence[str], title: str = "") -> LazyCertifier:
    """A registry entry for the implementation ``"package.module:Class"``, imported on first use."""
    return LazyCertifier(name, target, sound=sound, norms=norms, title=title)


def register(certifier: Certifier, *, replace: bool = False) -> Certifier:
    """Add ``certifier`` to the registry (one line per certifier) and return it.

    Its ``name`` must be new (unless ``replace``) and made of lower-case letters, digits and
    dashes (it names record fields and arrays); ``norms`` a non-empty subset of ``NORMS``."""
    if not isinstance(certifier, Certifier):
        raise HarnessError(f"register() needs a Certifier, got {type(certifier).__name__}")
    name = certifier.name
    if not isinstance(name, str) or not _NAME.match(name):
        raise HarnessError(f"certifier name {name!r} must be 1-32 lower-case letters, digits or dashes")
    if not isinstance(certifier.sound, bool):
        raise HarnessError(f"certifier {name}: sound must be True or False")
    norms = tuple(certifier.norms)
    if not norms or any(n not in NORMS for n in norms):
        raise HarnessError(f"certifier {name}: norms must be a non-empty subset of {', '.join(NORMS)}")
    if name in _REGISTRY and not replace:
        raise HarnessError(f"a certifier named {name!r} is already registered")
    _REGISTRY[name] = certifier
    return certifier


def unregister(name: str) -> None:
    """Remove a certifier (plug-ins and tests); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def _entries() -> dict[str, Certifier]:
    """The registry, after the installed plug-ins (entry-point group ``robust_frontier.certifiers``,
    :mod:`harness.core.plugins`) have registered theirs: once per process, on the first lookup."""
    plugins.load("certifiers")
    return _REGISTRY


def names() -> tuple[str, ...]:
    """Every registered certifier, in registration order (built-in first, then plug-ins)."""
    return tuple(_entries())


def sound_names() -> tuple[str, ...]:
    """The certifiers whose certificates are bounds: the sandwich and certify-first use these."""
    return tuple(n for n, c in _entries().items() if c.sound)


def is_sound(name: str) -> bool:
    """Whether ``name`` is a registered sound certifier (False for unknown names)."""
    c = _entries().get(name)
    return c is not None and c.sound


def unknown_message(name: Any) -> str:
    shown = repr(name)[:40] if isinstance(name, str) else type(name).__name__
    return f"unknown certification method {shown}; known methods: {', '.join(names())}"


def get(name: str) -> Certifier:
    """The certifier registered as ``name``; a one-line HarnessError listing the known ones if none."""
    c = _entries().get(name) if isinstance(name, str) else None
    if c is None:
        raise HarnessError(unknown_message(name))
    return c


# ---- the registry: one line per certifier ------------------------------------------------------
register(lazy("ibp", "harness.certifiers.bound_methods:IBP", sound=True, norms=("Linf", "L2"),
              title="interval bound propagation"))
register(lazy("crown", "harness.certifiers.bound_methods:CROWN", sound=True, norms=("Linf", "L2"),
              title="CROWN linear relaxation bounds"))
register(lazy("crown-ibp", "harness.certifiers.bound_methods:CROWNIBP", sound=True, norms=("Linf", "L2"),
              title="CROWN-IBP (IBP intermediate bounds, CROWN on the margins)"))
register(lazy("complete", "harness.certifiers.complete:Complete", sound=True, norms=("Linf",),
              title="complete verification: IBP, CROWN, alpha-CROWN, beta-CROWN branch and bound, per example"))
register(lazy("lipschitz", "harness.certifiers.lipschitz:Lipschitz", sound=True, norms=("L2",),
              title="Lipschitz margin (product of the layers' spectral norms)"))
register(lazy("smoothing", "harness.certifiers.smoothing:Smoothing", sound=False, norms=("L2",),
              title="randomized smoothing (probabilistic; needs the smoothing section)"))
