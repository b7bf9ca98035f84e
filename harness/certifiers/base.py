"""The certifier interface. Importing this module imports neither torch nor numpy.

A certifier answers, for each example of a batch, "is the classifier's prediction provably
the label on the whole ``norm`` ball of radius ``eps``?" (``certified``) and "up to which radius
can it prove that?" (``radius``). Its work is split so that it fits a map over blocks of the
test set:

``prepare(model, input_shape, device, *, norm, options) -> Prepared``
    once per model (and norm), in every process that runs blocks: trace the model, compute
    constants, check that the method applies and is affordable. Raises :class:`Skip` with a
    one-line reason when it does not (unsupported operator, model too large, wrong norm, a
    missing option), which the caller records in ``certify_skipped``.
``run(prepared, x, y, *, index, eps, norm, eps_max, tol, seed) -> CertResult``
    per batch: ``x`` (B, *input_shape) in [0, 1] on the model's device, ``y`` (B,) labels,
    ``index`` (B,) the examples' test-set indices (they name examples in errors, and
    probabilistic certifiers draw each example's noise from ``(seed, index)``, so that a
    result never depends on which other examples share its batch or block). Returns numpy
    arrays on the host (:class:`CertResult`).
``details(prepared, result) -> dict``
    the JSON-able ``details`` of the record entry, from the preparation and the result of all
    blocks together (:func:`harness.certifiers.results.concat`).

``sound``: True for a bound (every certified example is robust, so it takes part in the
certified <= robust <= clean sandwich and in certify-first); False for a probabilistic
certificate (randomized smoothing certifies the *smoothed* classifier, with probability
1 - alpha over the noise; it is recorded with ``probabilistic: true`` and never used to skip
attacks or to check the sandwich of the base model).

A certifier is registered in :mod:`harness.certifiers` by one line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: the threat-model norms a certifier may support (those of the submission schema)
NORMS = ("Linf", "L2")


def example_seed(seed: int, index: int, salt: str = "") -> int:
    """A 63-bit seed for one example's randomness, from the evaluation seed and the example's
    test-set index (and an optional ``salt`` per use): the same wherever the example is
    evaluated (batch, block, rank), and unrelated between examples."""
    import hashlib

    digest = hashlib.sha256(f"{int(seed)}:{int(index)}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Skip(Exception):
    """The certifier does not apply here, or would cost too much; ``str(e)`` is the reason."""


@dataclass
class Prepared:
    """What :meth:`Certifier.prepare` returns, once per model.

    - ``norm``: the norm it was prepared for;
    - ``state``: the implementation's data (a traced model, constants); in process only;
    - ``info``: JSON-able facts about the preparation (cost figures, Lipschitz constants),
      copied into the record's ``details``;
    - ``batch_size``: the most examples one ``run`` call should get (None: any);
    - ``eps_max``: the upper end of the radii this certifier reports, when it fixes it itself
      (smoothing: the largest radius ``n`` samples can certify); None: the caller's ``eps_max``;
    - ``tolerance``: the absolute tolerance of its radii when it fixes it (0 for closed forms);
      None: the caller's ``tol`` (radius search by bisection).
    """

    norm: str
    state: Any = None
    info: dict = field(default_factory=dict)
    batch_size: Optional[int] = None
    eps_max: Optional[float] = None
    tolerance: Optional[float] = None


@dataclass
class CertResult:
    """Per-example results of one ``run`` (or of several, concatenated), as numpy arrays.

    - ``certified`` (B,) bool: provably classified as the label on the ball of radius eps;
    - ``radius`` (B,) float64: the certified radius, in [0, eps_max]; 0 wherever ``correct``
      is False;
    - ``correct`` (B,) bool: the certified classifier predicts the label (the base model's
      clean prediction for bounds; the smoothed prediction for smoothing);
    - ``arrays``: extra per-example arrays, saved as ``<key>_<certifier>`` (e.g. smoothing's
      ``pred``);
    - ``counts``: numbers summed over batches and blocks (bound calls, abstentions).
    """

    certified: "np.ndarray"
    radius: "np.ndarray"
    correct: "np.ndarray"
    arrays: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)


class Certifier:
    """Base class of certifiers; see the module docstring for the contract."""

    #: registry key; lower case letters, digits and dashes (it names record fields and arrays)
    name: str = ""
    #: True: a bound (part of the sandwich and of certify-first); False: probabilistic
    sound: bool = True
    #: the threat-model norms it certifies
    norms: tuple = ()
    #: a short human-readable description (the schema lists it)
    title: str = ""

    def supports(self, norm: str) -> bool:
        return norm in self.norms

    def check_norm(self, norm: str) -> None:
        """Raise :class:`Skip` unless ``norm`` is one this certifier supports."""
        if not self.supports(norm):
            raise Skip(f"{self.name} certifies {'/'.join(self.norms) or 'no'} balls; the threat "
                       f"model is {norm}")

    def prepare(self, model, input_shape: Sequence[int], device, *, norm: str,
                options: Optional[Mapping[str, Any]] = None) -> Prepared:
        raise NotImplementedError

    def run(self, prepared: Prepared, x, y, *, index=None, eps: float, norm: str,
            eps_max: float, tol: float, seed: int = 0) -> CertResult:
        raise NotImplementedError

    def details(self, prepared: Prepared, result: CertResult) -> dict:
        """The record entry's ``details``: the norm, the preparation's ``info`` and the counts."""
        return {"norm": prepared.norm, **prepared.info, **result.counts}

    def __repr__(self) -> str:
        kind = "sound" if self.sound else "probabilistic"
        return f"<certifier {self.name} ({kind}, {'/'.join(self.norms)})>"
