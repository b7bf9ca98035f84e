"""IBP, CROWN and CROWN-IBP (:mod:`harness.bounds`) as certifiers.

- ``prepare``: the model traced into a :class:`harness.bounds.BoundedModel` (shared by the three
  methods: one trace per model and input shape), refused (:class:`Skip`) when an operator is
  unsupported or when the method is too large for the device
  (:func:`harness.bounds.check_affordable`, caps by device type, overridable by ``options``);
- ``run``: the certification at ``eps`` (one bound call per batch) and the certified radius in
  [0, eps_max] by batched bisection to absolute tolerance ``tol``
  (:func:`harness.bounds.certified_radius`, started from the certification at eps).

``options`` keys (all optional): ``cache`` (a dict the caller keeps per model and passes to
every certifier's ``prepare``: the traced BoundedModel is shared through it),
``max_crown_elements``, ``max_crown_ibp_elements``,
``max_relu_neurons`` (the caps of :func:`check_affordable`), ``crown_batch`` (examples per
``run`` for full CROWN, default 32: its intermediate bounds are the memory-hungry part).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch

from harness.core.errors import HarnessError
from harness.models.load import check_logits

from ..bounds import BoundedModel, certified_radius, check_affordable, estimate_cost
from ..bounds.bounded import certified_from
from .base import Certifier, CertResult, Prepared, Skip

#: cap on full CROWN's worst-case coefficient floats per example, by device type
CROWN_MAX_ELEMENTS = {"cpu": 2e9, "cuda": 5e10}
CROWN_BATCH = 32


def bounded_model(model: torch.nn.Module, input_shape, cache: Optional[dict] = None) -> BoundedModel:
    """The model's BoundedModel; traced once per input shape when the caller passes the same
    ``cache`` dict (one per model) to every ``prepare``."""
    shape = tuple(int(s) for s in input_shape)
    key = ("bounded-model", shape)
    if cache is not None and key in cache:
        if cache[key].model is not model:
            raise HarnessError("the certifiers' cache belongs to another model")
        return cache[key]
    bm = BoundedModel(model, shape)
    if cache is not None:
        cache[key] = bm
    return bm


class _Counting:
    """The BoundedModel with its margin bound calls counted (what ``certify`` and the radius
    search call); everything else is the model's."""

    def __init__(self, bm: BoundedModel):
        self._bm = bm
        self.calls = 0
        self.examples = 0

    def __getattr__(self, name):
        return getattr(self._bm, name)

    def margin_lower_bounds(self, x, *args, **kwargs):
        self.calls += 1
        self.examples += int(x.shape[0])
        return self._bm.margin_lower_bounds(x, *args, **kwargs)


class BoundCertifier(Certifier):
    """One of harness.bounds' methods (``method``) as a certifier."""

    method = ""
    sound = True
    norms = ("Linf", "L2")

    def prepare(self, model, input_shape, device, *, norm: str,
                options: Optional[Mapping[str, Any]] = None) -> Prepared:
        self.check_norm(norm)
        opts = dict(options or {})
        dev = torch.device(device)
        try:
            bm = bounded_model(model, input_shape, opts.get("cache"))
            bm.graph.check_modes()
        except HarnessError as e:
            raise Skip(str(e)) from None
        caps = {"max_crown_elements": float(opts.get("max_crown_elements",
                                                     CROWN_MAX_ELEMENTS.get(dev.type, 2e9)))}
        for key in ("max_crown_ibp_elements", "max_relu_neurons"):
            if key in opts:
                caps[key] = opts[key]
        ok, why = check_affordable(bm, self.method, **caps)
        if not ok:
            raise Skip(f"too large ({why})")
        batch = int(opts.get("crown_batch", CROWN_BATCH)) if self.method == "crown" else None
        return Prepared(norm=norm, state=bm, info={"cost": estimate_cost(bm)}, batch_size=batch)

    @torch.no_grad()
    def run(self, prepared: Prepared, x, y, *, index=None, eps: float, norm: str, eps_max: float,
            tol: float, seed: int = 0) -> CertResult:
        bm = _Counting(prepared.state)
        x = bm._prep_x(x)
        y = bm._prep_y(y, x.shape[0]).to(x.device)
        logits = bm.model(x)
        check_logits(logits, int(x.shape[0]), bm.num_classes, stage=f"certify {self.name}", index=index)
        lb = bm.margin_lower_bounds(x, y, eps, norm, self.method)
        cert = certified_from(logits, y, lb, bm.num_classes)
        r, _ = certified_radius(bm, x, y, eps_max, norm, self.method, tol,
                                known=(eps, cert) if eps <= eps_max else None)
        correct = (logits.argmax(1) == y).cpu().numpy()
        radius = np.where(correct, r.double().cpu().numpy(), 0.0)
        return CertResult(certified=cert.cpu().numpy(), radius=radius, correct=correct,
                          counts={"bound_calls": bm.calls, "bound_examples": bm.examples})


class IBP(BoundCertifier):
    name = method = "ibp"


class CROWN(BoundCertifier):
    name = method = "crown"


class CROWNIBP(BoundCertifier):
    name = method = "crown-ibp"
